"""Sharing a key: the owner's invitation (role, actions, window, weekly schedule), which another
account accepts once, for one of its devices. Who may do what: keyserver.routes.key_access."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from aiohttp import web
from pydantic import BeforeValidator, Field, WithJsonSchema

from keycore import Action, Role
from keycore.token import MAX_TIME
from keyserver import acceptance, openapi, ratelimit
from keyserver.admission import Criticality
from keyserver.bodies import Body, Id
from keyserver.clock import request_now
from keyserver.degraded import Behaviour
from keyserver.errors import InvitationNotFound, Refused, StoreUnavailable
from keyserver.grants import (
    ACTION_NAMES,
    SCHEDULE_EXPECTED,
    SHARED_ROLES,
    KeySchedule,
    grant_of,
)
from keyserver.issuance import first_refresh, new_key_id
from keyserver.models import Invitation
from keyserver.resources import SERVICES
from keyserver.routes import keys_degraded
from keyserver.routes.key_access import (
    ID,
    own_device,
    require_owner,
    signed,
    store_of,
    vehicle_for,
)
from keyserver.routes.keys_openapi import (
    BAD_BODY,
    COMMON,
    SIGNED,
    TOO_MANY,
    TOO_SOON,
    VIN_PARAM,
    conflict,
    param,
)
from keyserver.routing import Route

DAY = 86_400
DEFAULT_INVITATION_TTL_S = 3 * DAY
MIN_INVITATION_TTL_S, MAX_INVITATION_TTL_S = 60, 7 * DAY
_ROLES = {r.name.lower(): r for r in SHARED_ROLES}


def _shared_role(name: object) -> Role:
    if not isinstance(name, str) or name not in _ROLES:
        raise ValueError("not a role one can share")
    return _ROLES[name]


def _actions(value: object) -> frozenset[Action] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not 0 < len(value) <= len(Action):
        raise ValueError("not a list of actions")
    if not all(isinstance(v, str) and v in ACTION_NAMES for v in value):
        raise ValueError("not a list of actions")
    actions = frozenset(Action.parse(v) for v in value)
    if len(actions) != len(value):
        raise ValueError("a repeated action")
    return actions


Time = Annotated[int, Field(ge=0, le=MAX_TIME)]
_TIME_EXPECTED = f"a Unix time in seconds, 0…{MAX_TIME}"


class InvitationRequest(Body):
    """not_before defaults to now; not_after to none (until revoked) except for a guest, which
    needs it, at most 30 days after not_before."""

    role: Annotated[
        Role,
        BeforeValidator(_shared_role),
        WithJsonSchema({"enum": list(_ROLES)}),
        Field(description="one of " + ", ".join(_ROLES)),
    ]
    entitlements: Annotated[
        frozenset[Action] | None,
        BeforeValidator(_actions),
        WithJsonSchema(
            {
                "type": "array",
                "minItems": 1,
                "maxItems": len(Action),
                "uniqueItems": True,
                "items": {"enum": list(ACTION_NAMES)},
            }
        ),
        Field(
            description="a non-empty list of actions without repeats, within the role's "
            "(never manage_keys); default: all of the role's"
        ),
    ] = None
    not_before: Time | None = Field(None, description=_TIME_EXPECTED)
    not_after: Time | None = Field(None, description=_TIME_EXPECTED)
    schedule: KeySchedule | None = Field(None, description=SCHEDULE_EXPECTED)
    invitation_ttl_s: Annotated[
        int,
        Field(
            ge=MIN_INVITATION_TTL_S,
            le=MAX_INVITATION_TTL_S,
            description=f"seconds, {MIN_INVITATION_TTL_S}…{MAX_INVITATION_TTL_S}",
        ),
    ] = DEFAULT_INVITATION_TTL_S


class InvitationAcceptance(Body):
    device_id: Annotated[Id, Field(description="a device id")]


async def invite(request: web.Request) -> web.Response:
    """The owner offers a key (role, actions, window, schedule) that another account accepts."""
    caller, body, _ = await signed(request, InvitationRequest)
    await ratelimit.check(request, account=caller.account_id)
    vehicle, _ = await vehicle_for(request, caller)
    require_owner(vehicle, caller)
    now = request_now(request)
    schedule = None if body.schedule is None else body.schedule.weekly()
    grant = grant_of(
        body.role, body.entitlements, body.not_before, body.not_after, schedule, now=now
    )
    invitation = Invitation(
        invitation_id=secrets.token_urlsafe(16),
        vin=vehicle.vin,
        inviter_id=caller.account_id,
        role=grant.role,
        entitlements=grant.entitlements,
        not_before=grant.not_before,
        not_after=grant.not_after,
        schedule=grant.schedule,
        # no use accepting a key that has ended
        expires_at=min(now + body.invitation_ttl_s, grant.not_after),
    )
    await store_of(request).put_invitation(invitation)
    return web.json_response(
        {"invitation_id": invitation.invitation_id, "expires_at": invitation.expires_at},
        status=201,
    )


async def accept(request: web.Request) -> web.Response:
    """The recipient takes an invitation (once) for one of its devices and gets the key.
    With the store down the acceptance is journaled (keyserver.acceptance)."""
    services, now = request.app[SERVICES], request_now(request)
    store = services.store
    caller, body, _ = await signed(request, InvitationAcceptance)
    await ratelimit.check(request, account=caller.account_id)
    device = await own_device(request, caller, body.device_id)
    invitation_id = request.match_info["invitation_id"]
    if not ID.fullmatch(invitation_id):
        raise InvitationNotFound(acceptance.NOT_FOUND_MESSAGE)
    accepted = acceptance.Acceptance(
        invitation_id, caller.account_id, device.device_id, new_key_id()
    )
    try:
        taken = await store.take_invitation(invitation_id, now=now)
    except StoreUnavailable:  # must not be lost: journaled, decided when the store is back
        return await keys_degraded.pending_acceptance(services, accepted, None, now=now)
    if taken is None:
        raise InvitationNotFound(acceptance.NOT_FOUND_MESSAGE)
    try:
        key = await services.acceptor.grant(taken, accepted, device, now=now)
    except Refused as refused:
        if not isinstance(refused, InvitationNotFound):  # refused before use: may try again
            await store.put_invitation(taken)
        raise
    except StoreUnavailable:  # taken already: the journal keeps the invitation itself
        return await keys_degraded.pending_acceptance(services, accepted, taken, now=now)
    # the cutoff check passed at ``now``, as for an owner key
    issued = services.issuer.issue_token(key, device.public_key, now=now)
    if issued is None:  # the key starts too far ahead for any token yet
        lifetime = services.config.lifetime(key.role)
        view: dict[str, Any] = {
            "key_id": key.key_id,
            "role": key.role.name.lower(),
            "token": None,
            "token_not_before": None,
            "token_expires_at": None,
            "refresh_after": first_refresh(key, now=now, lifetime=lifetime),
        }
    else:
        view = keys_degraded.token_view(key, issued)
    return web.json_response(view, status=201)


_TAG = "sharing"

ROUTES = (
    Route(
        "POST", "/v1/vehicles/{vin}/invitations", invite, "createInvitation", _TAG,
        "The owner shares a key: an invitation another account accepts once",
        criticality=Criticality.SHEDDABLE, degraded=Behaviour.TRY_LATER,
        rate_limit=ratelimit.WRITES, body=InvitationRequest,
        security=SIGNED, parameters=VIN_PARAM,
        responses={
            "201": openapi.json_response("the invitation", "InvitationCreated"),
            "400": openapi.error(
                f"invalid_vin, bad_device_proof (malformed), entitlement_not_allowed, "
                f"{BAD_BODY}"
            ),
            "403": openapi.error("not_owner (only owners share), unknown_device"),
            "404": openapi.error("unknown_vehicle: no such vehicle among the caller's"),
            **COMMON,
        },
    ),
    Route(
        "POST", "/v1/invitations/{invitation_id}/accept", accept, "acceptInvitation", _TAG,
        "Accept an invitation for one of the caller's devices (single use)",
        criticality=Criticality.CRITICAL,  # a key handed over now
        degraded=Behaviour.JOURNALED, rate_limit=ratelimit.WRITES,
        body=InvitationAcceptance, security=SIGNED,
        parameters=[param("invitation_id", {"type": "string"})],
        responses={
            "201": openapi.json_response("the key and its first token", "KeyAccepted"),
            "400": openapi.error(f"bad_device_proof (malformed), {BAD_BODY}"),
            "403": openapi.error("own_invitation, unknown_device"),
            "404": openapi.error("invitation_not_found: unknown, used or expired"),
            "409": conflict(f"device_has_key, {TOO_SOON}, {TOO_MANY}"),
            "429": openapi.error(
                "too_many_pending: the store is down and this account has "
                "MAX_PENDING_ACCEPTANCES (4) other acceptances waiting in the journal"
            ),
            **COMMON,
        },
    ),
)  # fmt: skip
