"""Attack harness for the security regression tests: sends the malicious request(s) to the real
`bentoml serve` from worker threads while a probe calls `/livez` every 50 ms, and samples the API
worker (and the private memory of any child it forks to parse an upload) for CPU time and resident
memory. CPU time includes the children the worker has reaped.

`attack(...)` returns the responses, the slowest `/livez` answer during the attack, the CPU seconds the
worker and its children spent, and the peak resident memory above the worker's level before the attack.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from scripts.local_server import Server, child_pids, stat_fields

PAGE = 4096
TICKS = 100  # USER_HZ on Linux
SERVICE = "pat_service"


@dataclass
class Outcome:
    responses: list[httpx.Response]
    slowest_livez_s: float
    livez_probes: int
    cpu_s: float
    peak_rss_mb: float

    def check(self, *, status: int, cpu_s: float, rss_mb: float) -> None:
        statuses = [r.status_code for r in self.responses]
        assert all(code == status for code in statuses), [
            (r.status_code, r.text[:300]) for r in self.responses
        ]
        assert self.livez_probes >= 1
        assert self.slowest_livez_s < 1.0, f"/livez took {self.slowest_livez_s:.2f} s during the attack"
        assert self.cpu_s < cpu_s, f"the attack cost the worker {self.cpu_s:.2f} s of CPU"
        assert self.peak_rss_mb < rss_mb, (
            f"the attack raised the worker's memory by {self.peak_rss_mb:.0f} MB"
        )


def _cpu_s(pid: int) -> float:
    # utime, stime, and the reaped children's cutime, cstime (fields 14-17).
    fields = stat_fields(Path(f"/proc/{pid}"))
    return sum(int(v) for v in fields[11:15]) / TICKS


def _rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError):
        return 0


def _private_bytes(pid: int) -> int:
    """Memory a forked child has of its own (its copy-on-write pages shared with the worker excluded)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(
        int(line.split()[1]) * 1024
        for line in text.splitlines()
        if line.startswith(("Private_Clean", "Private_Dirty"))
    )


def api_worker(server: Server) -> int:
    (pid,) = server.worker_pids(SERVICE)
    return pid


def attack(
    server: Server,
    send: Callable[[httpx.Client], httpx.Response],
    *,
    concurrency: int = 1,
) -> Outcome:
    """Run `send` `concurrency` times at once against `server`, probing `/livez` meanwhile."""
    worker = api_worker(server)
    baseline_rss = _rss_bytes(worker)
    cpu_before = _cpu_s(worker)
    done = threading.Event()
    peak = [baseline_rss]
    probes: list[float] = []

    def sample() -> None:
        while not done.is_set():
            total = _rss_bytes(worker) + sum(_private_bytes(child) for child in child_pids(worker))
            peak[0] = max(peak[0], total)
            time.sleep(0.01)

    def probe() -> None:
        with httpx.Client(base_url=server.url, verify=server.verify, timeout=10) as client:
            while True:
                started = time.perf_counter()
                response = client.get("/livez")
                probes.append(time.perf_counter() - started)
                assert response.status_code == 200
                if done.is_set():
                    return
                time.sleep(0.05)

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, verify=server.verify, timeout=120) as client:
            return send(client)

    sampler = threading.Thread(target=sample, daemon=True)
    prober = threading.Thread(target=probe, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(one, i) for i in range(concurrency)]
        prober.start()
        responses = [future.result() for future in futures]
    done.set()
    prober.join(30)
    sampler.join(5)
    return Outcome(
        responses=responses,
        slowest_livez_s=max(probes, default=float("inf")),
        livez_probes=len(probes),
        cpu_s=_cpu_s(worker) - cpu_before,
        peak_rss_mb=(peak[0] - baseline_rss) / 2**20,
    )


def raw_get(server: Server, target: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """A GET with a request target httpx refuses to send (over 64 KiB), written to the socket as is."""
    host, port = server.url.removeprefix("http://").split(":")
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = [tuple(line.split(": ", 1)) for line in header_lines]
    return httpx.Response(int(status_line.split()[1]), headers=parsed, content=body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(
    client: httpx.Client, token: str, content: bytes, filename: str = "recording.csv", **fields: str
) -> httpx.Response:
    return client.post(
        "/v1/analyze/file",
        headers=bearer(token),
        files={"file": (filename, content, "application/octet-stream")},
        data=fields,
    )


def assert_bounded_error(response: httpx.Response, *, code: str | None = None, limit: int = 2048) -> str:
    """An error in the envelope, under `limit` bytes, with the request id; returns the message."""
    assert len(response.content) < limit, f"{len(response.content)}-byte error body"
    error = response.json()["error"]
    assert error["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert error["code"] == code, error
    return error["message"]


def wait_for_log(server: Server, marker: str, timeout_s: float = 5.0) -> str:
    """The server's log once it mentions `marker` (log lines are written asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = server.logs()
        if marker in logs or time.monotonic() > deadline:
            return logs
        time.sleep(0.1)
