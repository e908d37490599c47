"""FaultProxy against an echo server: each fault shown by what arrives, and when relative to
other events (the fault cleared, the proxy having read the bytes) — never by a stopwatch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from deploy.faultproxy import FaultProxy

HANG_GUARD = 5.0  # only against a hang; no assertion depends on it


@dataclass
class Echo:
    port: int = 0
    received: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(OSError):
            while data := await reader.read(4096):
                self.received += len(data)
                writer.write(data)
                await writer.drain()
        writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listening.close()
        for writer in server.writers:
            writer.close()
        await listening.wait_closed()


@pytest.fixture
async def proxy(echo: Echo) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as running:
        yield running


@contextlib.asynccontextmanager
async def connection(
    proxy: FaultProxy,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll the proxy's or the echo server's counters (they have no event to wait on)."""
    async with asyncio.timeout(HANG_GUARD):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_forwards_both_ways_without_faults(proxy: FaultProxy) -> None:
    async with connection(proxy) as (reader, writer):
        writer.write(b"hello")
        async with asyncio.timeout(HANG_GUARD):
            assert await reader.readexactly(5) == b"hello"
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == 5


async def test_latency_holds_each_direction_until_cleared(proxy: FaultProxy, echo: Echo) -> None:
    proxy.set(latency_s=3600)
    async with connection(proxy) as (reader, writer):
        reply = asyncio.create_task(reader.readexactly(4))
        writer.write(b"ping")
        await eventually(lambda: proxy.stats.bytes_read == 4)
        assert echo.received == 0
        assert not reply.done()

        proxy.set(latency_down_s=3600)  # the up direction goes free, the reply is held
        await eventually(lambda: echo.received == 4)
        await eventually(lambda: proxy.stats.bytes_read == 8)
        assert not reply.done()

        proxy.clear()
        async with asyncio.timeout(HANG_GUARD):
            assert await reply == b"ping"


async def test_short_latency_delivers_in_order(proxy: FaultProxy) -> None:
    proxy.set(latency_s=0.02)
    async with connection(proxy) as (reader, writer):
        for n in range(5):
            writer.write(b"%d" % n)
            await writer.drain()
        async with asyncio.timeout(HANG_GUARD):
            assert await reader.readexactly(5) == b"01234"


async def test_black_hole_reads_and_never_answers(proxy: FaultProxy, echo: Echo) -> None:
    proxy.set(black_hole=True)
    async with connection(proxy) as (reader, writer):
        reply = asyncio.create_task(reader.read(100))
        writer.write(b"anyone?")
        await eventually(lambda: proxy.stats.bytes_dropped == 7)
        assert echo.received == 0
        assert not reply.done()
        reply.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reply
    proxy.clear()
    async with connection(proxy) as (reader, writer):
        writer.write(b"back")
        async with asyncio.timeout(HANG_GUARD):
            assert await reader.readexactly(4) == b"back"


async def test_reset_closes_open_and_new_connections_with_rst(proxy: FaultProxy) -> None:
    async with connection(proxy) as (reader, writer):
        writer.write(b"x")
        async with asyncio.timeout(HANG_GUARD):
            assert await reader.readexactly(1) == b"x"
        proxy.set(reset=True)
        async with asyncio.timeout(HANG_GUARD):
            with pytest.raises(ConnectionResetError):
                await reader.read(1)
    async with connection(proxy) as (reader, _):  # accepted, then reset
        async with asyncio.timeout(HANG_GUARD):
            with pytest.raises(ConnectionResetError):
                await reader.read(1)
    proxy.clear()
    async with connection(proxy) as (reader, writer):
        writer.write(b"ok")
        async with asyncio.timeout(HANG_GUARD):
            assert await reader.readexactly(2) == b"ok"


async def test_bandwidth_limit_trickles_until_cleared(proxy: FaultProxy) -> None:
    proxy.set(bytes_per_s=20)  # one byte per slice: 200 bytes would take 10 s each way
    payload = bytes(range(200))
    async with connection(proxy) as (reader, writer):
        writer.write(payload)
        async with asyncio.timeout(HANG_GUARD):
            first = await reader.readexactly(1)  # a trickle, not a black hole
        assert proxy.stats.bytes_up < len(payload)
        proxy.clear()
        async with asyncio.timeout(HANG_GUARD):
            rest = await reader.readexactly(len(payload) - 1)
        assert first + rest == payload


async def test_connections_beyond_the_limit_are_refused(echo: Echo) -> None:
    async with (
        FaultProxy("127.0.0.1", echo.port, max_connections=1) as proxy,
        connection(proxy) as (reader, writer),
    ):
        writer.write(b"a")
        async with asyncio.timeout(HANG_GUARD):
            assert await reader.readexactly(1) == b"a"
        async with connection(proxy) as (second, _), asyncio.timeout(HANG_GUARD):
            with contextlib.suppress(ConnectionResetError):
                assert await second.read(1) == b""
        assert proxy.stats.refused == 1


async def test_a_dead_target_closes_the_client_connection(echo: Echo) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        pass  # closed: its port is free again
    async with (
        FaultProxy("127.0.0.1", proxy.port) as dangling,
        connection(dangling) as (reader, _),
        asyncio.timeout(HANG_GUARD),
    ):
        assert await reader.read(1) == b""


def test_only_loopback_targets() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("192.0.2.1", 80)
