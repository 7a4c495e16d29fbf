"""Finding 3: an `.agd` (SQLite) upload ran SQL while being read — a virtual generated column
`axis1 AS (length(printf('%.*c', 100000000, 'x')))` passed the `type='table'` check and
`trusted_schema=OFF` (8.6 s CPU for 20 rows, +858 MB RSS with bigger values). Now the schema is checked
(`PRAGMA table_xinfo`, `sqlite_schema`) before any row is read, under SQLite limits and a progress
handler."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pat_runner.actigraphy.readers import read_recording_file
from pat_runner.errors import InvalidInput
from tests.security.harness import assert_bounded_error, attack, upload

SETTINGS_TABLE = (
    "CREATE TABLE settings "
    "(settingID INTEGER PRIMARY KEY, settingName VARCHAR(64), settingValue VARCHAR(8192))"
)
SETTINGS = [("epochlength", "60"), ("startdatetime", str(638_450_000_000_000_000))]


def agd(tmp_path: Path, data_table: str, *extra: str, rows: int = 20) -> bytes:
    """An ActiLife-shaped SQLite file whose `data` table is defined by `data_table`."""
    path = tmp_path / "upload.agd"
    path.unlink(missing_ok=True)
    expensive = EXPENSIVE in data_table
    with sqlite3.connect(path) as db:
        db.execute(SETTINGS_TABLE)
        db.executemany("INSERT INTO settings (settingName, settingValue) VALUES (?, ?)", SETTINGS)
        # SQLite evaluates a virtual column on insert too: rows go in under a cheap expression, then
        # the schema text is swapped for the attack's (virtual columns are not stored, so it stays valid).
        db.execute(data_table.replace(EXPENSIVE, "0") if expensive else data_table)
        db.executemany(
            "INSERT INTO data (dataTimestamp) VALUES (?)",
            [(638_450_000_000_000_000 + i * 600_000_000,) for i in range(rows)],
        )
        for statement in extra:
            db.execute(statement)
        if expensive:
            db.execute("PRAGMA writable_schema = ON")
            db.execute("UPDATE sqlite_schema SET sql = ? WHERE name = 'data'", (data_table,))
    db.close()
    return path.read_bytes()


EXPENSIVE = "length(printf('%.*c', 100000000, 'x'))"
GENERATED = f"CREATE TABLE data (dataTimestamp INTEGER, axis1 REAL AS ({EXPENSIVE}) VIRTUAL)"


@pytest.mark.integration
def test_generated_column_agd_is_refused_without_running_it(pat_server, tokens, tmp_path) -> None:
    content = agd(tmp_path, GENERATED)
    outcome = attack(pat_server, lambda c: upload(c, tokens["service"], content, "x.agd"), concurrency=2)
    outcome.check(status=422, cpu_s=1.5, rss_mb=150)
    assert "generated or hidden columns" in assert_bounded_error(outcome.responses[0], code="invalid_input")


@pytest.mark.parametrize(
    ("data_table", "extra", "reason"),
    [
        (
            "CREATE TABLE data (dataTimestamp INTEGER, axis1 REAL AS (dataTimestamp * 2) STORED)",
            (),
            "generated or hidden columns",
        ),
        (
            "CREATE TABLE raw (dataTimestamp INTEGER, axis1 REAL)",
            ("CREATE VIEW data AS SELECT * FROM raw",),
            "not an ordinary table",
        ),
        (
            "CREATE TABLE data (dataTimestamp INTEGER, axis1 REAL)",
            ("CREATE TRIGGER t AFTER INSERT ON data BEGIN SELECT 1; END",),
            "triggers",
        ),
        ("CREATE TABLE data (dataTimestamp INTEGER, axis1 BLOB)", (), "numeric type"),
        ("CREATE TABLE data (dataTimestamp INTEGER)", (), "no 'axis1' column"),
    ],
)
def test_agd_schemas_that_could_compute_are_refused(tmp_path, data_table, extra, reason) -> None:
    if data_table.startswith("CREATE TABLE raw"):
        # The view needs a table to insert into; rows go to `raw`.
        path = tmp_path / "upload.agd"
        with sqlite3.connect(path) as db:
            db.execute(SETTINGS_TABLE)
            db.executemany("INSERT INTO settings (settingName, settingValue) VALUES (?, ?)", SETTINGS)
            db.execute(data_table)
            db.execute(extra[0])
        db.close()
        content = path.read_bytes()
    else:
        content = agd(tmp_path, data_table, *extra)
    with pytest.raises(InvalidInput, match=reason):
        read_recording_file(content, "x.agd", timezone="UTC", max_bytes=2**25, max_minutes=80_640)


def test_agd_over_the_epoch_limit_is_refused_before_reading_rows(tmp_path) -> None:
    content = agd(tmp_path, "CREATE TABLE data (dataTimestamp INTEGER, axis1 REAL)", rows=2_000)
    with pytest.raises(InvalidInput, match="more than 1,000 epochs"):
        read_recording_file(
            content, "x.agd", timezone="UTC", max_bytes=2**25, max_minutes=80_640, max_epochs=1_000
        )
