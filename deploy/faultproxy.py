"""A fault-injecting TCP proxy of our own (Toxiproxy is not installable here, ``tc netem`` is
missing): it listens on a free loopback port, forwards to a loopback target, and injects faults
that can be changed while connections are open.

Faults (``FaultProxy.set`` replaces the whole set; ``clear()`` removes them all):

    latency_up_s / latency_down_s   each chunk is held this long (client→target / target→client);
                                    ``latency_s`` sets both. Held chunks are released as soon as
                                    the latency is lowered or cleared; order is always kept.
    black_hole                      connections are accepted and read, nothing is forwarded or
                                    answered (what is read meanwhile is dropped)
    reset                           every open connection, and every new one, is closed with a
                                    TCP RST (SO_LINGER 0)
    bytes_per_s                     each direction of each connection trickles at this rate

Everything is bounded: connections (``max_connections``), bytes held per direction
(``QUEUE_CHUNKS`` × ``CHUNK_BYTES``), and each wait (it ends when its time is up or the faults
change).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from types import TracebackType
from typing import Self

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
CHUNK_BYTES = 64 * 1024
QUEUE_CHUNKS = 64
PACE_SLICE_S = 0.05  # a bandwidth limit sends this many seconds' worth of bytes at a time


@dataclass(frozen=True)
class Faults:
    latency_up_s: float = 0.0
    latency_down_s: float = 0.0
    black_hole: bool = False
    reset: bool = False
    bytes_per_s: float | None = None


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0  # over max_connections
    reset: int = 0  # sockets closed with RST (a proxied connection has two)
    bytes_up: int = 0  # forwarded client→target
    bytes_down: int = 0  # forwarded target→client
    bytes_read: int = 0  # read from either side, forwarded or not
    bytes_dropped: int = 0  # read while black-holed


class FaultProxy:
    """``async with FaultProxy(host, port) as proxy:`` then connect to ``proxy.port``."""

    def __init__(self, target_host: str, target_port: int, *, max_connections: int = 256) -> None:
        if target_host not in LOOPBACK_HOSTS:
            raise ValueError("the fault proxy forwards to loopback only")
        self.target = (target_host, target_port)
        self.max_connections = max_connections
        self.port = 0
        self.stats = ProxyStats()
        self._faults = Faults()
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._links: dict[asyncio.Task[None], list[asyncio.StreamWriter]] = {}

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
    ) -> None:
        if latency_s is not None:
            latency_up_s = latency_down_s = latency_s
        faults = Faults(latency_up_s, latency_down_s, black_hole, reset, bytes_per_s)
        if min(latency_up_s, latency_down_s) < 0 or (bytes_per_s is not None and bytes_per_s <= 0):
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
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
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

    # -- connections -----------------------------------------------------------------------

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._links) >= self.max_connections:
            self.stats.refused += 1
            client_w.transport.abort()
            return
        self.stats.accepted += 1
        if self._faults.reset:
            self._rst(client_w)
            return
        writers = self._links[task] = [client_w]
        try:
            try:
                target_r, target_w = await asyncio.open_connection(*self.target)
            except OSError:
                return  # the target is down: the client sees its connection closed
            writers.append(target_w)
            if self._faults.reset:  # set while we were connecting
                self._rst(client_w)
                self._rst(target_w)
                return
            await asyncio.gather(
                self._pump(client_r, target_w, up=True),
                self._pump(target_r, client_w, up=False),
            )
        finally:
            del self._links[task]
            for writer in writers:
                writer.close()  # after a RST or an abort this changes nothing

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, up: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
        reading = asyncio.create_task(self._read(source, queue))
        try:
            await self._write(queue, sink, up=up)
        except OSError:
            pass  # the other side is gone; closing the link ends the reader too
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    async def _read(
        self, source: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while chunk := await source.read(CHUNK_BYTES):
                self.stats.bytes_read += len(chunk)
                if self._faults.black_hole:
                    self.stats.bytes_dropped += len(chunk)
                    continue
                await queue.put((loop.time(), chunk))
        except OSError:
            pass
        await queue.put(None)

    async def _write(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        sink: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            received_at, chunk = item
            while True:  # hold the chunk for the latency in force *now*
                faults = self._faults
                due = received_at + (faults.latency_up_s if up else faults.latency_down_s)
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
                else:
                    self.stats.bytes_down += piece
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
