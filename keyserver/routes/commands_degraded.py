"""Remote commands when the cloud cannot carry them: the answers that send the phone to Bluetooth.

Two cases, neither ever a 503 (G2):

- the car is not connected (the store is fine): the command is queued as usual, and the answer
  (202 ``queued`` with the ``car_unreachable`` hint) carries the degraded marker
  ``car_unreachable``;
- the store failed while the command was being stored: 202 with the marker
  ``store_unavailable`` and a Bluetooth hint, and a status that says what the cloud did:
  ``not_sent`` when the write certainly did not happen (nothing will reach the car: use the phone
  key over Bluetooth), ``may_be_queued`` when the write may have succeeded (the command may still
  run if the car connects before it expires, so the client must not send it again by another
  path: vehicle-command's MayHaveSucceeded rule, G3).

"Your key is valid until T": T is the end of the caller's key as last known here (None when the
key has no end or none is known); the phone's own wallet knows its token's expiry better.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from keycore import Action
from keyserver import degraded, openapi
from keyserver.grants import OPEN_END
from keyserver.models import KeyRecord

_VIN = {"type": "string", "pattern": "^[A-HJ-NPR-Z0-9]{17}$"}
_TIME = {"type": "integer", "minimum": 0, "description": "Unix seconds"}
_NOT_SENT = (
    "The cloud could not store this command, so it was not sent to the car. Use your phone key "
    "over Bluetooth near the car{until}."
)
_MAY_BE_QUEUED = (
    "The cloud may have stored this command before it failed: it may still run if the car "
    "connects before {expires}. Do not send it again another way; check the car first. Your "
    "phone key works over Bluetooth near the car{until}."
)


def key_valid_until(key: KeyRecord | None) -> int | None:
    return None if key is None or key.not_after >= OPEN_END else key.not_after


def not_sent(
    *,
    command_id: str,
    vin: str,
    action: Action,
    issued_at: int,
    expires_at: int,
    key: KeyRecord | None,
    may_have_succeeded: bool,
) -> web.Response:
    """The answer to a command whose store write failed (module docstring)."""
    valid_until = key_valid_until(key)
    until = "" if valid_until is None else f"; your key is valid until {valid_until}"
    template = _MAY_BE_QUEUED if may_have_succeeded else _NOT_SENT
    message = template.format(until=until, expires=expires_at)
    body = {
        "command_id": command_id,
        "vin": vin,
        "action": action.name.lower(),
        "status": "may_be_queued" if may_have_succeeded else "not_sent",
        "may_have_succeeded": may_have_succeeded,
        "issued_at": issued_at,
        "expires_at": expires_at,
        "hint": {"code": "use_bluetooth", "message": message, "key_valid_until": valid_until},
    }
    return degraded.degraded_json(
        body, reason=degraded.STORE_UNAVAILABLE, detail=message, status=202
    )


def command_answer(view: dict[str, Any], *, status: int) -> web.Response:
    """A command's view; marked ``car_unreachable`` while it waits for a car that is away."""
    hint = view.get("hint")
    if isinstance(hint, dict) and hint.get("code") == degraded.CAR_UNREACHABLE:
        return degraded.degraded_json(
            view, reason=degraded.CAR_UNREACHABLE, detail=str(hint["message"]), status=status
        )
    return web.json_response(view, status=status)


SCHEMAS: dict[str, Any] = {
    "CommandNotSent": openapi.strict_object(
        {
            "command_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"},
            "vin": _VIN,
            "action": {"type": "string"},
            "status": {"enum": ["not_sent", "may_be_queued"]},
            "may_have_succeeded": {
                "type": "boolean",
                "description": "true: the command may still run; never send it again by "
                "another path without checking the car",
            },
            "issued_at": _TIME,
            "expires_at": _TIME,
            "hint": openapi.strict_object(
                {
                    "code": {"const": "use_bluetooth"},
                    "message": {"type": "string"},
                    "key_valid_until": {"type": ["integer", "null"], "minimum": 0},
                }
            ),
            "degraded": {"$ref": "#/components/schemas/Degraded"},
        }
    ),
}
