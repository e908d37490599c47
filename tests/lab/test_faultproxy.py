"""FaultProxy against an echo server: each fault shown by what arrives, and when relative to
other events (the fault cleared, the proxy having read the bytes) — never by a stopwatch. Then
the proxy as a process of its own, driven through its control API from this one."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab import cli
from lab.proxy.control import ProxyControl, ProxyControlError
from lab.proxy.faultproxy import FaultProxy
from lab.stack import launch as stack_launch
from lab.stack import process as stack_process
from lab.stack.spec import ProcessRecord

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


# -- several targets ---------------------------------------------------------------------------


@pytest.fixture
async def echoes() -> AsyncIterator[list[tuple[Echo, asyncio.Server]]]:
    servers = []
    for _ in range(2):
        echo = Echo()
        listening = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
        echo.port = listening.sockets[0].getsockname()[1]
        servers.append((echo, listening))
    try:
        yield servers
    finally:
        for echo, listening in servers:
            listening.close()
            for writer in echo.writers:
                writer.close()
            await listening.wait_closed()


async def roundtrip(proxy: FaultProxy, data: bytes) -> bytes:
    async with connection(proxy) as (reader, writer), asyncio.timeout(HANG_GUARD):
        writer.write(data)
        return await reader.readexactly(len(data))


async def test_connections_take_turns_over_the_targets(
    echoes: list[tuple[Echo, asyncio.Server]],
) -> None:
    (first, _), (second, _) = echoes
    targets = [("127.0.0.1", first.port), ("127.0.0.1", second.port)]
    async with FaultProxy.balancing(targets) as proxy:
        for n in range(4):
            assert await roundtrip(proxy, b"%d" % n) == b"%d" % n
        assert len(first.writers) == len(second.writers) == 2
        assert [t.connections for t in proxy.stats.targets] == [2, 2]
        assert [t.bytes_up for t in proxy.stats.targets] == [2, 2]


async def test_a_target_that_refuses_is_skipped(
    echoes: list[tuple[Echo, asyncio.Server]],
) -> None:
    (live, _), (dead, dead_server) = echoes
    dead_server.close()
    await dead_server.wait_closed()  # its port now refuses connections
    targets = [("127.0.0.1", dead.port), ("127.0.0.1", live.port)]
    async with FaultProxy.balancing(targets) as proxy:
        for n in range(3):
            assert await roundtrip(proxy, b"%d" % n) == b"%d" % n
        assert len(live.writers) == 3
        dead_stats, live_stats = proxy.stats.targets
        assert dead_stats.connections == 0
        assert dead_stats.refused >= 1
        assert live_stats.connections == 3
        assert proxy.stats.no_target == 0


async def test_when_every_target_refuses_the_client_is_closed(echo: Echo) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as gone:
        pass
    async with (
        FaultProxy.balancing([("127.0.0.1", gone.port)] * 2) as proxy,
        connection(proxy) as (reader, _),
        asyncio.timeout(HANG_GUARD),
    ):
        assert await reader.read(1) == b""
        await eventually(lambda: proxy.stats.no_target == 1)
        assert [t.refused for t in proxy.stats.targets] == [1, 1]


async def test_with_no_healthy_target_new_connections_are_refused_until_one_returns() -> None:
    echo = Echo()
    server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    echo.port = server.sockets[0].getsockname()[1]
    async with FaultProxy.balancing([("127.0.0.1", echo.port)], health_interval_s=0.02) as proxy:
        assert await roundtrip(proxy, b"up") == b"up"
        server.close()
        await server.wait_closed()  # the only target now refuses: so does the proxy
        await eventually(lambda: not proxy.stats.listening)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        server = await asyncio.start_server(echo.handle, "127.0.0.1", echo.port)
        try:
            await eventually(lambda: proxy.stats.listening)  # the same port, open again
            assert await roundtrip(proxy, b"back") == b"back"
            assert proxy.stats.closed_unhealthy == 1
        finally:
            server.close()
            for writer in echo.writers:
                writer.close()
            await server.wait_closed()


def test_the_health_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="health interval"):
        FaultProxy("127.0.0.1", 1, health_interval_s=0)


def test_balancing_needs_loopback_targets() -> None:
    with pytest.raises(ValueError, match="at least one"):
        FaultProxy.balancing([])
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy.balancing([("127.0.0.1", 1), ("192.0.2.1", 80)])


# -- the proxy as a process, with its control API ----------------------------------------------


@dataclass
class ProxyProcess:
    record: ProcessRecord
    control: ProxyControl

    @property
    def port(self) -> int:
        assert self.record.port is not None
        return self.record.port

    async def call(self, method: str, **faults: Any) -> dict[str, Any]:
        """A control call from a worker thread: the echo server lives on this loop."""
        result: dict[str, Any] = await asyncio.to_thread(getattr(self.control, method), **faults)
        return result

    async def until(self, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll the proxy's stats (its counters are in the other process)."""
        async with asyncio.timeout(HANG_GUARD):
            while True:
                stats: dict[str, Any] = (await self.call("get"))["stats"]
                if condition(stats):
                    return stats
                await asyncio.sleep(0.01)


