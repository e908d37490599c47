"""The writes one keyserver process accepts while the store is down: the outage journal's service.

``OutageJournal.accept_withdrawal`` is the degraded twin of ``Holders.revoke_keys`` /
``suspend_keys`` (keyserver.issuance): the write goes into the journal (the route answers 202
accepted_pending), the keys' last known status changes at once on this process (so a degraded
refresh here refuses them), and each connected car gets a revocation list signed here (the
sequence scheme is in keyserver.journal's docstring). ``accept_share`` journals an invitation's
acceptance (keyserver.acceptance). What the process keeps for an outage — the last-known store,
the journal and its replayer — is built with the other resources (keyserver.resources).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence

from keycore import RevokedHolder, sign_revocation_list
from keycore.cose import holder_id
from keyserver.acceptance import ACCEPT, Acceptance
from keyserver.errors import StoreUnavailable
from keyserver.hub import ChannelHub
from keyserver.issuance import MAX_TOKEN_LIFETIME
from keyserver.journal import Journal, Operation
from keyserver.keyring_reload import ServedKeyRing
from keyserver.lastknown import LastKnownStore
from keyserver.models import Invitation, KeyRecord, KeyStatus
from keyserver.replay import WITHDRAW

log = logging.getLogger("keyserver.outage")


class OutageJournal:
    """Journals the writes accepted during a store outage; ``store`` is the last-known one."""

    def __init__(
        self, journal: Journal, store: LastKnownStore, hub: ChannelHub, keyring: ServedKeyRing
    ) -> None:
        self.journal = journal
        self.store = store
        self.hub = hub
        self.keyring = keyring

    async def accept_withdrawal(
        self, vin: str, keys: Sequence[KeyRecord], status: KeyStatus, *, now: int
    ) -> Operation:
        """Journal the revocation (or suspension) of ``keys`` while the store is down, mark them
        locally, and push a list signed here to the car if it is connected to this process."""
        key_ids = sorted(k.key_id for k in keys)
        payload = {"key_ids": key_ids, "status": status.value}
        operation = await self.journal.append(_op_id(), WITHDRAW, vin, payload, now=now)
        expected = (KeyStatus.ACTIVE,) if status is KeyStatus.SUSPENDED else tuple(KeyStatus)
        for key in keys:
            self.store.note_key_status(key.key_id, status, expected=expected)
        log.info(
            "write journaled",
            extra={
                "fields": {"op": operation.op_id, "kind": WITHDRAW, "vin": vin, "keys": key_ids}
            },
        )
        await self._push_to_car(vin, keys, now=now)
        return operation

    async def accept_share(
        self, acceptance: Acceptance, taken: Invitation | None, *, now: int
    ) -> Operation:
        """Journal an invitation's acceptance while the store is down (keyserver.acceptance);
        ``taken``: the invitation, if it was taken from the store before it failed."""
        payload = acceptance.payload(taken)
        vin = "" if taken is None else taken.vin  # unknown until the replay takes the invitation
        operation = await self.journal.append(_op_id(), ACCEPT, vin, payload, now=now)
        log.info(
            "write journaled",
            extra={"fields": {"op": operation.op_id, "kind": ACCEPT, "key": acceptance.key_id}},
        )
        return operation

    def pending_acceptances(self, account_id: str) -> list[Operation]:
        """The acceptances of ``account_id`` waiting in this process's journal."""
        return self.journal.pending_of(ACCEPT, account_id)

    async def _push_to_car(self, vin: str, keys: Sequence[KeyRecord], *, now: int) -> None:
        car = self.hub.car(vin)
        held = None if car is None else car.held_revocations()
        if car is None or held is None:
            return  # not connected here: the car gets the entries from the ledger after replay
        cutoff = now + 1  # as keyserver.issuance: tokens signed up to now die
        holders = []
        for device_id in sorted({k.device_id for k in keys}):
            try:
                device = await self.store.device(device_id)  # last known, in an outage
            except StoreUnavailable:
                device = None
            if device is not None:
                holders.append(
                    RevokedHolder(holder_id(device.public_key), cutoff, cutoff + MAX_TOKEN_LIFETIME)
                )
        if not holders:
            return
        ledger_base, sequence = held
        # a car that reconnected holding a list signed here earlier: its real base is older
        bases = [row.ledger_base for row in self.journal.open_lists() if row.vin == vin]
        ledger_base = min([ledger_base, *bases])
        issued = sequence + 1
        await self.journal.record_list(vin, ledger_base=ledger_base, sequence=issued)  # first
        document = sign_revocation_list(
            self.keyring.ring.active.signer,
            vin=vin,
            sequence=issued,
            now=now,
            base=sequence,
            holders=holders,
        )
        car.push_revocation_list(issued, document)
        log.info(
            "revocation pushed during outage",
            extra={"fields": {"vin": vin, "sequence": issued, "ledger_base": ledger_base}},
        )


def _op_id() -> str:
    return secrets.token_urlsafe(18)
