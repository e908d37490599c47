"""The world's control API (aiohttp, 127.0.0.1 only), used by the stack, the drills and the demo.

    GET  /status     {"warm", "cars_online", "phones", "counts", ...}
    GET  /pending    {"cars_online", "cars", "pending_commands", "pending"}: accepted commands
                     the phones left before they were final and the keyserver does not report
                     final yet (read now)
    GET  /metrics    Prometheus text
    POST /surge      {"factor": 1…100, "seconds": 0…3600}: every rate × factor for that long
    POST /clock      {"vin": VIN | null, "jump_s": ±10 years}: a car's (null: every car's) wall
                     clock jumps; the offsets add up, so a jump back undoes one
    POST /failpoint  {"vin": VIN, "point": "after-execute" | null}: kill that car's agent after
                     the next remote command it executes (null: disarm)
    POST /stop       {} or no body: wind down, write the reconcile event, answer it; the process
                     then exits (this can take the wind-down and settle bounds: ~45 s at most)

A body that is not a JSON object of exactly the known fields with the right types is a 400 with
``{"error": {"code", "message"}}`` and changes nothing; /clock and /failpoint need a warm world
(409 ``not_warm``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lab.errors import LabError
from lab.world.setup import WorldError
from lab.world.world import World

MAX_BODY = 4096
MAX_LISTED = 20  # command ids listed by GET /pending (the count is exact)
MAX_FACTOR, MAX_SURGE_S = 100.0, 3600.0
MAX_JUMP_S = 10 * 365 * 86_400.0
WORLD: web.AppKey[World] = web.AppKey("world", World)


def status(world: World) -> dict[str, Any]:
    cars = world.cars.values()
    return {
        "warm": world.warm,
        "stopping": world.stopping,
        "error": None if world.setup_error is None else str(world.setup_error),
        "cars_online": sum(car.online for car in cars),
        "cars": len(world.cars),
        "phones": len(world.phones),
        "attackers": len(world.attackers),
        "surge": world.pace.factor,
        "elapsed_s": round(time.monotonic() - world.started, 1),
        "counts": {
            **world.ledger.counts(),
            "http": dict(world.tally.total),
            "actuations": sum(car.ble_moves + sum(car.command_moves.values()) for car in cars),
            "agent_crashes": sum(car.crashes for car in cars),
        },
        "vehicles": {
            car.vin: {
                "online": car.online,
                "alive": car.alive,
                "crashes": car.crashes,
                "wall_offset_s": car.wall_offset,
                "failpoint": car.failpoint,
            }
            for car in cars
        },
    }


class BadRequest(LabError):
    """Refused before anything changed; answered as JSON by ``_refusals``."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@web.middleware
async def _refusals(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as refusal:
        body = {"error": {"code": refusal.code, "message": refusal.message}}
        return web.json_response(body, status=refusal.status)


async def _body(request: web.Request, fields: dict[str, Callable[[Any], bool]]) -> dict[str, Any]:
    """The JSON object with only ``fields`` (name -> check of its value), all optional here."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest("too_large", f"a body is at most {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadRequest("too_large", f"a body is at most {MAX_BODY} bytes")
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("not_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("not_object", "the body is a JSON object")
    for name, value in body.items():
        if name not in fields:
            raise BadRequest("unknown_field", f"unknown field {str(name)[:64]!r}")
        if not fields[name](value):
            raise BadRequest("invalid_field", f"bad value for {name!r}")
    return body


def _number(low: float, high: float, *, low_open: bool = False) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value):
            return False
        return (low < value if low_open else low <= value) and value <= high

    return check


def _vin(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 17


def _required(body: dict[str, Any], *names: str) -> None:
    for name in names:
        if name not in body:
            raise BadRequest("missing_field", f"field {name!r} is required")


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(status(request.app[WORLD]))


async def get_pending(request: web.Request) -> web.Response:
    """The cars online, and the accepted commands the phones left before they were final that
    the keyserver does not report final yet (read now): a drill waits for none before /stop."""
    world = request.app[WORLD]
    pending = [] if world.stopping else await world.ledger.pending(world.api)
    return web.json_response(
        {
            "cars_online": sum(car.online for car in world.cars.values()),
            "cars": len(world.cars),
            "pending_commands": len(pending),
            "pending": pending[:MAX_LISTED],
        }
    )


async def get_metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[WORLD].metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def post_surge(request: web.Request) -> web.Response:
    fields = {"factor": _number(1, MAX_FACTOR), "seconds": _number(0, MAX_SURGE_S, low_open=True)}
    body = await _body(request, fields)
    _required(body, "factor", "seconds")
    return web.json_response(request.app[WORLD].surge(body["factor"], body["seconds"]))


async def post_clock(request: web.Request) -> web.Response:
    checks = {"vin": lambda v: v is None or _vin(v), "jump_s": _number(-MAX_JUMP_S, MAX_JUMP_S)}
    body = await _body(request, checks)
    _required(body, "jump_s")
    world = _warm(request)
    return web.json_response(_known(lambda: world.jump_clock(body.get("vin"), body["jump_s"])))


async def post_failpoint(request: web.Request) -> web.Response:
    checks = {"vin": _vin, "point": lambda v: v is None or isinstance(v, str)}
    body = await _body(request, checks)
    _required(body, "vin", "point")
    world = _warm(request)
    return web.json_response(_known(lambda: world.arm_failpoint(body["vin"], body["point"])))


async def post_stop(request: web.Request) -> web.Response:
    await _body(request, {})
    return web.json_response(await request.app[WORLD].stop())


def _warm(request: web.Request) -> World:
    world = request.app[WORLD]
    if not world.warm or world.stopping:
        raise BadRequest(
            "not_warm", "the world is not at work (setting up or stopping)", status=409
        )
    return world


def _known(change: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return change()
    except WorldError as error:  # an unknown car or failpoint: nothing was changed
        raise BadRequest("invalid_field", str(error)) from None


def create_control_app(world: World) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_refusals])
    app[WORLD] = world
    handlers: dict[tuple[str, str], Callable[[web.Request], Awaitable[web.Response]]] = {
        ("GET", "/status"): get_status,
        ("GET", "/pending"): get_pending,
        ("GET", "/metrics"): get_metrics,
        ("POST", "/surge"): post_surge,
        ("POST", "/clock"): post_clock,
        ("POST", "/failpoint"): post_failpoint,
        ("POST", "/stop"): post_stop,
    }
    for (method, path), handler in handlers.items():
        app.router.add_route(method, path, handler)
    return app
