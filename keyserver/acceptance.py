"""Accepting an invitation (a shared key): the one procedure of the route and of the journal's
replay.

``Acceptor`` is the service (it receives the store, the ``Holders`` that create keys, and a clock
for the replay). With the store up, ``POST /v1/invitations/{id}/accept`` takes the invitation
(single use) and ``grant`` checks it and stores the key. With the store down, nothing about an
invitation can be checked here — its id is opaque and the record is in the store — so the route
checks what it can (the caller's session, device and proof, as last known here; the id's format)
and journals the acceptance: 202 ``accepted_pending`` with the ``key_id`` the key will have (the
phone fetches its token from ``POST /v1/keys/{key_id}/token`` once the store is back). If the
store fails after the invitation was taken, the journaled acceptance carries the invitation
itself, so it is not lost.

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

from keycore import Role
from keyserver.clock import Clock
from keyserver.errors import InvitationNotFound, OwnInvitation, Refused, TooSoon
from keyserver.issuance import Holders
from keyserver.journal import DONE, REFUSED, Journal, NotYet, Operation
from keyserver.models import Device, Invitation, KeyRecord, KeyStatus
from keyserver.store import Store

ACCEPT = "accept"
NOT_FOUND = InvitationNotFound.code
NOT_FOUND_MESSAGE = "no such invitation, or it is used or expired"
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


class Acceptor:
    """Accepts invitations: the route's procedure and the journal replay's."""

    def __init__(self, store: Store, holders: Holders, clock: Clock) -> None:
        self.store = store
        self.holders = holders
        self.clock = clock

    async def grant(
        self, invitation: Invitation, acceptance: Acceptance, device: Device, *, now: int
    ) -> KeyRecord:
        """Check a taken invitation against the store and store the key it grants. Refused
        (InvitationNotFound, OwnInvitation, DeviceHasKey, TooSoon, TooManyHolders) or
        StoreUnavailable; it never puts the invitation back (the caller decides)."""
        vehicle = await self.store.vehicle(invitation.vin)
        # An invitation dies with its inviter's ownership: the new owner never granted it.
        if vehicle is None or vehicle.owner_id != invitation.inviter_id:
            raise InvitationNotFound(NOT_FOUND_MESSAGE)
        if invitation.inviter_id == acceptance.account_id:
            raise OwnInvitation("an invitation is for another account")
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
            created_at=now,
        )
        keys = await self.store.keys_of_vehicle(invitation.vin)
        await self.holders.create_key(key, device, keys, now=now)
        return key

    async def replay(self, journal: Journal, operation: Operation) -> tuple[str, str]:
        """Apply a journaled acceptance: (DONE or REFUSED, outcome). Raises StoreUnavailable or
        NotYet to stop the replay here (it resumes at this operation)."""
        store = self.store
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
            await self.grant(taken, acceptance, device, now=self.clock())
        except TooSoon as error:
            raise NotYet(f"acceptance {operation.op_id}: {error.message}") from None
        except Refused as error:
            if not isinstance(error, InvitationNotFound):
                await store.put_invitation(taken)  # refused before use: may be tried again
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
