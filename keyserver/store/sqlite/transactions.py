"""The SQLite store's one connection, owned by one worker thread: every call is one transaction.

Calls from any number of coroutines are serialized on the thread and never block the event loop.
Writes take the write lock up front (``BEGIN IMMEDIATE``). SQLite's errors become ``Conflict``
(a unique key taken, where the caller says what that means) or ``StoreUnavailable``, which says
whether a write may have been applied: only a failed ``COMMIT`` leaves that open.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

from keyserver.errors import Conflict, StoreUnavailable
from keyserver.store.sqlite.schema import SCHEMA, SCHEMA_VERSION
from runtime.sqlite import open_durable

T = TypeVar("T")

_UNIQUE_VIOLATIONS: Final = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    # A failed rollback leaves the transaction open; the next call rolls it back first.
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


def _unavailable(path: Path, exc: sqlite3.Error, *, may_have_succeeded: bool) -> StoreUnavailable:
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    detail = " ".join(str(exc).split())
    return StoreUnavailable(
        f"SQLite store {path}: {detail} ({name})", may_have_succeeded=may_have_succeeded
    )


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open the database and create or check its schema; runs on the worker thread."""
    conn: sqlite3.Connection | None = None
    try:
        try:
            # 0600, WAL, synchronous=FULL, autocommit: we issue BEGIN/COMMIT ourselves
            conn = open_durable(path, busy_timeout=busy_timeout)
        except OSError as exc:
            raise StoreUnavailable(
                f"SQLite store {path}: unable to open database file ({exc.strerror})",
                may_have_succeeded=False,
            ) from None
        conn.execute("BEGIN IMMEDIATE")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"SQLite store {path}: schema version {version} is newer than this keyserver's "
                f"({SCHEMA_VERSION})",
                may_have_succeeded=False,
            )
        if version < SCHEMA_VERSION:
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
        return conn
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error):
            raise _unavailable(path, exc, may_have_succeeded=False) from exc
        raise


class Transactions:
    """The database file's connection and the one thread that uses it."""

    def __init__(self, path: Path, conn: sqlite3.Connection, worker: ThreadPoolExecutor) -> None:
        self.path = path
        self._conn = conn  # used on the worker thread only
        self._worker = worker
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, busy_timeout: float) -> Transactions:
        """Open (creating if needed) the database at ``path``, its schema up to date."""
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(
                worker, _connect, path, busy_timeout
            )
        except BaseException:
            worker.shutdown(wait=False)
            raise
        return cls(path, conn, worker)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # queued calls run first: the worker takes jobs in order
            await asyncio.get_running_loop().run_in_executor(self._worker, self._conn.close)
        except sqlite3.Error:
            pass  # committed writes are already durable in the WAL; nothing to save here
        finally:
            self._worker.shutdown(wait=False)

    async def run(
        self, work: Callable[[sqlite3.Connection], T], *, write: bool, conflict: str = ""
    ) -> T:
        """``work(conn)`` in one transaction; a unique key taken is ``Conflict(conflict)`` when
        ``conflict`` says what that means."""
        if self._closed:
            raise StoreUnavailable(f"SQLite store {self.path} is closed", may_have_succeeded=False)
        return await asyncio.get_running_loop().run_in_executor(
            self._worker, self._transact, work, write, conflict
        )

    def _transact(self, work: Callable[[sqlite3.Connection], T], write: bool, conflict: str) -> T:
        """Run ``work`` in one transaction on the worker thread, mapping SQLite's errors."""
        conn = self._conn
        committing = False
        try:
            if conn.in_transaction:  # left open by a failed rollback, so never committed
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = work(conn)
            except BaseException:
                _rollback_quietly(conn)
                raise
            committing = write
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            if conn.in_transaction:
                _rollback_quietly(conn)
            unique = getattr(exc, "sqlite_errorname", "") in _UNIQUE_VIOLATIONS
            if conflict and unique and not committing:
                raise Conflict(conflict) from exc
            # Before COMMIT the rollback proves nothing was applied; a failed COMMIT proves nothing.
            raise _unavailable(self.path, exc, may_have_succeeded=committing) from exc

    async def one(self, sql: str, params: tuple[object, ...]) -> Any:
        """The first row of a read, or None."""
        return await self.run(lambda c: c.execute(sql, params).fetchone(), write=False)

    async def all(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        """Every row of a read."""
        return await self.run(lambda c: c.execute(sql, params).fetchall(), write=False)

    async def change(self, sql: str, params: tuple[object, ...], conflict: str = "") -> int:
        """One write statement; how many rows it changed."""
        return await self.run(
            lambda c: c.execute(sql, params).rowcount, write=True, conflict=conflict
        )
