"""A harness for the phone client tests: a car's Bluetooth side a phone can reach (or not), and
clouds that misbehave in the ways a real one does — a closed port, a server that reads a request
and drops the connection or never answers, and a stub that answers with a chosen status.

The real keyserver and cars on its channel come from tests/vehicle_agent/channel_harness.py.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ble_fallback.car import CarEndpoint
from ble_fallback.link import Link, LinkConditions, LinkPolicy, SimulatedLink
from ble_fallback.protocol import CarEvent, CarState, RequestHandled
from keycore import Action, ChallengeBook, RevocationState, TrustedClock, TrustStore
from tests.keyserver.keys_harness import VIN

HANG_GUARD_S = 20  # not a timing assertion: how long a broken test may hang


class BleCar:
    """A car's BLE side: its state behind a CarEndpoint, reachable over a SimulatedLink while
    ``in_range``. Records every connection and every decision."""

    def __init__(
        self,
        trust: TrustStore,
        *,
        now: int,
        in_range: bool = True,
        conditions: LinkConditions | None = None,
        max_connections: int = 2,
        retry_after: float = 0.25,
    ) -> None:
        mono = asyncio.get_running_loop().time()
        clock = TrustedClock.provisioned(now=now, mono=mono, boot_id="ble-car")
        self.state = CarState(VIN, trust, RevocationState(VIN), clock, ChallengeBook())
        self.events: list[CarEvent] = []
        self.endpoint = CarEndpoint(
            self.state,
            max_connections=max_connections,
            retry_after=retry_after,
            on_event=self.events.append,
            random_bytes=random.Random(1).randbytes,
        )
        self.in_range = in_range
        self.conditions = conditions or LinkConditions()
        self.connections = 0
        self._rng = random.Random(2)
        self.serving: list[asyncio.Task[None]] = []

    async def reach(self, vin: str) -> Link | None:
        """What the phone's radio finds: a connected link to this car, or None."""
        if not self.in_range or vin != self.state.vin:
            return None
        phone, car = SimulatedLink.pair(LinkPolicy(), self.conditions, rng=self._rng)
        self.connections += 1
        self.serving.append(asyncio.create_task(self.endpoint.serve(car)))
        return phone

    @property
    def executed(self) -> list[Action]:
        return [e.action for e in self.events if isinstance(e, RequestHandled) and e.allowed]

    @property
    def decisions(self) -> list[str]:
        return [e.code for e in self.events if isinstance(e, RequestHandled)]

    async def aclose(self) -> None:
        async with asyncio.timeout(HANG_GUARD_S):
            await asyncio.gather(*self.serving)


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class LosingServer:
    """A TCP server that reads a whole HTTP request, then drops the connection (``drop``) or
    never answers (``silent``): the phone's request was sent and its answer is lost."""

    def __init__(self, mode: str) -> None:
        assert mode in ("drop", "silent")
        self.mode = mode
        self.requests: list[bytes] = []
        self.request_seen = asyncio.Event()
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> LosingServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.requests.append(head + await reader.readexactly(length))
            self.request_seen.set()
            if self.mode == "silent":
                await self._release.wait()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def stub_cloud(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[web.Application, Callable[[], int]]:
    """A keyserver stand-in that answers every command POST with ``status`` and ``body``, and
    says how many it got."""
    posts = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal posts
        posts += 1
        await request.read()
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/vehicles/{vin}/commands", answer)
    return app, lambda: posts


def queued_view(command_id: str = "cmd-0000001", *, hint: bool = False) -> dict[str, Any]:
    """A Command as the keyserver shows a freshly queued one."""
    return {
        "command_id": command_id,
        "vin": VIN,
        "action": "unlock",
        "status": "queued",
        "detail": "",
        "issued_at": 1,
        "expires_at": 61,
        "updated_at": 1,
        "hint": {"code": "car_unreachable", "message": "use Bluetooth", "key_valid_until": None}
        if hint
        else None,
    }
