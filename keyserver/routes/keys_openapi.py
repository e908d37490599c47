"""The OpenAPI fragments of the key routes (keyserver.routes.keys): schemas and path items."""

from __future__ import annotations

from typing import Any

from keyserver import openapi
from keyserver.grants import ACTION_NAMES, DAY_NAMES, MAX_GUEST_WINDOW_S, SHARED_ROLES
from keyserver.issuance import MAX_TOKEN_LIFETIME

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
_CLOCK = "^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
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
    "KeyIssueRequest": openapi.strict_object({"device_id": _ID}),
    "KeyToken": _token_grant(nullable=False),
    "KeyAccepted": {
        **_token_grant(nullable=True),
        "description": "token is null while the key starts too far ahead for any token; "
        "ask again (refresh) after refresh_after",
    },
    "KeySchedule": openapi.strict_object(
        {
            "utc_offset": {"type": "integer", "minimum": -840, "maximum": 840},
            "windows": {
                "type": "array",
                "minItems": 1,
                "maxItems": 16,
                "items": _ref("KeyScheduleWindow"),
            },
        }
    ),
    "KeyScheduleWindow": openapi.strict_object(
        {
            "days": {
                "type": "array",
                "minItems": 1,
                "maxItems": 7,
                "uniqueItems": True,
                "items": {"enum": list(DAY_NAMES)},
            },
            "start": {"type": "string", "pattern": _CLOCK},
            "end": {"type": "string", "pattern": _CLOCK, "description": "later than start"},
        }
    ),
    "InvitationRequest": {
        "type": "object",
        "required": ["role"],
        "additionalProperties": False,
        "description": "not_before defaults to now; not_after to none (until revoked) except "
        f"for a guest, which needs it, at most {MAX_GUEST_WINDOW_S} s after not_before",
        "properties": {
            "role": {"enum": [r.name.lower() for r in SHARED_ROLES]},
            "entitlements": {
                **_ACTIONS,
                "minItems": 1,
                "description": "within the role's actions (never manage_keys); default: all",
            },
            "not_before": _TIME_OR_NULL,
            "not_after": _TIME_OR_NULL,
            "schedule": {"oneOf": [_ref("KeySchedule"), {"type": "null"}]},
            "invitation_ttl_s": {"type": "integer", "minimum": 60, "maximum": 7 * 86_400},
        },
    },
    "InvitationCreated": openapi.strict_object({"invitation_id": _ID, "expires_at": _TIME}),
    "InvitationAcceptance": openapi.strict_object({"device_id": _ID}),
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
    "HolderRevocationRequest": {
        "oneOf": [
            openapi.strict_object({"device_id": _ID}),
            openapi.strict_object({"account_id": {"type": "string", "minLength": 1}}),
        ]
    },
    "HolderRevocation": openapi.strict_object(
        {
            "revoked": {"type": "array", "items": _ID},
            "revocation_sequence": _SEQUENCE_OR_NULL,
            "changed": _CHANGED,
        }
    ),
    "EmptyRequest": {"type": "object", "additionalProperties": False, "maxProperties": 0},
    "RefreshRequest": {
        "type": "object",
        "additionalProperties": False,
        "description": "token: the phone's current token for this key. Ignored while the state "
        "store answers; while it is down, a fresh token (lifetime at most "
        "degraded_token_lifetime_s) is signed on its strength (keyserver.routes.keys_degraded)",
        "properties": {"token": {**_TOKEN, "maxLength": 2048}},
    },
}

