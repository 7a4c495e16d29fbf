"""Real `bentoml serve` processes of this repository on free loopback ports, for benchmarks and tests.

`start_server` gives the server a BentoML home of its own (a copy of a prepared model store), waits for
`/readyz` and returns a handle; `stop_server` ends it. Callers pass the `PAT_*` settings they need.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from pat_runner.serving.http import KEEP_ALIVE_S

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BENTOML = str(Path(sys.executable).with_name("bentoml"))
# Every `bentoml serve` of the scripts and tests keeps idle connections as production does (deploy/k8s).
SERVE_KEEP_ALIVE = ("--timeout-keep-alive", str(KEEP_ALIVE_S))


def stat_fields(process: Path) -> list[str]:
    """The fields of `/proc/<pid>/stat` after the command name (which may hold spaces and parentheses):
    [0] state, [1] parent pid, [11] user and [12] system CPU time in clock ticks."""
    return (process / "stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process `pid` (OSError once it is gone)."""
    fields = stat_fields(Path(f"/proc/{pid}"))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(parent_pid: int) -> list[int]:
    """PIDs of the live processes whose parent is `parent_pid`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int(stat_fields(proc)[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == parent_pid:
            pids.append(int(proc.name))
    return pids


def worker_pids(server_pid: int, service_name: str) -> list[int]:
    """PIDs of the BentoML worker processes serving `service_name`: children of the `bentoml serve`
    arbiter `server_pid` whose command line names the service."""
    pids = []
    for pid in child_pids(server_pid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if service_name.encode() in args:
            pids.append(pid)
    return pids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cache_key_env() -> dict[str, str]:
    """Fresh random cache encryption and HMAC keys, as the `PAT_CACHE_*` variables."""
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    return {
        "PAT_CACHE_KEYS": f"test1:{key}",
        "PAT_CACHE_HMAC_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


@dataclass
class Server:
    url: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes]
    verify: str | bool = True

    def worker_pids(self, service_name: str) -> list[int]:
        return worker_pids(self.process.pid, service_name)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self, token: str | None = None) -> str:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.get(f"{self.url}/metrics", headers=headers, verify=self.verify, timeout=30)
        response.raise_for_status()
        return response.text


def prepare_store(home: Path) -> None:
    """Import the seeded demo PAT-S into a fresh model store at `home`."""
    import_model(home, None)


def import_model(home: Path, h5: Path | None) -> str:
    """Import the Keras weights `h5` (the demo PAT-S when None) into the model store at `home`; the tag."""
    code = (
        "from pat_runner.model.store import ensure_demo_model, import_h5; import sys; "
        "m = import_h5(sys.argv[1]) if sys.argv[1] else ensure_demo_model(); print(m.tag)"
    )
    out = subprocess.run(
        [PYTHON, "-c", code, str(h5 or "")],
        env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout.strip().splitlines()[-1]


def start_server(
    *,
    home: Path,
    log_path: Path,
    extra_env: Mapping[str, str],
    scheme: str = "http",
    timeout_s: float = 120,
    serve_args: Sequence[str] = (),
) -> Server:
    port = free_port()
    # A home of its own per server: BentoML keeps its Prometheus multiprocess files there and clears
    # them when a server starts, which would wipe another running server's metrics.
    own_home = log_path.parent / f"bentoml-home-{port}"
    shutil.copytree(home, own_home)
    env = {
        **os.environ,
        "BENTOML_HOME": str(own_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "PAT_HOST": "127.0.0.1",
        "PAT_LOG_LEVEL": "DEBUG",
        "PAT_RUNNER_WORKERS": "1",
        "PAT_API_WORKERS": "1",
        # Start-up benchmarks would slow every test server; callers that want `auto` say so.
        "PAT_BACKEND": "torch",
        **extra_env,
    }
    log = log_path.open("wb")
    process = subprocess.Popen(
        [BENTOML, "serve", ".", "--host", "127.0.0.1", "--port", str(port), *SERVE_KEEP_ALIVE, *serve_args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    verify: str | bool = extra_env.get("PAT_TLS_CERTFILE", True)
    server = Server(
        url=f"{scheme}://127.0.0.1:{port}", env=env, log_path=log_path, process=process, verify=verify
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{server.logs()[-5000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", verify=verify, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"bentoml serve not ready after {timeout_s} s:\n{server.logs()[-5000:]}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
