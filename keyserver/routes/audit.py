"""The car's audit trail, for its owner: every decision the car took (cloud or Bluetooth), the
documents phones carried to it and the remote commands it ran, as the car uploaded them.

``GET /v1/vehicles/{vin}/audit?since=SEQ`` needs a bearer session of the car's owner (anyone else
is told the car does not exist, 404). Events come in the car's own order (its outbox sequence),
those after ``since`` (0: from the start), at most ``MAX_PAGE`` at a time; ``more`` says whether
another page follows (ask again with ``since`` = the last ``seq``). A car uploads what it did
offline once it is back online, so the trail of an outage arrives when the car reconnects.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from keyserver import auth, fields, openapi
from keyserver.app import STORE
from keyserver.http import ApiError

PATH = "/v1/vehicles/{vin}/audit"
MAX_PAGE = 500
MAX_SEQUENCE = 2**63 - 1
_SINCE = re.compile(r"[0-9]{1,19}")


def setup(app: web.Application) -> None:
    app.router.add_get(PATH, audit)


async def audit(request: web.Request) -> web.Response:
    store = request.app[STORE]
    caller = await auth.require_session(request, store)
    vin = fields.path_vin(request)
    raw_since = request.query.get("since", "0")
    if not _SINCE.fullmatch(raw_since) or int(raw_since) > MAX_SEQUENCE:
        raise ApiError(400, "invalid_since", "since must be a sequence number, 0 for all")
    since = int(raw_since)
    vehicle = await store.vehicle(vin)
    if vehicle is None or vehicle.owner_id != caller.account_id:
        raise ApiError(404, "unknown_vehicle", "no such vehicle among yours")
    after = [event for event in await store.audit_events(vin) if event.seq > since]
    page = after[:MAX_PAGE]
    events = [{"seq": event.seq, "event": _parsed(event.event)} for event in page]
    return web.json_response({"vin": vin, "events": events, "more": len(after) > len(page)})


def _parsed(text: str) -> dict[str, Any]:
    """The car's event as the JSON object it sent; anything else is shown as unreadable."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"kind": "unreadable"}


# OpenAPI fragments

SCHEMAS: dict[str, Any] = {
    "AuditTrail": openapi.strict_object(
        {
            "vin": {"type": "string", "pattern": "^[A-HJ-NPR-Z0-9]{17}$"},
            "events": {
                "type": "array",
                "maxItems": MAX_PAGE,
                "items": openapi.strict_object(
                    {
                        "seq": {"type": "integer", "minimum": 0},
                        "event": {
                            "type": "object",
                            "description": "the car's event: kind (decision, courier, command, "
                            "revocations, ...), path (cloud/ble), action, code, at, ...",
                        },
                    }
                ),
            },
            "more": {"type": "boolean"},
        }
    )
}

PATHS: dict[str, Any] = {
    PATH: {
        "get": {
            "summary": "The car's audit trail as it uploaded it (the owner)",
            "security": [{"bearer": []}],
            "parameters": [
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
            "responses": {
                "200": openapi.json_response("the events, oldest first", "AuditTrail"),
                "400": openapi.error("invalid_vin, invalid_since"),
                "401": openapi.error("unauthorized: no bearer session, or an expired one"),
                "404": openapi.error("unknown_vehicle: no such vehicle among the caller's"),
            },
        }
    }
}
