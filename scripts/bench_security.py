"""Costs of the security round-2 defences, against the inputs the penetration test used.

    python scripts/bench_security.py

Prints CPU seconds for: the old and the new JWT redaction on 96 KB of `eyJ`; refusing the 100,000
duplicate-column CSV header; parsing a real `.agd` export in-process and in the budgeted child process
(the fork overhead every upload now pays).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from pat_runner.actigraphy.readers import read_recording_file
from pat_runner.errors import InvalidInput
from pat_runner.serving.audit import redact_secrets
from pat_runner.serving.upload import parse_upload
from pat_runner.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
AGD = ROOT.parent / "shared" / "data" / "actigraphy" / "ActiSleepPlus-RawData-Day01.agd"
OLD_JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


def cpu(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best


def main() -> None:
    flood = "GET /?" + "eyJ" * 32_000
    print(
        f"redaction, 96 KB of eyJ: old regex {cpu(lambda: OLD_JWT_PATTERN.sub('', flood), 1):.3f} s, "
        f"new {cpu(lambda: redact_secrets(flood)):.4f} s CPU"
    )
    header = ("timestamp," + ",".join(["axis1"] * 100_000) + "\n2024-03-04T00:00:00,1\n").encode()

    def refuse() -> None:
        try:
            read_recording_file(header, "x.csv", timezone="UTC", max_bytes=2**25, max_minutes=80_640)
        except InvalidInput:
            return

    print(f"100,000-duplicate-column header refused in {cpu(refuse):.4f} s CPU")
    data = AGD.read_bytes()
    settings = Settings(auth="disabled", host="127.0.0.1")
    in_process = cpu(
        lambda: read_recording_file(data, "x.agd", timezone="UTC", max_bytes=2**25, max_minutes=80_640)
    )

    def child() -> None:
        asyncio.run(
            parse_upload(
                AGD, "x.agd", timezone="UTC", recording_start="", settings=settings, max_epochs=483_840
            )
        )

    started = time.perf_counter()
    for _ in range(5):
        child()
    wall = (time.perf_counter() - started) / 5
    print(
        f".agd ({len(data):,} bytes): in-process {in_process:.3f} s CPU; "
        f"in the budgeted child {wall:.3f} s wall"
    )


if __name__ == "__main__":
    main()
