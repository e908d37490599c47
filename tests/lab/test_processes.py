"""RedisServer: a real redis-server on a free loopback port that tests and drills can kill."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lab.processes.app import AppServer
from lab.processes.base import LOOPBACK, ProcessError, last_line
from lab.processes.redis_server import RedisServer


def client(server: RedisServer) -> aioredis.Redis:
    # Explicit short timeouts and no hidden retries (redis-py's default retries 3 times).
    return aioredis.Redis(
        host=LOOPBACK,
        port=server.port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )


async def test_start_write_pause_resume_kill(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        assert server.port not in (0, 6379)
        db = client(server)
        try:
            assert await db.ping()
            await db.set("k", "v")
            assert await db.get("k") == b"v"

            server.pause()  # hung, sockets open: the call times out instead of hanging
            with pytest.raises(RedisTimeoutError):
                await db.get("k")
            server.resume()
            await db.connection_pool.disconnect()
            assert await db.get("k") == b"v"

            pid = server.pid
            server.kill()
            with pytest.raises(RedisConnectionError):
                await db.ping()
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        finally:
            await db.aclose()
    assert "Ready to accept connections" in server.log_path.read_text()


def test_stop_leaves_nothing_running(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    pid = server.pid
    server.pause()  # even a paused server is stopped cleanly
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ProcessError):
        server.pause()


def test_missing_binary_gives_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProcessError, match=r"apt-get install redis-server"):
        RedisServer(tmp_path).start()


def test_a_server_that_cannot_start_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ProcessError, match="did not become ready"):
        RedisServer(tmp_path, extra_args=["--no-such-option", "x"]).start(attempts=1)


def test_an_app_announces_its_port_and_stops(tmp_path: Path) -> None:
    env = {**os.environ, "PHONEKEY_PORT": "0", "PHONEKEY_DATA_DIR": str(tmp_path / "data")}
    server = AppServer(
        [sys.executable, "-m", "keyserver.cli", "serve"], workdir=tmp_path, env=env, name="ks"
    )
    with server:
        assert server.port not in (0, 8080)
        pid = server.pid
        with socket.create_connection((LOOPBACK, server.port), timeout=5):
            pass  # it listens where it said
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "Running on" in server.log_path.read_text()


def test_an_app_that_cannot_start_is_reported_with_its_output(tmp_path: Path) -> None:
    env = {**os.environ, "PHONEKEY_PORT": "eighty"}
    server = AppServer(
        [sys.executable, "-m", "keyserver.cli", "serve"], workdir=tmp_path, env=env, name="ks"
    )
    with pytest.raises(ProcessError, match="ks did not become ready") as refused:
        server.start()
    assert "setting 'port'" in server.log_path.read_text()
    # why, in the message itself: the log may be gone by the time someone reads it
    assert "setting 'port'" in str(refused.value)


def test_the_last_line_is_printable_and_bounded() -> None:
    assert last_line(b"one\ntwo\n\n  \n") == "two"
    assert last_line(b"") == ""
    assert last_line(b"bell\x07\xff") == "bell?\ufffd"  # a control character, a bad byte
    assert last_line(b"x" * 500) == "x" * 199 + "…"
