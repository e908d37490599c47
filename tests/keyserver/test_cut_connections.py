"""The fault tests' finalizer counts dropped sockets; every other finalizer error gets through."""

from __future__ import annotations

import socket
import sys
from typing import Any

import pytest

from tests.keyserver.cut_connections import finalize_cut_connections


class _Cycle:
    def __init__(self, payload: object) -> None:
        self.me = self  # only the collector frees it
        self.payload = payload


class _Broken:
    def __del__(self) -> None:
        raise RuntimeError("a bug in a finalizer")


def test_a_dropped_socket_is_counted_not_raised() -> None:
    _Cycle(socket.socket())  # never closed: the collector finds it
    assert finalize_cut_connections() == 1


def test_a_dropped_redis_connection_is_counted() -> None:
    class Connection:  # what redis-py's own finalizer says of a connection never closed
        def __del__(self) -> None:
            raise ResourceWarning("unclosed Connection <redis.asyncio.connection.Connection>")

    _Cycle(Connection())
    assert finalize_cut_connections() == 1


def test_any_other_finalizer_error_reaches_the_usual_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[BaseException | None] = []

    def usual(unraisable: Any) -> None:
        seen.append(unraisable.exc_value)

    monkeypatch.setattr(sys, "unraisablehook", usual)
    _Cycle(_Broken())
    assert finalize_cut_connections() == 0
    assert [type(e) for e in seen] == [RuntimeError]
    assert sys.unraisablehook is usual
