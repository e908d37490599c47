"""Accepting an invitation (a shared key): the one procedure of the route and of the journal's
replay.

With the store up, ``POST /v1/invitations/{id}/accept`` takes the invitation (single use) and
``grant`` checks it and stores the key. With the store down, nothing about an invitation can be
checked here — its id is opaque and the record is in the store — so the route checks what it can
(the caller's session, device and proof, as last known here; the id's format) and journals the
acceptance: 202 ``accepted_pending`` with the ``key_id`` the key will have (the phone fetches its
token from ``POST /v1/keys/{key_id}/token`` once the store is back). If the store fails after the
invitation was taken, the journaled acceptance carries the invitation itself, so it is not lost.

``replay`` applies a journaled acceptance (keyserver.replay calls it in journal order). The
invitation counts as it stood when the phone accepted it: taken as of ``accepted_at``. Refusals
are recorded as the operation's outcome and change nothing: ``invitation_not_found`` (unknown,
used, expired, or its inviter no longer owns the car), ``own_invitation``, ``unknown_device``,
``device_has_key`` — an invitation refused after it was taken goes back to the store, as in the
route. ``too_soon`` (the device's keys were withdrawn in the same second, e.g. by the operation
just before) is not a refusal: the replay stops there and tries again (``NotYet``). Replaying an
acceptance twice creates one key: the key id is fixed when the acceptance is journaled.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from keycore import Role
from keyserver import auth
from keyserver.app import STORE
from keyserver.http import ApiError
from keyserver.issuance import create_key
from keyserver.journal import DONE, REFUSED, Journal, NotYet, Operation
from keyserver.models import Device, Invitation, KeyRecord, KeyStatus

ACCEPT = "accept"
NOT_FOUND = "invitation_not_found"
#: Acceptances one account may have waiting in a process's journal. While the store is down an
#: invitation id cannot be checked, so without this any account could journal made-up ones
#: without end, in front of the revocations accepted after them (G7). A phone accepts one
#: invitation at a time; a repeat of a waiting one is answered with it, not counted again.
MAX_PENDING_ACCEPTANCES = 4


@dataclass(frozen=True)
class Acceptance:
    """Who accepts which invitation for which device, and the id the new key gets."""

    invitation_id: str
    account_id: str
    device_id: str
    key_id: str

    def payload(self, taken: Invitation | None) -> dict[str, Any]:
        return {
            "invitation_id": self.invitation_id,
            "account_id": self.account_id,
            "device_id": self.device_id,
            "key_id": self.key_id,
            "invitation": None if taken is None else invitation_json(taken),
        }


async def grant(
    app: web.Application, invitation: Invitation, acceptance: Acceptance, device: Device
) -> KeyRecord:
    """Check a taken invitation against the store and store the key it grants. Raises ApiError
    (404 invitation_not_found, 403 own_invitation, 409 device_has_key or too_soon) or
    StoreUnavailable; it never puts the invitation back (the caller decides)."""
    store = app[STORE]
    vehicle = await store.vehicle(invitation.vin)
    # An invitation dies with its inviter's ownership: the new owner never granted it.
    if vehicle is None or vehicle.owner_id != invitation.inviter_id:
        raise ApiError(404, NOT_FOUND, "no such invitation, or it is used or expired")
    if invitation.inviter_id == acceptance.account_id:
        raise ApiError(403, "own_invitation", "an invitation is for another account")
    key = KeyRecord(
        key_id=acceptance.key_id,
        vin=invitation.vin,
        account_id=acceptance.account_id,
        device_id=device.device_id,
        role=invitation.role,
        entitlements=invitation.entitlements,
        not_before=invitation.not_before,
        not_after=invitation.not_after,
        schedule=invitation.schedule,
        status=KeyStatus.ACTIVE,
        created_at=auth.now(),
    )
    await create_key(app, key, device, await store.keys_of_vehicle(invitation.vin))
    return key


async def replay(app: web.Application, journal: Journal, operation: Operation) -> tuple[str, str]:
    """Apply a journaled acceptance: (DONE or REFUSED, outcome). Raises StoreUnavailable or
    NotYet to stop the replay here (it resumes at this operation)."""
    store = app[STORE]
    payload = operation.payload
    acceptance = Acceptance(
        payload["invitation_id"], payload["account_id"], payload["device_id"], payload["key_id"]
    )
    if await store.key(acceptance.key_id) is not None:  # applied before the journal said so
        return DONE, f"key_id={acceptance.key_id}"
    held = payload.get("invitation")
    taken = None if held is None else invitation_from_json(held)
    device = await store.device(acceptance.device_id)
    if device is None or device.account_id != acceptance.account_id:
        if taken is not None:
            await store.put_invitation(taken)  # refused before use
        return REFUSED, "unknown_device"
    if taken is None:
        taken = await store.take_invitation(acceptance.invitation_id, now=operation.accepted_at)
        if taken is None:
            return REFUSED, NOT_FOUND
        # held from now on by the journal: a failure below must not lose it
        await journal.set_payload(operation.seq, acceptance.payload(taken))
    try:
        await grant(app, taken, acceptance, device)
    except ApiError as error:
        if error.code == "too_soon":
            raise NotYet(f"acceptance {operation.op_id}: {error.message}") from None
        if error.code != NOT_FOUND:
            await store.put_invitation(taken)  # refused before use: the recipient may try again
        return REFUSED, error.code
    return DONE, f"key_id={acceptance.key_id}"


def invitation_json(invitation: Invitation) -> dict[str, Any]:
    """An invitation as plain JSON data for the journal (ids, times and the grant: no secret)."""
    schedule = invitation.schedule
    return {
        "invitation_id": invitation.invitation_id,
        "vin": invitation.vin,
        "inviter_id": invitation.inviter_id,
        "role": invitation.role.value,
        "entitlements": invitation.entitlements,
        "not_before": invitation.not_before,
        "not_after": invitation.not_after,
        "schedule": None if schedule is None else base64.b64encode(schedule).decode(),
        "expires_at": invitation.expires_at,
    }


def invitation_from_json(data: dict[str, Any]) -> Invitation:
    schedule = data["schedule"]
    return Invitation(
        invitation_id=data["invitation_id"],
        vin=data["vin"],
        inviter_id=data["inviter_id"],
        role=Role(data["role"]),
        entitlements=data["entitlements"],
        not_before=data["not_before"],
        not_after=data["not_after"],
        schedule=None if schedule is None else base64.b64decode(schedule),
        expires_at=data["expires_at"],
    )
