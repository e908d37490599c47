"""The one durable SQLite open: owner-only file, write-ahead log, ``synchronous=FULL``.

The keyserver's store and outage journal, the car's state and the phone's wallet all open their
file here, so "a write that has returned survives a crash or a power cut" holds in one place.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

BUSY_TIMEOUT_S = 2.0


def create_private(path: Path | str) -> None:
    """Create the database file for its owner only (0600), or tighten an older one: these files
    hold accounts, keys and tokens. SQLite gives the -wal and -shm files the database's mode.
    Raises OSError when the file cannot be created."""
    if str(path) == ":memory:":
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def open_durable(
    path: Path | str, *, busy_timeout: float = BUSY_TIMEOUT_S, check_same_thread: bool = True
) -> sqlite3.Connection:
    """Open (creating it 0600 if needed) the database at ``path`` for durable writes.

    The connection is in autocommit mode (callers write their own ``BEGIN``/``COMMIT``), in WAL
    mode with ``synchronous=FULL`` (a committed write is on disk when the call returns), and waits
    at most ``busy_timeout`` seconds for another connection's write lock. Raises OSError if the
    file cannot be created, ``sqlite3.Error`` otherwise (OperationalError if the file system
    cannot hold a write-ahead log); no connection is left open after a failure. ``":memory:"``
    asks for no durability and gets none (the simulated fleet's cars, tests).
    """
    create_private(path)
    db = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=check_same_thread
    )
    try:
        (mode,) = db.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode != "wal" and str(path) != ":memory:":
            raise sqlite3.OperationalError(f"cannot use write-ahead logging (journal mode {mode})")
        db.execute("PRAGMA synchronous=FULL")
    except BaseException:
        db.close()
        raise
    return db
