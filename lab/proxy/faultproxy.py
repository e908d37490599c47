"""A fault-injecting TCP proxy of our own (Toxiproxy is not installable here, ``tc netem`` is
missing): it listens on a loopback port, forwards to one loopback target or balances over several
(round robin per new connection, skipping a target that refuses the connection, as a load
balancer would), and injects faults that can be changed while connections are open.
``lab.proxy.cli`` runs it as a process with an HTTP control API.

Faults (``FaultProxy.set`` replaces the whole set; ``clear()`` removes them all):

    latency_up_s / latency_down_s   each chunk is held this long (client→target / target→client);
                                    ``latency_s`` sets both. Held chunks are released as soon as
                                    the latency is lowered or cleared; order is always kept.
    jitter_s                        each chunk is held up to this much longer (uniformly random,
                                    drawn when it is read); order is still kept
    black_hole                      connections are accepted and read, nothing is forwarded or
                                    answered (what is read meanwhile is dropped)
    reset                           every open connection, and every new one, is closed with a
                                    TCP RST (SO_LINGER 0)
    bytes_per_s                     each direction of each connection trickles at this rate

With ``health_interval_s`` the proxy also checks its targets in the background (a connect
probe to each, every interval, each bounded by the interval): while no target accepts — after
``UNHEALTHY_ROUNDS`` rounds in a row — it closes its listening socket, so clients see their
connection refused, as with a Service that has no endpoints; it listens again on the same port
as soon as one target accepts. Connections already open are left alone.

Everything is bounded: connections (``max_connections``), bytes held per direction
(``QUEUE_CHUNKS`` × ``CHUNK_BYTES``), and each wait (it ends when its time is up or the faults
change).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
CHUNK_BYTES = 64 * 1024
QUEUE_CHUNKS = 64
PACE_SLICE_S = 0.05  # a bandwidth limit sends this many seconds' worth of bytes at a time
CONNECT_TIMEOUT_S = 2.0  # a target that does not accept within this is skipped like a refusal
UNHEALTHY_ROUNDS = 2  # health rounds in a row with no target accepting before the proxy closes
MAX_PROBE_S = 1.0  # one health probe's connect, at most

Address = tuple[str, int]


@dataclass(frozen=True)
class Faults:
    latency_up_s: float = 0.0
    latency_down_s: float = 0.0
    black_hole: bool = False
    reset: bool = False
    bytes_per_s: float | None = None
    jitter_s: float = 0.0


@dataclass
class TargetStats:
    """What went to one target."""

    host: str
    port: int
    connections: int = 0  # client connections forwarded to it
    open: int = 0  # of which still open
    refused: int = 0  # connects it refused (or did not accept in time)
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0  # over max_connections
    reset: int = 0  # sockets closed with RST (a proxied connection has two)
    bytes_up: int = 0  # forwarded client→target
    bytes_down: int = 0  # forwarded target→client
    bytes_read: int = 0  # read from either side, forwarded or not
    bytes_dropped: int = 0  # read while black-holed
    no_target: int = 0  # client connections closed because every target refused
    listening: bool = False  # the listening socket is open (health checks may close it)
    closed_unhealthy: int = 0  # times the health check closed it: no target accepted
    targets: list[TargetStats] = field(default_factory=list)


class FaultProxy:
    """``async with FaultProxy(host, port) as proxy:`` then connect to ``proxy.port``;
    ``FaultProxy.balancing([(host, port), ...])`` for several targets."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        max_connections: int = 256,
        listen_port: int = 0,
        health_interval_s: float | None = None,
    ) -> None:
        if target_host not in LOOPBACK_HOSTS:
            raise ValueError("the fault proxy forwards to loopback only")
        if not 0 <= listen_port <= 65535:
            raise ValueError(f"not a port: {listen_port}")
        if health_interval_s is not None and health_interval_s <= 0:
            raise ValueError("the health interval must be positive")
        self.targets: list[Address] = [(target_host, target_port)]
        self.max_connections = max_connections
        self.listen_port = listen_port
        self.port = 0
        self.stats = ProxyStats(targets=[TargetStats(target_host, target_port)])
        self._faults = Faults()
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._links: dict[asyncio.Task[None], list[asyncio.StreamWriter]] = {}
        self._next_target = 0
        self.health_interval_s = health_interval_s
        self._health: asyncio.Task[None] | None = None

    @classmethod
    def balancing(
        cls,
        targets: Sequence[Address],
        *,
        max_connections: int = 256,
        listen_port: int = 0,
        health_interval_s: float | None = None,
    ) -> FaultProxy:
        """A proxy over several targets: each new connection goes to the next one in turn."""
        if not targets:
            raise ValueError("the fault proxy needs at least one target")
        proxy = cls(
            *targets[0], max_connections=max_connections, listen_port=listen_port,
            health_interval_s=health_interval_s,
        )  # fmt: skip
        for host, port in targets[1:]:
            if host not in LOOPBACK_HOSTS:
                raise ValueError("the fault proxy forwards to loopback only")
            proxy.targets.append((host, port))
            proxy.stats.targets.append(TargetStats(host, port))
        return proxy

    @property
    def target(self) -> Address:
        return self.targets[0]

    @property
    def faults(self) -> Faults:
        return self._faults

    @property
    def connections(self) -> int:
        return len(self._links)

    def set(
        self,
        *,
        latency_s: float | None = None,
        latency_up_s: float = 0.0,
        latency_down_s: float = 0.0,
        black_hole: bool = False,
        reset: bool = False,
        bytes_per_s: float | None = None,
        jitter_s: float = 0.0,
    ) -> None:
        if latency_s is not None:
            latency_up_s = latency_down_s = latency_s
        faults = Faults(latency_up_s, latency_down_s, black_hole, reset, bytes_per_s, jitter_s)
        if min(latency_up_s, latency_down_s, jitter_s) < 0 or (
            bytes_per_s is not None and bytes_per_s <= 0
        ):
            raise ValueError(f"invalid faults: {faults}")
        self._faults = faults
        # wake every waiting chunk so it sees the new faults, then arm a fresh event
        self._changed.set()
        self._changed = asyncio.Event()
        if reset:
            for writers in self._links.values():
                for writer in writers:
                    self._rst(writer)

    def clear(self) -> None:
        self.set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.stats.listening = True
        if self.health_interval_s is not None:
            self._health = asyncio.create_task(self._check_health(self.health_interval_s))
        return self

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        self.stats.listening = False
        if self._server is not None:
            self._server.close()
        for task, writers in list(self._links.items()):
            for writer in writers:
                writer.transport.abort()
            task.cancel()
        if self._links:
            await asyncio.gather(*self._links, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- health ----------------------------------------------------------------------------

    async def _check_health(self, interval: float) -> None:
        """Close the listening socket while no target accepts a connection, open it again (on
        the same port) once one does. Runs until ``close()``."""
        failed_rounds = 0
        while True:
            healthy = await self._any_target_accepts(min(interval, MAX_PROBE_S))
            failed_rounds = 0 if healthy else failed_rounds + 1
            if failed_rounds >= UNHEALTHY_ROUNDS and self._server is not None:
                self._server.close()  # open connections stay; new ones are refused
                self._server = None
                self.stats.listening = False
                self.stats.closed_unhealthy += 1
            elif healthy and self._server is None:
                with contextlib.suppress(OSError):  # the port taken meanwhile: try next round
                    self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
                    self.stats.listening = True
            await asyncio.sleep(interval)

    async def _any_target_accepts(self, probe_s: float) -> bool:
        async def accepts(address: Address) -> bool:
            try:
                async with asyncio.timeout(probe_s):
                    _, writer = await asyncio.open_connection(*address)
            except (OSError, TimeoutError):
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True

        return any(await asyncio.gather(*(accepts(target) for target in self.targets)))

    # -- connections -----------------------------------------------------------------------

    def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        """The server's callback, run synchronously as the connection is made: the link is in
        ``_links`` from this moment, so ``close()`` closes its socket even if the link's task is
        cancelled before it ever ran (a coroutine callback would leave that socket to the GC)."""
        if len(self._links) >= self.max_connections:
            self.stats.refused += 1
            client_w.transport.abort()
            return
        self.stats.accepted += 1
        if self._faults.reset:
            self._rst(client_w)
            return
        writers = [client_w]
        task = asyncio.get_running_loop().create_task(self._link(client_r, client_w, writers))
        self._links[task] = writers

    async def _link(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        writers: list[asyncio.StreamWriter],
    ) -> None:
        task = asyncio.current_task()
        target: TargetStats | None = None
        try:
            connected = await self._connect()
            if connected is None:
                self.stats.no_target += 1
                return  # every target is down: the client sees its connection closed
            target, target_r, target_w = connected
            writers.append(target_w)
            if self._faults.reset:  # set while we were connecting
                self._rst(client_w)
                self._rst(target_w)
                return
            await asyncio.gather(
                self._pump(client_r, target_w, target, up=True),
                self._pump(target_r, client_w, target, up=False),
            )
        finally:
            if task is not None:
                self._links.pop(task, None)
            if target is not None:
                target.open -= 1
            for writer in writers:
                writer.close()  # after a RST or an abort this changes nothing

    async def _connect(
        self,
    ) -> tuple[TargetStats, asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The next target in turn that accepts the connection; None if none does."""
        first = self._next_target % len(self.targets)
        self._next_target = first + 1
        for offset in range(len(self.targets)):
            index = (first + offset) % len(self.targets)
            stats = self.stats.targets[index]
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection(*self.targets[index])
            except (OSError, TimeoutError):
                stats.refused += 1
                continue
            stats.connections += 1
            stats.open += 1
            return stats, reader, writer
        return None

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        target: TargetStats,
        *,
        up: bool,
    ) -> None:
        queue: asyncio.Queue[tuple[float, float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
        reading = asyncio.create_task(self._read(source, queue))
        try:
            await self._write(queue, sink, target, up=up)
        except OSError:
            pass  # the other side is gone; closing the link ends the reader too
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    async def _read(
        self,
        source: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, float, bytes] | None],
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while chunk := await source.read(CHUNK_BYTES):
                self.stats.bytes_read += len(chunk)
                if self._faults.black_hole:
                    self.stats.bytes_dropped += len(chunk)
                    continue
                # the jitter's share is drawn once per chunk: simulated delay, not cryptography
                share = random.random()  # noqa: S311
                await queue.put((loop.time(), share, chunk))
        except OSError:
            pass
        await queue.put(None)

    async def _write(
        self,
        queue: asyncio.Queue[tuple[float, float, bytes] | None],
        sink: asyncio.StreamWriter,
        target: TargetStats,
        *,
        up: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            received_at, share, chunk = item
            while True:  # hold the chunk for the latency in force *now*
                faults = self._faults
                latency = faults.latency_up_s if up else faults.latency_down_s
                due = received_at + latency + share * faults.jitter_s
                if loop.time() >= due:
                    break
                await self._wait_for_change(due - loop.time())
            view = memoryview(chunk)
            while view:
                faults = self._faults
                if faults.black_hole:
                    self.stats.bytes_dropped += len(view)
                    break
                piece = len(view)
                if faults.bytes_per_s is not None:
                    piece = min(piece, max(1, int(faults.bytes_per_s * PACE_SLICE_S)))
                sink.write(view[:piece])
                await sink.drain()
                if up:
                    self.stats.bytes_up += piece
                    target.bytes_up += piece
                else:
                    self.stats.bytes_down += piece
                    target.bytes_down += piece
                view = view[piece:]
                if faults.bytes_per_s is not None and view:
                    await self._wait_for_change(piece / faults.bytes_per_s)
        if sink.can_write_eof():
            sink.write_eof()

    async def _wait_for_change(self, seconds: float) -> None:
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await changed.wait()

    def _rst(self, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        self.stats.reset += 1
