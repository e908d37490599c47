"""The car's audit trail, for its owners: every decision the car took (cloud or Bluetooth), the
documents phones carried to it and the remote commands it ran, as the car uploaded them.

``GET /v1/vehicles/{vin}/audit?since=SEQ`` needs a bearer session of an account that owns or
owned the car (anyone else is told the car does not exist, 404). Each reads only the events the
car recorded during its own tenure (``tenures`` in the answer; keyserver.tenure): after a
transfer the new owner sees nothing from before it, and the seller keeps read access to its
own tenure — its own trips, and those of the keys it shared, which it could read then — for as
long as the trail is kept (``AUDIT_RETENTION_S``), and nothing after it. A car's first owner
reads it from the start (before, nobody held a key to it).

Events come in the car's own order (its outbox sequence), those after ``since`` (0: from the
start), at most ``MAX_PAGE`` at a time; ``more`` says whether another page follows (ask again
with ``since`` = the last ``seq``). A car uploads what it did offline once it is back online, so
the trail of an outage arrives when the car reconnects.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from keyserver import auth, fields, openapi
from keyserver.admission import Criticality
from keyserver.degraded import Behaviour
from keyserver.http import ApiError
from keyserver.models import AUDIT_RETENTION_S
from keyserver.resources import STORE
from keyserver.routing import Route
from keyserver.tenure import CarEvent, tenures_of, within

PATH = "/v1/vehicles/{vin}/audit"
MAX_PAGE = 500
MAX_SEQUENCE = 2**63 - 1
_SINCE = re.compile(r"[0-9]{1,19}")


async def audit(request: web.Request) -> web.Response:
    store = request.app[STORE]
    caller = await auth.require_session(request, store)
    vin = fields.path_vin(request)
    raw_since = request.query.get("since", "0")
    if not _SINCE.fullmatch(raw_since) or int(raw_since) > MAX_SEQUENCE:
        raise ApiError(400, "invalid_since", "since must be a sequence number, 0 for all")
    since = int(raw_since)
    vehicle = await store.vehicle(vin)
    history = [] if vehicle is None else await store.ownership(vin)
    owner_id = None if vehicle is None else vehicle.owner_id
    tenures = tenures_of(caller.account_id, history, owner_id)
    if not tenures:
        raise ApiError(404, "unknown_vehicle", "no such vehicle among yours")
    trail = [CarEvent(e.seq, _parsed(e.event)) for e in await store.audit_events(vin)]
    after = [event for event in within(trail, tenures) if event.seq > since]
    page = after[:MAX_PAGE]
    return web.json_response(
        {
            "vin": vin,
            "tenures": [{"since": t.since, "until": t.until} for t in tenures],
            "events": [{"seq": event.seq, "event": event.event} for event in page],
            "more": len(after) > len(page),
        }
    )


def _parsed(text: str) -> dict[str, Any]:
    """The car's event as the JSON object it sent; anything else is shown as unreadable."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"kind": "unreadable"}


# response bodies

SCHEMAS: dict[str, Any] = {
    "AuditTrail": openapi.strict_object(
        {
            "vin": {"type": "string", "pattern": "^[A-HJ-NPR-Z0-9]{17}$"},
            "tenures": {
                "type": "array",
                "description": "the caller's tenures as the car's owner, oldest first: the "
                "events shown are those the car recorded within one of them, by its own clock "
                "(an event's at; an event without one, by the timed events around it)",
                "items": openapi.strict_object(
                    {
                        "since": {"type": "integer", "minimum": 0},
                        "until": {
                            "type": ["integer", "null"],
                            "description": "null while the caller owns the car",
                        },
                    }
                ),
            },
            "events": {
                "type": "array",
                "maxItems": MAX_PAGE,
                "items": openapi.strict_object(
                    {
                        "seq": {"type": "integer", "minimum": 0},
                        "event": {
                            "type": "object",
                            "description": "the car's event: kind (decision, courier, "
                            "malformed, command, revocations, ...), path (cloud/ble), action, "
                            "code, at, ...",
                        },
                    }
                ),
            },
            "more": {"type": "boolean"},
        }
    )
}

ROUTES = (
    Route(
        "GET", PATH, audit, "getAuditTrail", "audit",
        "The car's audit trail as it uploaded it, within the caller's tenure as its owner",
        description="The current owner reads the events the car recorded since it became "
        "the owner (the first owner: from the start). A former owner keeps read access to "
        "the events of its own tenure, and to nothing after it, for as long as the trail "
        f"is kept ({AUDIT_RETENTION_S // 86_400} days after upload). Anyone else is told "
        "the car does not exist.",
        criticality=Criticality.SHEDDABLE, degraded=Behaviour.TRY_LATER,
        security=[{"bearer": []}],
        parameters=[
            {
                "name": "vin",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-HJ-NPR-Z0-9]{17}$"},
            },
            {
                "name": "since",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
                "description": "only events after this sequence number (default 0: all)",
            },
        ],
        responses={
            "200": openapi.json_response("the events, oldest first", "AuditTrail"),
            "400": openapi.error("invalid_vin, invalid_since"),
            "401": openapi.error("unauthorized: no bearer session, or an expired one"),
            "404": openapi.error(
                "unknown_vehicle: the caller never owned the vehicle (or its tenure ended "
                "more than the retention ago)"
            ),
        },
    ),
)  # fmt: skip
