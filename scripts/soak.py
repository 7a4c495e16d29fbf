"""Soak: a long run at a steady rate below capacity (`make soak`: 20 minutes), then the checks.

    python scripts/soak.py --url URL --server-pid PID --users 4 --rate 0.5 --run-time 1200 --out build/soak

Runs `scripts/loadtest.py` with per-interval history and compares the first and last fifths of the run:
throughput must not decay (last ≥ 90 % of first), p99 must stay stable (last ≤ 1.5 × first + 250 ms),
each worker's RSS must stay flat (end ≤ value after the first fifth + 10 % + 32 MiB), and its open file
descriptors must not grow after the first fifth; `/tmp` entries before and after are reported.
The verdict and the figures go to `soak.md`/`soak.json` beside the load report; exit status 1 on
any unexpected request failure or failed check.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RSS_SLACK_FRACTION, RSS_SLACK_MIB = 0.10, 32.0
THROUGHPUT_KEEP = 0.90
P99_FACTOR, P99_SLACK_MS = 1.5, 250.0


def fifths(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    n = max(1, len(rows) // 5)
    return rows[:n], rows[-n:]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def main() -> int:
    args = sys.argv[1:]
    out = Path(args[args.index("--out") + 1]) if "--out" in args else ROOT / "build" / "soak"
    tmp_before = len(list(Path(tempfile.gettempdir()).iterdir()))
    load = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "loadtest.py"), *args, "--history"], check=False
    )
    tmp_after = len(list(Path(tempfile.gettempdir()).iterdir()))
    report = json.loads((out / "report.json").read_text())
    with open(out / "locust_stats_history.csv", newline="") as handle:
        rows = [
            r for r in csv.DictReader(handle) if r["Name"] == "Aggregated" and r["99%"] not in ("", "N/A")
        ]
    # Skip the ramp-up: rows before all users run.
    users = max(int(r["User Count"]) for r in rows)
    rows = [r for r in rows if int(r["User Count"]) == users]
    first, last = fifths(rows)
    figures = {
        "rps_first": round(mean([float(r["Requests/s"]) for r in first]), 2),
        "rps_last": round(mean([float(r["Requests/s"]) for r in last]), 2),
        "p99_first_ms": round(mean([float(r["99%"]) for r in first])),
        "p99_last_ms": round(mean([float(r["99%"]) for r in last])),
        "tmp_entries_before": tmp_before,
        "tmp_entries_after": tmp_after,
        "workers": report["workers"],
    }
    checks = {
        "throughput does not decay": figures["rps_last"] >= THROUGHPUT_KEEP * figures["rps_first"],
        "p99 stable": figures["p99_last_ms"] <= P99_FACTOR * figures["p99_first_ms"] + P99_SLACK_MS,
        "no unexpected failures": not report["failures"],
    }
    # Pools (HTTP to the model, Redis) and allocator arenas fill during the first fifth: compare after it.
    warm_t = report["run_time_s"] / 5
    for service, w in report["workers"].items():
        warm = [s for s in report["samples"] if s["service"] == service and s["t_s"] >= warm_t]
        if not warm:
            continue
        w["rss_warm_mib"], w["fds_warm"] = warm[0]["rss_mib"], warm[0]["fds"]
        bound = w["rss_warm_mib"] * (1 + RSS_SLACK_FRACTION) + RSS_SLACK_MIB
        checks[f"{service} RSS flat (end ≤ {bound:.0f} MiB)"] = w["rss_end_mib"] <= bound
        checks[f"{service} file descriptors do not grow"] = w["fds_end"] <= w["fds_warm"] + 4
    # /tmp is shared with other processes on a development machine: report, do not fail on it.
    verdict = {"figures": figures, "checks": checks, "passed": all(checks.values()) and load.returncode == 0}
    (out / "soak.json").write_text(json.dumps(verdict, indent=1))
    lines = [f"# Soak: {report['users']} users × {report['rate']} req/s, {report['run_time_s']} s", ""]
    lines += [f"- {name}: {'ok' if ok else 'FAILED'}" for name, ok in checks.items()]
    lines += ["", "```", json.dumps(figures, indent=1), "```"]
    (out / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
