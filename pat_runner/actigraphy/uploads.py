"""An uploaded device file (on disk) → `RawRecording`, by its content.

Raw `.gt3x` archives are decoded from the file itself (never read into memory whole; they may be
hundreds of MB) and may be up to `settings.max_raw_upload_bytes`; NSRR/MESA CSVs need the request's
`recording_start`; every other export goes to `readers.read_recording_file` with its own, smaller
`settings.max_upload_bytes`.
"""

from __future__ import annotations

from pathlib import Path

from pat_runner.actigraphy.gt3x import ZIP_MAGIC, read_gt3x
from pat_runner.actigraphy.mesa import looks_like_mesa, read_mesa_csv
from pat_runner.actigraphy.preprocess import RawRecording
from pat_runner.actigraphy.readers import read_recording_file
from pat_runner.errors import PayloadTooLarge
from pat_runner.settings import Settings


def read_upload(
    path: Path, filename: str, *, timezone: str, recording_start: str, settings: Settings, max_epochs: int
) -> RawRecording:
    """The recording in the uploaded file at `path`; `max_epochs` bounds an epoch export's rows."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(len(ZIP_MAGIC))
    if head == ZIP_MAGIC:
        if size > settings.max_raw_upload_bytes:
            limit = settings.max_raw_upload_bytes
            raise PayloadTooLarge(f"the .gt3x file is {size:,} bytes, more than the maximum of {limit:,}")
        return read_gt3x(
            path,
            timezone=timezone,
            max_minutes=settings.max_recording_minutes,
            max_samples=settings.max_raw_samples,
        )
    if size > settings.max_upload_bytes:
        limit = settings.max_upload_bytes
        raise PayloadTooLarge(f"the file is {size:,} bytes, more than the maximum of {limit:,}")
    data = path.read_bytes()
    first_line = data[:4096].decode("utf-8-sig", errors="replace").split("\n", 1)[0]
    if looks_like_mesa(first_line):
        return read_mesa_csv(
            data,
            recording_start=recording_start,
            timezone=timezone,
            max_minutes=settings.max_recording_minutes,
        )
    return read_recording_file(
        data,
        filename,
        timezone=timezone,
        max_bytes=settings.max_upload_bytes,
        max_minutes=settings.max_recording_minutes,
        max_epochs=max_epochs,
    )
