"""Identity routes: accounts, bearer sessions (login, logout) and the device keys phones enroll.

Enrolling a device takes the account's password again and a proof signed by the new device key
(``PK-Device-Proof``): a stolen bearer session alone cannot add a device of the thief's, which
would then pass the device proofs that sharing, revoking and commands ask for.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Annotated, Any

from aiohttp import web
from pydantic import AfterValidator, Field

from keycore.encoding import b64url_encode
from keyserver import openapi, ratelimit
from keyserver.admission import Criticality
from keyserver.auth import (
    device_id_for,
    new_session_token,
    require_device_proof,
    require_session,
)
from keyserver.bodies import (
    MAX_PASSWORD_CHARS,
    POINT_B64_CHARS,
    Body,
    Email,
    LoginEmail,
    Password,
    PublicKey,
    refuse,
)
from keyserver.clock import request_now
from keyserver.degraded import Behaviour
from keyserver.errors import Conflict
from keyserver.http import ApiError, read_body
from keyserver.models import Account, Device, Session
from keyserver.passwords import (
    DECOY_HASH,
    MIN_PASSWORD_CHARS,
    WeakPassword,
    check_policy,
    hash_password,
    verify_password,
)
from keyserver.resources import CONFIG, STORE
from keyserver.routing import Route

log = logging.getLogger("keyserver.identity")

ACCOUNT_ID_BYTES = 16
MAX_DEVICE_NAME_CHARS = 64


# bodies


def _policy(password: str) -> str:
    try:
        check_policy(password)
    except WeakPassword as error:
        raise refuse("weak_password", str(error)) from None
    return password


class NewAccount(Body):
    email: Email
    password: Annotated[
        str,
        AfterValidator(_policy),  # 400 weak_password
        Field(
            description=f"a password of {MIN_PASSWORD_CHARS} characters or more",
            json_schema_extra={"minLength": MIN_PASSWORD_CHARS, "maxLength": MAX_PASSWORD_CHARS},
        ),
    ]


class Credentials(Body):
    email: LoginEmail
    password: Password


class NewDevice(Body):
    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_DEVICE_NAME_CHARS,
            pattern="^[^\\x00-\\x1f\\x7f]*$",
            description=f"1 to {MAX_DEVICE_NAME_CHARS} characters, no control characters",
        ),
    ]
    public_key: PublicKey
    password: Annotated[Password, Field(min_length=1)]


# handlers


async def register(request: web.Request) -> web.Response:
    """A new account. "E-mail already taken" is answered as such (409 email_taken), which tells
    whoever asks that an address has an account: without a mail round trip (none here) a
    uniform answer would leave the person who forgot their account with no way to learn it. What
    stands against enumeration is the per-address limit, counted on every attempt before the
    store is asked (docs/architecture.md, "Rate limits")."""
    config, store = request.app[CONFIG], request.app[STORE]
    await ratelimit.check(request)
    body = NewAccount.parse(await read_body(request, config.max_body_bytes))
    email, password = body.email, body.password
    if await store.account_by_email(email) is not None:  # before spending a hash on it
        raise _email_taken()
    password_hash = await asyncio.to_thread(hash_password, password)
    account = Account(
        secrets.token_hex(ACCOUNT_ID_BYTES), email, password_hash, request_now(request)
    )
    try:
        await store.create_account(account)
    except Conflict:  # registered by a concurrent request since the check above
        raise _email_taken() from None
    log.info("account registered", extra={"fields": {"account_id": account.account_id}})
    return web.json_response({"account_id": account.account_id}, status=201)


async def me(request: web.Request) -> web.Response:
    store = request.app[STORE]
    caller = await require_session(request, store)
    account = await store.account(caller.account_id)
    if account is None:  # no route deletes accounts yet; if one does, its sessions are void
        raise ApiError(401, "unauthorized", "the session's account no longer exists")
    return web.json_response(
        {
            "account_id": account.account_id,
            "email": account.email,
            "created_at": account.created_at,
        }
    )


async def login(request: web.Request) -> web.Response:
    config, store = request.app[CONFIG], request.app[STORE]
    body = Credentials.parse(await read_body(request, config.max_body_bytes))
    email, password = body.email, body.password
    await ratelimit.check(request, email=email)
    account = await store.account_by_email(email)
    # An unknown e-mail costs one hash too, so the answer's timing does not tell it apart.
    stored = DECOY_HASH if account is None else account.password_hash
    matched = await asyncio.to_thread(verify_password, password, stored)
    if account is None or not matched:
        log.info("login refused", extra={"fields": {"reason": "bad_credentials"}})
        raise _bad_credentials()
    token, token_hash = new_session_token()
    session = Session(token_hash, account.account_id, request_now(request) + config.session_ttl_s)
    await store.put_session(session)
    log.info("session opened", extra={"fields": {"account_id": account.account_id}})
    return web.json_response(
        {"token": token, "account_id": account.account_id, "expires_at": session.expires_at},
        status=201,
    )


async def logout(request: web.Request) -> web.Response:
    store = request.app[STORE]
    caller = await require_session(request, store)
    await ratelimit.check(request, account=caller.account_id)
    await store.delete_session(caller.token_hash)
    log.info("session closed", extra={"fields": {"account_id": caller.account_id}})
    return web.Response(status=204)


async def enroll_device(request: web.Request) -> web.Response:
    config, store = request.app[CONFIG], request.app[STORE]
    caller = await require_session(request, store)
    raw = await read_body(request, config.max_body_bytes)
    body = NewDevice.parse(raw)
    password, name, public_key = body.password, body.name, body.public_key
    # The new key signs this exact request: holding a session is not holding a device key.
    await require_device_proof(
        request, store, caller, raw, max_skew=config.proof_max_skew_s, enrolling=public_key
    )
    # ... and the password again: holding a session is not knowing the password.
    await ratelimit.check(request, account=caller.account_id)
    account = await store.account(caller.account_id)
    stored = DECOY_HASH if account is None else account.password_hash
    if not await asyncio.to_thread(verify_password, password, stored) or account is None:
        raise ApiError(401, "bad_credentials", "the account password is required to add a device")
    device = Device(
        device_id_for(public_key), caller.account_id, public_key, name, request_now(request)
    )
    try:
        await store.add_device(device)
    except Conflict:
        raise ApiError(409, "device_exists", "this device key is already enrolled") from None
    log.info(
        "device enrolled",
        extra={"fields": {"account_id": caller.account_id, "device_id": device.device_id}},
    )
    return web.json_response({"device_id": device.device_id}, status=201)


async def list_devices(request: web.Request) -> web.Response:
    store = request.app[STORE]
    caller = await require_session(request, store)
    devices = await store.devices_of(caller.account_id)
    return web.json_response(
        {
            "devices": [
                {
                    "device_id": device.device_id,
                    "name": device.name,
                    "public_key": b64url_encode(device.public_key),
                    "created_at": device.created_at,
                }
                for device in devices
            ]
        }
    )


# helpers


def _email_taken() -> ApiError:
    return ApiError(409, "email_taken", "an account with this e-mail address exists")


def _bad_credentials() -> ApiError:
    return ApiError(401, "bad_credentials", "wrong e-mail address or password")


# response bodies

_TIMESTAMP = {"type": "integer", "minimum": 0, "description": "Unix seconds"}
_ACCOUNT_ID = {"type": "string", "minLength": 1}
_DEVICE_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_PUBLIC_KEY = {
    "type": "string",
    "pattern": f"^[A-Za-z0-9_-]{{{POINT_B64_CHARS}}}$",
    "description": "unpadded base64url of the 64-byte P-256 point x || y",
}

SCHEMAS: dict[str, Any] = {
    "AccountCreated": openapi.strict_object({"account_id": _ACCOUNT_ID}),
    "Account": openapi.strict_object(
        {"account_id": _ACCOUNT_ID, "email": {"type": "string"}, "created_at": _TIMESTAMP}
    ),
    "SessionOpened": openapi.strict_object(
        {
            "token": {"type": "string", "minLength": 1, "description": "the bearer token"},
            "account_id": _ACCOUNT_ID,
            "expires_at": _TIMESTAMP,
        }
    ),
    "DeviceEnrolled": openapi.strict_object({"device_id": _DEVICE_ID}),
    "Device": openapi.strict_object(
        {
            "device_id": _DEVICE_ID,
            "name": {"type": "string"},
            "public_key": _PUBLIC_KEY,
            "created_at": _TIMESTAMP,
        }
    ),
    "DeviceList": openapi.strict_object(
        {"devices": {"type": "array", "items": {"$ref": "#/components/schemas/Device"}}}
    ),
}

_BAD_BODY = "invalid_json, invalid_body, unknown_field, missing_field or invalid_field"
_BODY_ERRORS = {
    "413": openapi.error("body_too_large: the body is over the configured limit"),
    "415": openapi.error("unsupported_media_type: the body must be application/json"),
}
_SESSION_ERROR = {"401": openapi.error("unauthorized: no bearer session, or an expired one")}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]

_S, _C = Criticality.SHEDDABLE, Criticality.CRITICAL
_TAG = "identity"

ROUTES = (
    Route(
        "POST", "/v1/accounts", register, "createAccount", _TAG, "Register an account",
        criticality=_S, degraded=Behaviour.TRY_LATER,
        rate_limit=ratelimit.RateLimit(address="registrations_per_hour"),
        body=NewAccount,
        responses={
            "201": openapi.json_response("registered", "AccountCreated"),
            "400": openapi.error(f"weak_password, {_BAD_BODY}"),
            **_BODY_ERRORS,
            "409": openapi.error(
                "email_taken: an account with this e-mail address exists. Said as it is, so"
                " a person can learn that they have an account; registration is limited per"
                " client address (429 rate_limited), every attempt counted"
            ),
        },
    ),
    Route(
        "GET", "/v1/accounts/me", me, "getAccount", _TAG, "The caller's account",
        criticality=_S, degraded=Behaviour.STALE, security=_BEARER,
        responses={"200": openapi.json_response("the account", "Account"), **_SESSION_ERROR},
    ),
    Route(
        "POST", "/v1/sessions", login, "createSession", _TAG, "Log in: open a bearer session",
        criticality=_C,  # no session, no refresh
        degraded=Behaviour.TRY_LATER,
        rate_limit=ratelimit.RateLimit(
            email="login_attempts_per_minute", address="login_attempts_per_minute"
        ),
        body=Credentials,
        responses={
            "201": openapi.json_response("the session", "SessionOpened"),
            "400": openapi.error(_BAD_BODY),
            **_BODY_ERRORS,
            "401": openapi.error("bad_credentials: wrong e-mail address or password"),
        },
    ),
    Route(
        "DELETE", "/v1/sessions/current", logout, "deleteSession", _TAG,
        "Log out: end the bearer session",
        criticality=_S, degraded=Behaviour.TRY_LATER, rate_limit=ratelimit.WRITES,
        security=_BEARER,
        responses={"204": {"description": "the session has ended"}, **_SESSION_ERROR},
    ),
    Route(
        "POST", "/v1/devices", enroll_device, "enrollDevice", _TAG,
        "Enroll a device key: the account password again, and the new key signs the request"
        " (PK-Device-Proof)",
        criticality=_S, degraded=Behaviour.TRY_LATER,
        rate_limit=ratelimit.RateLimit(
            account="login_attempts_per_minute", address="address_writes_per_minute"
        ),
        body=NewDevice, security=[{"bearer": [], "deviceProof": []}],
        responses={
            "201": openapi.json_response("enrolled", "DeviceEnrolled"),
            "400": openapi.error(f"bad_device_proof (a malformed header), {_BAD_BODY}"),
            **_BODY_ERRORS,
            "401": openapi.error(
                "unauthorized, bad_credentials, device_proof_required, bad_device_proof,"
                " stale_device_proof or replayed_device_proof"
            ),
            "409": openapi.error("device_exists: this key is already enrolled"),
        },
    ),
    Route(
        "GET", "/v1/devices", list_devices, "listDevices", _TAG,
        "The caller's enrolled devices, oldest first",
        criticality=_S, degraded=Behaviour.STALE, security=_BEARER,
        responses={"200": openapi.json_response("the devices", "DeviceList"), **_SESSION_ERROR},
    ),
)  # fmt: skip
