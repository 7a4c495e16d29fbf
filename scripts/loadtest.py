"""Headless, bounded `locust` run against a served Bento, with a report (`make loadtest`).

    python scripts/loadtest.py --url http://127.0.0.1:3000 --users 8 --rate 1 --run-time 60 \
        --server-pid PID --out build/loadtest        # token in $LOADTEST_TOKEN

The report (`report.md`, `report.json` in `--out`): requests/s and p50/p95/p99 per endpoint, failures by
status, expected refusals (429/503 with Retry-After), RSS and CPU of the API and model workers
sampled from `/proc` every second (children of `--server-pid`), and the cache hit ratio from the
server's `pat_cache_lookups_total`. Exit status 1 when any request failed unexpectedly.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.local_server import cpu_seconds, worker_pids  # noqa: E402

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
LOCUST = str(Path(sys.executable).with_name("locust"))
SERVICES = {"api": "pat_service", "model": "pat_model"}
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def proc_sample(pid: int) -> tuple[float, float, int] | None:
    """(cpu seconds, RSS MiB, open file descriptors) of one process, or None when it is gone."""
    try:
        cpu = cpu_seconds(pid)
        rss_mib = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB / 1024
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, IndexError, ValueError):
        return None
    return cpu, rss_mib, fds


@dataclass
class Sampler:
    server_pid: int
    interval_s: float = 1.0
    samples: list[dict[str, object]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        previous: dict[int, float] = {}
        started = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic() - started
            for service, name in SERVICES.items():
                for pid in worker_pids(self.server_pid, name):
                    sample = proc_sample(pid)
                    if sample is None:
                        continue
                    cpu, rss, fds = sample
                    cpu_pct = 100 * (cpu - previous[pid]) / self.interval_s if pid in previous else None
                    previous[pid] = cpu
                    self.samples.append(
                        {
                            "t_s": round(now, 1),
                            "service": service,
                            "pid": pid,
                            "rss_mib": round(rss, 1),
                            "cpu_pct": None if cpu_pct is None else round(cpu_pct, 1),
                            "fds": fds,
                        }
                    )
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cache_lookups(url: str, token: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30).text
    return {
        match[1]: float(match[2])
        for match in re.finditer(r'^pat_cache_lookups_total\{outcome="(\w+)"\} (\S+)$', text, re.MULTILINE)
    }


def served_model(url: str, token: str) -> dict[str, object]:
    """Tag, size and backend of the model under test, for the report's title."""
    response = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    model = response.json()["models"][0]
    return {key: model.get(key) for key in ("tag", "size", "demo", "backend")}


def read_stats(prefix: Path) -> tuple[list[dict[str, object]], dict[str, int]]:
    endpoints = []
    with open(f"{prefix}_stats.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            endpoints.append(
                {
                    "type": row["Type"],
                    "name": row["Name"],
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "rps": round(float(row["Requests/s"]), 2),
                    "p50_ms": float(row["50%"] or 0),
                    "p95_ms": float(row["95%"] or 0),
                    "p99_ms": float(row["99%"] or 0),
                }
            )
    failures: dict[str, int] = {}
    with open(f"{prefix}_failures.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            key = row["Error"].strip()
            failures[key] = failures.get(key, 0) + int(row["Occurrences"])
    return endpoints, failures


def summarize_workers(samples: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    summary = {}
    for service in SERVICES:
        mine = [s for s in samples if s["service"] == service]
        if not mine:
            continue
        cpu = [s["cpu_pct"] for s in mine if s["cpu_pct"] is not None]
        n = max(1, len(mine) // 10)
        summary[service] = {
            "pids": sorted({s["pid"] for s in mine}),
            "rss_start_mib": round(sum(s["rss_mib"] for s in mine[:n]) / n, 1),
            "rss_end_mib": round(sum(s["rss_mib"] for s in mine[-n:]) / n, 1),
            "rss_max_mib": max(s["rss_mib"] for s in mine),
            "cpu_mean_pct": round(sum(cpu) / len(cpu), 1) if cpu else None,
            "cpu_max_pct": max(cpu) if cpu else None,
            "fds_start": mine[0]["fds"],
            "fds_end": mine[-1]["fds"],
        }
    return summary


def render(report: dict[str, object]) -> str:
    model = report["model"]
    lines = [
        f"# Load run: {report['users']} users × {report['rate']} req/s, {report['run_time_s']} s",
        "",
        f"Model: PAT-{model['size']} `{model['tag']}`{' (demo)' if model['demo'] else ''}, "
        f"backend {model['backend']}",
        "",
        "| endpoint | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["endpoints"]:
        lines.append(
            f"| {row['type']} {row['name']} | {row['requests']} | {row['failures']} | {row['rps']} | "
            f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['p99_ms']:.0f} |"
        )
    lines += ["", f"Unexpected failures: {report['failures'] or 'none'}", ""]
    lines += [
        f"Cache hit ratio: {report['cache_hit_ratio']}",
        "",
        "| worker | RSS start → end (max) MiB | CPU mean / max % | fds start → end |",
        "|---|---|---|---|",
    ]
    for service, w in report["workers"].items():
        lines.append(
            f"| {service} {w['pids']} | {w['rss_start_mib']} → {w['rss_end_mib']} ({w['rss_max_mib']}) | "
            f"{w['cpu_mean_pct']} / {w['cpu_max_pct']} | {w['fds_start']} → {w['fds_end']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--server-pid", type=int, required=True, help="pid of `bentoml serve`")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--spawn-rate", type=float, default=4)
    parser.add_argument("--rate", type=float, default=0.5, help="requests/s per user")
    parser.add_argument("--run-time", type=int, default=30, help="seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "loadtest")
    parser.add_argument("--upload-file", default="")
    parser.add_argument("--history", action="store_true", help="also keep per-second stats (soak)")
    args = parser.parse_args()
    token = os.environ["LOADTEST_TOKEN"]
    metrics_token = os.environ.get("LOADTEST_METRICS_TOKEN", token)
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / "locust"
    before = cache_lookups(args.url, metrics_token)
    env = {**os.environ, "LOADTEST_RATE": str(args.rate), "LOADTEST_UPLOAD_FILE": args.upload_file}
    with Sampler(args.server_pid) as sampler:
        subprocess.run(
            [
                LOCUST,
                "-f",
                str(LOCUSTFILE),
                "--headless",
                "--host",
                args.url,
                "-u",
                str(args.users),
                "-r",
                str(args.spawn_rate),
                "-t",
                f"{args.run_time}s",
                "--csv",
                str(prefix),
                "--only-summary",
                "--stop-timeout",
                "30",
                "--loglevel",
                "WARNING",
            ],
            env=env,
            check=False,
            timeout=args.run_time + 120,
        )
    after = cache_lookups(args.url, metrics_token)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    lookups = sum(delta.values())
    endpoints, failures = read_stats(prefix)
    report = {
        "model": served_model(args.url, token),
        "users": args.users,
        "rate": args.rate,
        "run_time_s": args.run_time,
        "endpoints": endpoints,
        "failures": failures,
        "cache_lookups": delta,
        "cache_hit_ratio": round(delta.get("hit", 0) / lookups, 3) if lookups else None,
        "workers": summarize_workers(sampler.samples),
        "samples": sampler.samples,
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    (args.out / "report.md").write_text(render(report))
    print(render(report))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
