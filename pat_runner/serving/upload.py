"""Uploaded device files are parsed in a child process with a wall-clock, CPU-time and memory budget.

Raw `.gt3x` archives are the exception: decoding a week of 30 Hz acceleration legitimately takes
minutes and gigabytes (pygt3x + agcounts), far beyond the budget of an epoch export, so they are
decoded in a worker thread after `actigraphy.gt3x`'s own checks (declared sizes, record-header time
span, `PAT_MAX_RAW_SAMPLES`) have bounded the work. Every other format goes to the child.

A parser is the one place where a small hostile input can cost a lot (pandas renaming 100,000
duplicate columns took 107 s; a flood of short lines, gigabytes). In the API worker that would stall the
event loop and every other request of the worker; in a thread it could not be stopped. A child process
can be killed: past `PAT_UPLOAD_PARSE_TIMEOUT_S` the request gets 422 `parse_timeout`, past
`PAT_UPLOAD_PARSE_MEMORY_MB` 413 `parse_memory_exceeded`, and the worker never stops answering.

The child is forked from the API worker, which has already imported the readers (pandas, numpy), so a
parse starts in milliseconds. It runs one pure function, sends its result through a pipe and exits; it
touches none of the worker's locks, sockets or event loop. (`forkserver` and `spawn` re-import the
worker's `__main__` — all of BentoML — in every child.)
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import resource
import signal
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio.to_thread

from pat_runner.actigraphy.gt3x import ZIP_MAGIC
from pat_runner.actigraphy.preprocess import RawRecording
from pat_runner.actigraphy.uploads import read_upload
from pat_runner.errors import InvalidInput, ServiceError
from pat_runner.settings import Settings

_CONTEXT = multiprocessing.get_context("fork")
#: Parses running at once per API worker; more wait their turn (each is one CPU-bound process).
MAX_CONCURRENT_PARSES = max(1, min(4, os.cpu_count() or 1))
# One semaphore per event loop (a semaphore is bound to the loop it first waits on).
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


class ParseTimeout(ServiceError):
    status = 422
    code = "parse_timeout"


class ParseMemoryExceeded(ServiceError):
    status = 413
    code = "parse_memory_exceeded"


def _data_bytes() -> int:
    """The process's private writable memory (`VmData`), what `RLIMIT_DATA` limits."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


def _parse_in_child(
    connection: Connection, path: str, filename: str, options: dict[str, Any], budget: dict[str, int]
) -> None:
    # Limits relative to what the child already maps (the worker's interpreter, numpy, pandas and any
    # heap the worker freed but keeps mapped, which the parse may reuse).
    # RLIMIT_DATA, not RLIMIT_AS: glibc reserves address space for its per-thread arenas up front, and
    # memory committed inside those reservations does not grow the address space (only VmData).
    ceiling = _data_bytes() + budget["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_DATA, (ceiling, ceiling))
    resource.setrlimit(resource.RLIMIT_CPU, (budget["cpu_s"], budget["cpu_s"] + 1))
    try:
        result: tuple[str, Any] = ("ok", read_upload(Path(path), filename, **options))
    except ServiceError as exc:
        result = ("error", (exc.status, exc.code, exc.message))
    except MemoryError:
        result = ("memory", None)
    except Exception as exc:  # a reader bug must not leak a traceback (it may quote the file)
        result = ("failed", type(exc).__name__)
    try:
        connection.send(result)
    except MemoryError:
        connection.send(("memory", None))
    connection.close()


def _is_raw_archive(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(len(ZIP_MAGIC)) == ZIP_MAGIC


async def parse_upload(
    path: Path, filename: str, *, timezone: str, recording_start: str, settings: Settings, max_epochs: int
) -> RawRecording:
    """`uploads.read_upload` of the file at `path`: in a child process under the settings' budgets
    (same errors, plus `ParseTimeout` (422) and `ParseMemoryExceeded` (413)), or, for a raw `.gt3x`
    archive, in a worker thread."""
    options: dict[str, Any] = {
        "timezone": timezone,
        "recording_start": recording_start,
        "settings": settings,
        "max_epochs": max_epochs,
    }
    if _is_raw_archive(path):
        return await anyio.to_thread.run_sync(lambda: read_upload(path, filename, **options))
    timeout_s = settings.upload_parse_timeout_s
    budget = {"memory_bytes": settings.upload_parse_memory_mb * 2**20, "cpu_s": math.ceil(timeout_s)}
    slots = _slots.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(MAX_CONCURRENT_PARSES))
    async with slots:
        receiver, sender = _CONTEXT.Pipe(duplex=False)
        process = _CONTEXT.Process(
            target=_parse_in_child, args=(sender, str(path), filename, options, budget), daemon=True
        )
        try:
            # Forking copies the worker's page tables: blocking, so off the event loop.
            await anyio.to_thread.run_sync(process.start)
            sender.close()
            ready = await anyio.to_thread.run_sync(receiver.poll, timeout_s)
            if not ready:
                raise ParseTimeout(f"parsing the file took longer than {timeout_s:g} s")
            try:
                kind, payload = await anyio.to_thread.run_sync(receiver.recv)
            except EOFError:
                # The child died without answering: killed by its CPU limit, or by the kernel.
                await anyio.to_thread.run_sync(process.join, 1.0)
                if process.exitcode == -signal.SIGXCPU:
                    raise ParseTimeout(f"parsing the file took longer than {timeout_s:g} s") from None
                # Native parser code that does not check its allocations dies of a signal at the
                # address-space limit instead of raising MemoryError; the kernel's OOM killer, too.
                raise ParseMemoryExceeded(
                    f"parsing the file stopped: it needs more than {settings.upload_parse_memory_mb:,} MB "
                    "of memory"
                ) from None
        finally:
            if process.is_alive():
                process.kill()
            if process.pid is not None:
                await anyio.to_thread.run_sync(process.join, 5.0)
            receiver.close()
            sender.close()
    if kind == "ok":
        return payload
    if kind == "error":
        status, code, message = payload
        raise ServiceError(message, code=code, status=status)
    if kind == "memory":
        raise ParseMemoryExceeded(
            f"parsing the file needs more than {settings.upload_parse_memory_mb:,} MB of memory"
        )
    raise InvalidInput(f"the file could not be parsed ({payload})")
