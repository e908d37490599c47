"""The one durable SQLite open (runtime.sqlite): owner-only file, WAL, synchronous=FULL."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from runtime.sqlite import open_durable


def test_a_new_file_is_owner_only_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = open_durable(path, busy_timeout=0.5)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert db.execute("PRAGMA busy_timeout").fetchone() == (500,)
        assert db.isolation_level is None  # callers write BEGIN/COMMIT themselves
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")  # committed at once: autocommit
    finally:
        db.close()
    again = open_durable(path)
    try:
        assert again.execute("SELECT x FROM t").fetchall() == [(1,)]
        assert again.execute("PRAGMA busy_timeout").fetchone() == (2000,)
    finally:
        again.close()


def test_an_older_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    open_durable(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_file_another_writer_holds_is_an_error_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # WAL cannot be switched on while another connection
        db.execute("CREATE TABLE t (x)")  # holds the file in rollback-journal mode
        db.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            open_durable(path, busy_timeout=0)
        db.rollback()


def test_memory_asks_for_no_durability() -> None:
    db = open_durable(":memory:")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("memory",)
    finally:
        db.close()


def test_a_file_that_cannot_be_made_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_durable(tmp_path / "no" / "such" / "dir.db")
