"""Remote commands: a phone asks the car to unlock, lock, start, open the trunk or run the climate.

``POST /v1/vehicles/{vin}/commands {action, idempotency_key}`` needs a bearer session and a device
proof. The owner may send any of these actions; anyone else needs an active key on the car, within
its window and schedule, whose role and entitlements allow the action (403 ``not_entitled``).
The keyserver signs the command (keycore.sign_command: id, VIN, action, issued_at, expires_at =
issued_at + ``command_ttl_s``) with the active issuer key, stores it as ``queued`` and pushes it to
the car if the car is on the channel. ``(account, idempotency_key)`` names one command for a day
(``COMMAND_RETENTION_S`` after it expires): asking again returns the same command, never a second
one (200 instead of 202; 409 if the repeat asks for another car or action).

A car that is not connected is not an error: the answer is still 202 ``queued``, with a ``hint``
that the car cannot be reached from the cloud right now and that the phone's own key works over
Bluetooth (until ``key_valid_until``, when the key has an end). The command waits for the car's
next connection, until it expires.

``GET /v1/commands/{command_id}`` (the requester, or the car's owner) shows the state:
``queued → delivered → executed | failed``, or ``expired``. Expiry is judged when the command is
read: a queued or delivered command past ``expires_at`` reads as expired (``detail`` says whether
the car ever had it) and is never sent again; a result the car reports later still replaces it.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Annotated, Any

from aiohttp import web
from pydantic import BeforeValidator, Field, WithJsonSchema

from keycore import Action
from keycore.command import RemoteCommand, sign_command
from keycore.roles import allows, from_mask
from keyserver import auth, fields, openapi, ratelimit
from keyserver.admission import Criticality
from keyserver.bodies import VIN_PATTERN, Body
from keyserver.clock import request_now
from keyserver.degraded import Behaviour
from keyserver.errors import StoreUnavailable
from keyserver.grants import OPEN_END, load_schedule
from keyserver.http import ApiError, read_body
from keyserver.models import CommandRecord, CommandStatus, KeyRecord, KeyStatus
from keyserver.resources import CONFIG, HUB, KEYRING, METRICS, STORE
from keyserver.routes import commands_degraded
from keyserver.routing import Route

COMMAND_ID_BYTES = 16
#: What a phone may ask of a car remotely: every actuation (managing keys is not a command).
ACTIONS = {a.name.lower(): a for a in Action if a is not Action.MANAGE_KEYS}
_COMMAND_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_UNFINISHED = (CommandStatus.QUEUED, CommandStatus.DELIVERED)


def _action(name: object) -> Action:
    if not isinstance(name, str) or name not in ACTIONS:
        raise ValueError("not a remote action")
    return ACTIONS[name]


class CommandRequest(Body):
    action: Annotated[
        Action,
        BeforeValidator(_action),
        WithJsonSchema({"enum": list(ACTIONS)}),
        Field(description="one of " + ", ".join(ACTIONS)),
    ]
    idempotency_key: Annotated[
        str,
        Field(
            pattern="^[A-Za-z0-9_-]{8,64}$",
            description="8 to 64 characters of [A-Za-z0-9_-]: the same key (per account, for a"
            " day) never makes a second command",
        ),
    ]


async def create_command(request: web.Request) -> web.Response:
    app = request.app
    config, store = app[CONFIG], app[STORE]
    caller = await auth.require_session(request, store)
    vin = fields.path_vin(request)
    raw = await read_body(request, config.max_body_bytes)
    body = CommandRequest.parse(raw)
    action, idempotency_key = body.action, body.idempotency_key
    # the fields are checked before the proof: bad input does not even spend a nonce
    device = await auth.require_device_proof(
        request, store, caller, raw, max_skew=config.proof_max_skew_s
    )
    assert device is not None  # not an enrolment
    await ratelimit.check(request, account=caller.account_id)
    vehicle = await store.vehicle(vin)
    keys = [] if vehicle is None else await store.keys_of_vehicle(vin)
    mine = [k for k in keys if k.account_id == caller.account_id]
    if vehicle is None or (vehicle.owner_id != caller.account_id and not mine):
        raise ApiError(404, "unknown_vehicle", "no such vehicle among the caller's")
    now = request_now(request)
    entitled = [k for k in mine if entitles(k, action, now)]
    if vehicle.owner_id != caller.account_id and not entitled:
        raise ApiError(403, "not_entitled", f"no active key of yours allows {action.name.lower()}")
    command_id = secrets.token_urlsafe(COMMAND_ID_BYTES)
    expires_at = now + config.command_ttl_s
    document = sign_command(
        app[KEYRING].ring.active.signer,
        RemoteCommand(command_id, vin, action, now, expires_at, _milliseconds(now)),
    )
    own = [k for k in mine if k.device_id == device.device_id] or entitled or mine
    try:
        stored, created = await store.put_command(
            CommandRecord(
                command_id=command_id, vin=vin, account_id=caller.account_id,
                idempotency_key=idempotency_key, action=action, issued_at=now,
                expires_at=expires_at, status=CommandStatus.QUEUED, detail="", updated_at=now,
                document=document,
            )
        )  # fmt: skip
    except StoreUnavailable as error:  # never a 503: tell the phone to use Bluetooth
        app[METRICS].commands.labels("not_sent").inc()
        return commands_degraded.not_sent(
            command_id=command_id, vin=vin, action=action, issued_at=now,
            expires_at=expires_at, key=own[0] if own else None,
            may_have_succeeded=error.may_have_succeeded,
        )  # fmt: skip
    if not created and (stored.vin != vin or stored.action is not action):
        raise ApiError(409, "idempotency_key_reused", "this idempotency key named another command")
    app[METRICS].commands.labels("created" if created else "repeated").inc()
    hub = app[HUB]
    connected = (
        hub.command(vin, stored.command_id, stored.document) if created else hub.connected(vin)
    ) or await hub.elsewhere(vin)  # another instance holds the car's channel: sent from there
    view = _view(stored, now=now, connected=connected, key=own[0] if own else None)
    return commands_degraded.command_answer(view, status=202 if created else 200)


async def show_command(request: web.Request) -> web.Response:
    app = request.app
    store = app[STORE]
    caller = await auth.require_session(request, store)
    command_id = request.match_info["command_id"]
    command = await store.command(command_id) if _COMMAND_ID.fullmatch(command_id) else None
    if command is not None and command.account_id != caller.account_id:
        vehicle = await store.vehicle(command.vin)
        if vehicle is None or vehicle.owner_id != caller.account_id:
            command = None
    if command is None:
        raise ApiError(404, "unknown_command", "no such command among the caller's")
    key = None
    if command.account_id == caller.account_id:
        live = [
            k
            for k in await store.keys_of_vehicle(command.vin)
            if k.account_id == caller.account_id and k.status is KeyStatus.ACTIVE
        ]
        key = live[0] if live else None
    hub = app[HUB]
    connected = hub.connected(command.vin) or (
        command.status is CommandStatus.QUEUED and await hub.elsewhere(command.vin)
    )
    view = _view(command, now=request_now(request), connected=connected, key=key)
    return commands_degraded.command_answer(view, status=200)


def entitles(key: KeyRecord, action: Action, now: int) -> bool:
    """The key is active now, in its window and schedule, and its role and mask allow ``action``."""
    if key.status is not KeyStatus.ACTIVE or not key.not_before <= now < key.not_after:
        return False
    if not allows(key.role, from_mask(key.entitlements), action):
        return False
    schedule = load_schedule(key.schedule)
    return schedule is None or schedule.allows(now)


def _view(
    command: CommandRecord, *, now: int, connected: bool, key: KeyRecord | None
) -> dict[str, Any]:
    status, detail, updated_at = command.status, command.detail, command.updated_at
    if status in _UNFINISHED and now >= command.expires_at:
        detail = (
            "expired before the car received it"
            if status is CommandStatus.QUEUED
            else "the car received it but reported no result before it expired"
        )
        status, updated_at = CommandStatus.EXPIRED, command.expires_at
    hint = None
    if status is CommandStatus.QUEUED and not connected:
        hint = {
            "code": "car_unreachable",
            "message": "The car is not reachable from the cloud right now. Use your phone key "
            "over Bluetooth near the car; this command stays queued until it expires and runs "
            "only if the car connects before then.",
            "key_valid_until": None if key is None or key.not_after >= OPEN_END else key.not_after,
        }
    return {
        "command_id": command.command_id,
        "vin": command.vin,
        "action": command.action.name.lower(),
        "status": status.value,
        "detail": detail,
        "issued_at": command.issued_at,
        "expires_at": command.expires_at,
        "updated_at": updated_at,
        "hint": hint,
    }


# response bodies

_VIN = {"type": "string", "pattern": VIN_PATTERN}
_TIME = {"type": "integer", "minimum": 0, "description": "Unix seconds"}
_PROOF = "device_proof_required, bad_device_proof, stale_device_proof, replayed_device_proof"
_BAD_BODY = "invalid_json, invalid_body, unknown_field, missing_field, invalid_field"

SCHEMAS: dict[str, Any] = {
    **commands_degraded.SCHEMAS,
    "CommandHint": openapi.strict_object(
        {
            "code": {"const": "car_unreachable"},
            "message": {"type": "string"},
            "key_valid_until": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "when the caller's key ends (null: no end, or no key)",
            },
        }
    ),
    "Command": openapi.strict_object(
        {
            "command_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"},
            "vin": _VIN,
            "action": {"enum": list(ACTIONS)},
            "status": {"enum": [s.value for s in CommandStatus]},
            "detail": {"type": "string"},
            "issued_at": _TIME,
            "expires_at": _TIME,
            "updated_at": _TIME,
            "hint": {
                "oneOf": [{"$ref": "#/components/schemas/CommandHint"}, {"type": "null"}],
                "description": "set while the command is queued and the car is not connected",
            },
        }
    ),
}

ROUTES = (
    Route(
        "POST", "/v1/vehicles/{vin}/commands", create_command, "createCommand", "commands",
        "Ask the car to unlock, lock, start, open the trunk or run the climate",
        description="Needs the owner, or an active key whose role and entitlements "
        "allow the action now. The command is signed, queued, and pushed to the car if it "
        "is connected; it expires after command_ttl_s (60 s by default).",
        criticality=Criticality.CRITICAL, degraded=Behaviour.NOT_SENT,
        rate_limit=ratelimit.WRITES, body=CommandRequest,
        security=[{"bearer": [], "deviceProof": []}],
        parameters=[{"name": "vin", "in": "path", "required": True, "schema": _VIN}],
        responses={
            "202": {
                "description": "queued (with a hint and the car_unreachable marker when the "
                "car is not connected); or, with the state store down, not_sent / "
                "may_be_queued with a Bluetooth hint",
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/Command"},
                                {"$ref": "#/components/schemas/CommandNotSent"},
                            ]
                        }
                    }
                },
            },
            "200": openapi.json_response(
                "this idempotency key's command, as it stands", "Command"
            ),
            "400": openapi.error(f"invalid_vin, bad_device_proof (malformed), {_BAD_BODY}"),
            "401": openapi.error(f"unauthorized (no bearer session), {_PROOF}"),
            "403": openapi.error("not_entitled, unknown_device"),
            "404": openapi.error("unknown_vehicle: no such vehicle among the caller's"),
            "409": openapi.error("idempotency_key_reused: the key named another command"),
            "413": openapi.error("body_too_large"),
            "415": openapi.error("unsupported_media_type: the body must be application/json"),
        },
    ),
    Route(
        "GET", "/v1/commands/{command_id}", show_command, "getCommand", "commands",
        "A remote command's state, for its requester or the car's owner",
        criticality=Criticality.CRITICAL,  # the phone following its command to the end
        degraded=Behaviour.STALE, security=[{"bearer": []}],
        parameters=[
            {"name": "command_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        responses={
            "200": openapi.json_response("the command", "Command"),
            "401": openapi.error("unauthorized: no bearer session, or an expired one"),
            "404": openapi.error("unknown_command: no such command among the caller's"),
        },
    ),
)  # fmt: skip


def _milliseconds(now: int) -> int:
    """The milliseconds within the second ``now`` (0 when the clock in use is not the wall's)."""
    precise = time.time()
    return int((precise - now) * 1000) if int(precise) == now else 0