@pytest.fixture
async def proxy_process(echo: Echo, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    record = stack_launch.proxy_record(tmp_path, "edge", [echo.port])
    offset = stack_launch.launch(record)
    try:
        await asyncio.to_thread(stack_launch.await_ready, record, offset, 30.0)
        assert record.control is not None
        yield ProxyProcess(record, ProxyControl(record.control))
    finally:
        await asyncio.to_thread(stack_process.terminate, [record], 10.0)
    assert not stack_process.is_running(record)


@contextlib.asynccontextmanager
async def to_port(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_faults_set_from_outside_reach_live_and_new_connections(
    proxy_process: ProxyProcess, echo: Echo
) -> None:
    async with to_port(proxy_process.port) as (reader, writer):
        writer.write(b"one")
        async with asyncio.timeout(HANG_GUARD):
            assert await reader.readexactly(3) == b"one"

        await proxy_process.call("set", black_hole=True)  # the live connection goes silent
        reply = asyncio.create_task(reader.readexactly(4))
        writer.write(b"lost")
        await proxy_process.until(lambda stats: stats["bytes_dropped"] == 4)
        assert echo.received == 3
        assert not reply.done()

        await proxy_process.call("set", latency_ms=600_000)  # a new connection is held
        async with to_port(proxy_process.port) as (second_reader, second_writer):
            second = asyncio.create_task(second_reader.readexactly(3))
            second_writer.write(b"new")
            stats = await proxy_process.until(lambda stats: stats["bytes_read"] == 13)
            assert stats["connections"] == 2
            assert stats["targets"][0]["connections"] == 2
            assert echo.received == 3
            assert not second.done()
            assert not reply.done()

            cleared = await proxy_process.call("clear")
            assert cleared["faults"]["latency_ms"] == 0
            async with asyncio.timeout(HANG_GUARD):
                assert await second == b"new"
            writer.write(b"back")  # the live connection works again; what was dropped is gone
            async with asyncio.timeout(HANG_GUARD):
                assert await reply == b"back"
    stats = (await proxy_process.call("get"))["stats"]
    assert stats["bytes_up"] == stats["bytes_down"] == 3 + 3 + 4


def put_raw(control: ProxyControl, body: bytes) -> int:
    request = urllib.request.Request(control.url + "/faults", data=body, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=HANG_GUARD) as answer:
            status: int = answer.status
    except urllib.error.HTTPError as error:
        with error:
            return error.code
    return status


BAD_BODIES = [
    b'{"latency_ms": 5, "bogus": 1}',
    b'{"black_hole": "yes"}',
    b'{"reset": 1}',
    b'{"latency_ms": -1}',
    b'{"latency_ms": true}',
    b'{"latency_ms": "5"}',
    b'{"jitter_ms": 1e309}',
    b'{"latency_ms": NaN}',
    b'{"bandwidth_bps": 0}',
    b"[1]",
    b"not json",
    b"",
    b'{"latency_ms": 1, "pad": "' + b"x" * 5000 + b'"}',
]


async def test_bad_control_input_is_refused_and_changes_nothing(
    proxy_process: ProxyProcess,
) -> None:
    before = await proxy_process.call("set", latency_ms=250, jitter_ms=10, bandwidth_bps=8000)
    assert before["faults"] == {
        "latency_ms": 250.0,
        "jitter_ms": 10.0,
        "black_hole": False,
        "reset": False,
        "bandwidth_bps": 8000.0,
    }
    for body in BAD_BODIES:
        status = await asyncio.to_thread(put_raw, proxy_process.control, body)
        assert status in (400, 413), body  # 413: over the body limit, refused before parsing
        assert (await proxy_process.call("get"))["faults"] == before["faults"], body


async def test_the_client_reports_a_refusal_in_one_line(proxy_process: ProxyProcess) -> None:
    with pytest.raises(ProxyControlError, match=r"^PUT .*/faults: 400 .*latency_ms"):
        await proxy_process.call("set", latency_ms=-5)
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        ProxyControl("http://192.0.2.1:80")


def test_proxy_command_rejects_bad_targets(capsys: pytest.CaptureFixture[str]) -> None:
    for target in ("192.0.2.1:80", "127.0.0.1", "127.0.0.1:70000"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["proxy", "--target", target])
        assert exit_info.value.code == 2
        assert "not a loopback HOST:PORT" in capsys.readouterr().err
