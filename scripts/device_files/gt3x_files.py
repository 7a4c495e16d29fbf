"""`.gt3x` files written from a known signal, in the log.bin layout that `pygt3x` reads.

The layout is that of `../shared/data/raw/small.gt3x` (a newer ActiGraph device): `info.txt` with
`Sample Rate`, `Acceleration Scale` and a `Start Date` in .NET ticks, and `log.bin` with one record per
second: `<BBLH` header (0x1E, type, local-time seconds since 1970, payload size), the payload and a
checksum byte (the complement of the XOR of every header and payload byte). Acceleration is written as
Activity2 records (type 26: int16 X, Y, Z per sample, in units of 1/scale g); idle sleep mode as Event
records (type 3) with payload 0x08 (entering) and 0x09 (leaving), after a Params record (type 21) that
says the device had idle sleep mode enabled.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Iterator
from datetime import datetime

import numpy as np

SCALE = 256
ACTIVITY2, EVENT, PARAMS = 26, 3, 21
UNIX_EPOCH = datetime(1970, 1, 1)
DOTNET_TICKS_AT_UNIX_EPOCH = 621_355_968_000_000_000


def record(kind: int, timestamp: int, payload: bytes) -> bytes:
    header = struct.pack("<BBLH", 0x1E, kind, timestamp, len(payload))
    checksum = int(np.bitwise_xor.reduce(np.frombuffer(header + payload, dtype=np.uint8)))
    return header + payload + bytes([~checksum & 0xFF])


def gt3x_bytes(start: datetime, rate: int, segments: Iterator[tuple[str, np.ndarray | int]]) -> bytes:
    """A `.gt3x` starting at the naive local `start`: `("active", samples)` appends samples (an
    `(n * rate, 3)` array in g, whole seconds), `("idle", seconds)` that many seconds of idle sleep mode,
    `("gap", seconds)` seconds without any record."""
    now = int((start - UNIX_EPOCH).total_seconds())
    log = io.BytesIO()
    log.write(record(PARAMS, now, bytes([0, 0, 2, 0, 4, 0, 0, 0])))
    for kind, content in segments:
        if kind == "active":
            assert isinstance(content, np.ndarray)
            counts = np.clip(np.rint(content * SCALE), -32768, 32767).astype("<i2").reshape(-1, rate, 3)
            for second in counts:
                log.write(record(ACTIVITY2, now, second.tobytes()))
                now += 1
        elif kind == "idle":
            assert isinstance(content, int)
            log.write(record(EVENT, now, b"\x08"))
            now += content
            log.write(record(EVENT, now, b"\x09"))
        else:
            assert isinstance(content, int)
            now += content
    ticks = DOTNET_TICKS_AT_UNIX_EPOCH + int((start - UNIX_EPOCH).total_seconds()) * 10_000_000
    info = "\n".join(
        [
            f"Start Date: {ticks}",
            "Device Type: Link",
            "Acceleration Max: 8",
            "Acceleration Min: -8",
            f"Acceleration Scale: {SCALE}",
            f"Sample Rate: {rate}",
            "Serial Number: TAS0TEST00001",
            "TimeZone: -05:00:00",
            "Firmware: 1.7.1",
        ]
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("info.txt", info)
        zipped.writestr("log.bin", log.getvalue())
    return archive.getvalue()


def walking(seconds: int, rate: int, seed: int) -> np.ndarray:
    """Wrist-like movement: gravity on Z plus a 2-Hz swing of random amplitude on X and Y (in g)."""
    rng = np.random.default_rng(seed)
    t = np.arange(seconds * rate) / rate
    amplitude = rng.uniform(0.2, 0.8)
    swing = amplitude * np.sin(2 * np.pi * 2.0 * t)
    noise = rng.normal(0, 0.02, (len(t), 3))
    return np.column_stack([0.5 * swing, swing, -1.0 + 0.1 * swing]) + noise


def days_of_bouts(days: int, rate: int, *, active_s: int = 120, every_s: int = 1_800) -> Iterator:
    """`days` of `active_s` seconds of walking every `every_s` seconds, idle sleep mode in between."""
    for bout in range(days * 86_400 // every_s):
        yield "active", walking(active_s, rate, seed=bout)
        yield "idle", every_s - active_s