_SIGNED: list[dict[str, list[str]]] = [{"bearer": [], "deviceProof": []}]
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
_SEQUENCE_HEADER = {
    "PK-Revocation-Sequence": {
        "description": "the vehicle's current revocation sequence",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_PROOF = "device_proof_required, bad_device_proof, stale_device_proof, replayed_device_proof"
_BAD_BODY = "invalid_json, invalid_body, unknown_field, missing_field, invalid_field"
_READ = {"401": openapi.error("unauthorized: no bearer session, or an expired one")}
_COMMON = {
    "401": openapi.error(f"unauthorized (no bearer session, or an expired one), {_PROOF}"),
    "413": openapi.error("body_too_large"),
    "415": openapi.error("unsupported_media_type: the body must be application/json"),
}
_TOO_SOON = "too_soon: the device's keys were withdrawn this second (see Retry-After)"
_TOO_MANY = (
    "too_many_holders: the car has keys for MAX_VEHICLE_HOLDERS (32) phones, counting phones "
    "whose keys ended within the revocation list's retention (docs/protocol.md §12.1)"
)


def _conflict(description: str) -> dict[str, Any]:
    return {**openapi.error(description), "headers": _RETRY_AFTER}


def _param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


_VIN_PARAM = [_param("vin", _VIN)]
_KEY_PARAM = [_param("key_id", {"type": "string"})]
_NO_BODY = {
    "required": False,
    "content": {"application/json": {"schema": _ref("EmptyRequest")}},
}


def _key_operation(summary: str, refusals: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": _SIGNED,
            "parameters": _KEY_PARAM,
            "requestBody": _NO_BODY,
            "responses": {
                "200": openapi.json_response("the key, and the revocation sequence", "KeyChange"),
                "400": openapi.error(f"bad_device_proof (malformed), {_BAD_BODY}"),
                "404": openapi.error("unknown_key: no such key the caller may see"),
                **refusals,
                **_COMMON,
            },
        }
    }


PATHS: dict[str, Any] = {
    "/v1/vehicles/{vin}/keys": {
        "post": {
            "summary": "The owner issues an owner key to one of its own devices",
            "security": _SIGNED,
            "parameters": _VIN_PARAM,
            "requestBody": openapi.json_body("KeyIssueRequest"),
            "responses": {
                "201": openapi.json_response("the key and its first token", "KeyToken"),
                "400": openapi.error(f"invalid_vin, bad_device_proof (malformed), {_BAD_BODY}"),
                "403": openapi.error("not_owner, unknown_device"),
                "404": openapi.error("unknown_vehicle: no such vehicle among the caller's"),
                "409": _conflict(f"device_has_key, {_TOO_SOON}, {_TOO_MANY}"),
                **_COMMON,
            },
        },
        "get": {
            "summary": "The vehicle's keys: all for the owner, its own for a holder",
            "security": _BEARER,
            "parameters": _VIN_PARAM,
            "responses": {
                "200": openapi.json_response("the keys, oldest first", "VehicleKeys"),
                "400": openapi.error("invalid_vin"),
                "404": openapi.error("unknown_vehicle: no such vehicle among the caller's"),
                **_READ,
            },
        },
    },
    "/v1/vehicles/{vin}/invitations": {
        "post": {
            "summary": "The owner shares a key: an invitation another account accepts once",
            "security": _SIGNED,
            "parameters": _VIN_PARAM,
            "requestBody": openapi.json_body("InvitationRequest"),
            "responses": {
                "201": openapi.json_response("the invitation", "InvitationCreated"),
                "400": openapi.error(
                    f"invalid_vin, bad_device_proof (malformed), entitlement_not_allowed, "
                    f"{_BAD_BODY}"
                ),
                "403": openapi.error("not_owner (only owners share), unknown_device"),
                "404": openapi.error("unknown_vehicle: no such vehicle among the caller's"),
                **_COMMON,
            },
        }
    },
    "/v1/invitations/{invitation_id}/accept": {
        "post": {
            "summary": "Accept an invitation for one of the caller's devices (single use)",
            "security": _SIGNED,
            "parameters": [_param("invitation_id", {"type": "string"})],
            "requestBody": openapi.json_body("InvitationAcceptance"),
            "responses": {
                "201": openapi.json_response("the key and its first token", "KeyAccepted"),
                "400": openapi.error(f"bad_device_proof (malformed), {_BAD_BODY}"),
                "403": openapi.error("own_invitation, unknown_device"),
                "404": openapi.error("invitation_not_found: unknown, used or expired"),
                "409": _conflict(f"device_has_key, {_TOO_SOON}, {_TOO_MANY}"),
                "429": openapi.error(
                    "too_many_pending: the store is down and this account has "
                    "MAX_PENDING_ACCEPTANCES (4) other acceptances waiting in the journal"
                ),
                **_COMMON,
            },
        }
    },
    "/v1/keys/{key_id}/suspend": _key_operation(
        "The owner suspends a key (lost phone): its current tokens die on cars",
        {
            "403": openapi.error("not_owner, unknown_device"),
            "409": openapi.error("key_revoked"),
        },
    ),
    "/v1/keys/{key_id}/resume": _key_operation(
        "The owner resumes a suspended key; tokens signed from now on work",
        {
            "403": openapi.error("not_owner, unknown_device"),
            "409": _conflict(f"key_revoked, {_TOO_SOON}"),
        },
    ),
    "/v1/keys/{key_id}/revoke": _key_operation(
        "Revoke a key for good: the owner any key, a holder its own",
        {"403": openapi.error("not_owner, unknown_device")},
    ),
    "/v1/keys/{key_id}/token": {
        "post": {
            "summary": "Refresh: a fresh token for the key's own device (refresh-ahead)",
            "security": _SIGNED,
            "parameters": _KEY_PARAM,
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": _ref("RefreshRequest")}},
            },
            "responses": {
                "200": openapi.json_response("the token", "KeyToken"),
                "400": openapi.error(f"bad_device_proof (malformed), {_BAD_BODY}"),
                "403": openapi.error(
                    "wrong_device, key_suspended, key_revoked, key_not_valid_now, unknown_device;"
                    " invalid_token (store down: the token presented is not ours)"
                ),
                "404": openapi.error("unknown_key: no such key among the caller's"),
                **_COMMON,
            },
        }
    },
    "/v1/vehicles/{vin}/revocations": {
        "post": {
            "summary": "The owner revokes every key of one device or of one account",
            "security": _SIGNED,
            "parameters": _VIN_PARAM,
            "requestBody": openapi.json_body("HolderRevocationRequest"),
            "responses": {
                "200": openapi.json_response("the keys revoked", "HolderRevocation"),
                "400": openapi.error(f"invalid_vin, bad_device_proof (malformed), {_BAD_BODY}"),
                "403": openapi.error("not_owner, unknown_device"),
                "404": openapi.error("unknown_vehicle, unknown_key: the holder has no keys here"),
                **_COMMON,
            },
        },
        "get": {
            "summary": "The vehicle's signed revocation list (docs/protocol.md §12)",
            "description": "since=0 (default): the full list; since=N: the delta after N. "
            f"Holder entries last {MAX_TOKEN_LIFETIME} s. For the owner and for holders of an "
            "active key, who carry lists to cars; and for the car itself, with a vehicle proof "
            "(PK-Device-Proof, device id = the VIN) instead of a bearer session.",
            "security": [*_BEARER, {"deviceProof": []}],
            "parameters": [
                *_VIN_PARAM,
                {
                    "name": "since",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                },
            ],
            "responses": {
                "200": {
                    "description": "the signed list (COSE_Sign1, typ pk.rev)",
                    "headers": _SEQUENCE_HEADER,
                    "content": {
                        "application/cbor": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
                "204": {
                    "description": "nothing ever revoked (sequence 0), or nothing after since",
                    "headers": _SEQUENCE_HEADER,
                },
                "400": openapi.error(
                    "invalid_vin, invalid_since, since_ahead, bad_device_proof (malformed)"
                ),
                "404": openapi.error("unknown_vehicle: no such vehicle among the caller's"),
                **_READ,
                "401": openapi.error(
                    "unauthorized (no bearer session, or an expired one); for a car:"
                    " bad_device_proof, stale_device_proof, replayed_device_proof"
                ),
            },
        },
    },
}
