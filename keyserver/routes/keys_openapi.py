"""The documentation pieces the key routes share (keys, sharing, revocation): the response
bodies' component schemas and the responses their route tables name. Request bodies are models
beside each route (their schemas are generated)."""

from __future__ import annotations

from typing import Any

from keyserver import openapi
from keyserver.grants import ACTION_NAMES, SHARED_ROLES

_VIN = {"type": "string", "pattern": "^[A-HJ-NPR-Z0-9]{17}$"}
_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
_TIME = {"type": "integer", "minimum": 0, "maximum": 2**40, "description": "Unix seconds"}
_TIME_OR_NULL = {**_TIME, "type": ["integer", "null"]}
_SEQUENCE = {"type": "integer", "minimum": 0}
_SEQUENCE_OR_NULL = {
    "type": ["integer", "null"],
    "minimum": 0,
    "description": "the vehicle's revocation sequence; null on a repeat answered while the "
    "state store is unavailable",
}
_CHANGED = {
    "type": "boolean",
    "description": "false when the key was in that state already: a repeat changes nothing "
    "(no revocation entry, no new sequence), so retrying is always safe",
}
_ROLES = ["owner", *(r.name.lower() for r in SHARED_ROLES)]
_ACTIONS = {"type": "array", "uniqueItems": True, "items": {"enum": list(ACTION_NAMES)}}
_TOKEN = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_-]+$",
    "description": "unpadded base64url of the COSE_Sign1 key token (docs/protocol.md §5)",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _token_grant(nullable: bool) -> dict[str, Any]:
    token = {**_TOKEN, "type": ["string", "null"]} if nullable else _TOKEN
    times = _TIME_OR_NULL if nullable else _TIME
    return openapi.strict_object(
        {
            "key_id": _ID,
            "role": {"enum": _ROLES},
            "token": token,
            "token_not_before": times,
            "token_expires_at": times,
            "refresh_after": {**_TIME, "description": "when to ask for the next token"},
        }
    )


SCHEMAS: dict[str, Any] = {
    "KeyToken": _token_grant(nullable=False),
    "KeyAccepted": {
        **_token_grant(nullable=True),
        "description": "token is null while the key starts too far ahead for any token; "
        "ask again (refresh) after refresh_after",
    },
    "InvitationCreated": openapi.strict_object({"invitation_id": _ID, "expires_at": _TIME}),
    "VehicleKey": openapi.strict_object(
        {
            "key_id": _ID,
            "vin": _VIN,
            "account_id": {"type": "string"},
            "device_id": {"type": "string"},
            "role": {"enum": _ROLES},
            "entitlements": _ACTIONS,
            "not_before": _TIME,
            "not_after": {**_TIME_OR_NULL, "description": "null: until revoked"},
            "schedule": {"oneOf": [_ref("KeySchedule"), {"type": "null"}]},
            "status": {"enum": ["active", "suspended", "revoked"]},
            "created_at": _TIME,
        }
    ),
    "VehicleKeys": openapi.strict_object(
        {"vin": _VIN, "keys": {"type": "array", "items": _ref("VehicleKey")}}
    ),
    "KeyChange": openapi.strict_object(
        {
            "key": _ref("VehicleKey"),
            "revocation_sequence": _SEQUENCE_OR_NULL,
            "changed": _CHANGED,
        }
    ),
    "HolderRevocation": openapi.strict_object(
        {
            "revoked": {"type": "array", "items": _ID},
            "revocation_sequence": _SEQUENCE_OR_NULL,
            "changed": _CHANGED,
        }
    ),
}

SIGNED: list[dict[str, list[str]]] = [{"bearer": [], "deviceProof": []}]
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
SEQUENCE_HEADERS = {
    "PK-Revocation-Sequence": {
        "description": "the vehicle's current revocation sequence",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
PROOF = "device_proof_required, bad_device_proof, stale_device_proof, replayed_device_proof"
BAD_BODY = "invalid_json, invalid_body, unknown_field, missing_field, invalid_field"
READ = {"401": openapi.error("unauthorized: no bearer session, or an expired one")}
COMMON = {
    "401": openapi.error(f"unauthorized (no bearer session, or an expired one), {PROOF}"),
    "413": openapi.error("body_too_large"),
    "415": openapi.error("unsupported_media_type: the body must be application/json"),
}
TOO_SOON = "too_soon: the device's keys were withdrawn this second (see Retry-After)"
TOO_MANY = (
    "too_many_holders: the car has keys for MAX_VEHICLE_HOLDERS (32) phones, counting phones "
    "whose keys ended within the revocation list's retention (docs/protocol.md §12.1)"
)


def conflict(description: str) -> dict[str, Any]:
    return {**openapi.error(description), "headers": _RETRY_AFTER}


def param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


VIN_PARAM = [param("vin", _VIN)]
KEY_PARAM = [param("key_id", {"type": "string"})]


def key_change_responses(refusals: dict[str, Any]) -> dict[str, Any]:
    """The answers of a change to one key (suspend, resume, revoke)."""
    return {
        "200": openapi.json_response("the key, and the revocation sequence", "KeyChange"),
        "400": openapi.error(f"bad_device_proof (malformed), {BAD_BODY}"),
        "404": openapi.error("unknown_key: no such key the caller may see"),
        **refusals,
        **COMMON,
    }
