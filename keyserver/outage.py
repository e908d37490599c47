"""What one keyserver process keeps for store outages, and the writes it accepts during one.

``outage_context`` (a cleanup_ctx, after the store's) wraps the app's store in
``LastKnownStore``, opens the local journal and runs its replay task; at shutdown it drains the
journal into the store if the store answers (within ``journal_drain_s``). ``accept_withdrawal``
is the degraded twin of ``keyserver.issuance.revoke_keys`` / ``suspend_keys``: the write goes
into the journal (202 accepted_pending), the keys' last known status changes at once on this
process (so a degraded refresh here refuses them), and each connected car gets a revocation list
signed here (the sequence scheme is in keyserver.journal's docstring). ``accept_share`` journals
an invitation's acceptance (keyserver.acceptance).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from aiohttp import web

from keycore import RevokedHolder, sign_revocation_list
from keycore.cose import holder_id
from keyserver import auth, degraded
from keyserver.acceptance import ACCEPT, Acceptance
from keyserver.app import CONFIG, HUB, KEYRING, STORE, STORE_GUARD
from keyserver.errors import StoreUnavailable
from keyserver.issuance import MAX_TOKEN_LIFETIME
from keyserver.journal import Journal, Operation
from keyserver.lastknown import LastKnown, LastKnownStore
from keyserver.models import Invitation, KeyRecord, KeyStatus
from keyserver.replay import WITHDRAW, Replayer, announce
from keyserver.store import Store

LAST_KNOWN = web.AppKey("last_known", LastKnownStore)
JOURNAL = web.AppKey("journal", Journal)
REPLAYER = web.AppKey("replayer", Replayer)
ANNOUNCE_DEADLINE_S = 1.0
log = logging.getLogger("keyserver.outage")


async def outage_context(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    cache = LastKnown(capacity=config.last_known_entries, max_age_s=config.last_known_max_age_s)
    wrapped = LastKnownStore(app[STORE], cache)
    app[LAST_KNOWN] = wrapped
    app[STORE] = cast(Store, wrapped)
    journal = Journal.open(config.journal_path)
    app[JOURNAL] = journal
    replayer = Replayer(app, journal)
    app[REPLAYER] = replayer
    replayer.start()
    try:
        yield
    finally:
        # Runs once in-flight requests are done (a write journaled in the shutdown grace is
        # drained too) and after the hub bridge has closed, hence the announcement by hand.
        try:
            await replayer.drain(deadline_s=config.journal_drain_s)
            guard = app.get(STORE_GUARD)
            if guard is not None and replayer.unannounced:
                with contextlib.suppress(StoreUnavailable, TimeoutError):
                    async with asyncio.timeout(ANNOUNCE_DEADLINE_S):
                        await announce(
                            replayer.unannounced, channel=guard.hub_channel, publish=guard.publish
                        )
        finally:
            journal.close()


async def accept_withdrawal(
    app: web.Application, vin: str, keys: Sequence[KeyRecord], status: KeyStatus
) -> Operation:
    """Journal the revocation (or suspension) of ``keys`` while the store is down, mark them
    locally, and push a list signed here to the car if it is connected to this process."""
    journal, cache = app[JOURNAL], app[LAST_KNOWN]
    key_ids = sorted(k.key_id for k in keys)
    payload = {"key_ids": key_ids, "status": status.value}
    now = auth.now()
    operation = await journal.append(_op_id(), WITHDRAW, vin, payload, now=now)
    expected = (KeyStatus.ACTIVE,) if status is KeyStatus.SUSPENDED else tuple(KeyStatus)
    for key in keys:
        cache.note_key_status(key.key_id, status, expected=expected)
    log.info(
        "write journaled",
        extra={"fields": {"op": operation.op_id, "kind": WITHDRAW, "vin": vin, "keys": key_ids}},
    )
    await _push_to_car(app, vin, keys, now=now)
    return operation


async def accept_share(
    app: web.Application, acceptance: Acceptance, taken: Invitation | None
) -> Operation:
    """Journal an invitation's acceptance while the store is down (keyserver.acceptance);
    ``taken``: the invitation, if it was taken from the store before it failed."""
    payload = acceptance.payload(taken)
    vin = "" if taken is None else taken.vin  # unknown until the replay takes the invitation
    operation = await app[JOURNAL].append(_op_id(), ACCEPT, vin, payload, now=auth.now())
    log.info(
        "write journaled",
        extra={"fields": {"op": operation.op_id, "kind": ACCEPT, "key": acceptance.key_id}},
    )
    return operation


def pending_answer(operation: Operation, *, key_id: str | None = None) -> web.Response:
    """202 accepted_pending, with the marker (and the id of the key it will create, if any)."""
    body: dict[str, Any] = {
        "status": "accepted_pending",
        "operation_id": operation.op_id,
        "accepted_at": operation.accepted_at,
    }
    detail = (
        "the state store is unavailable: this change is recorded and will be applied as soon as"
        " it is back; connected cars have been told already"
    )
    if key_id is not None:
        body["key_id"] = key_id
        detail = (
            "the state store is unavailable: the acceptance is recorded and will be checked and"
            " applied as soon as it is back; then this key's token comes from its refresh"
        )
    return degraded.degraded_json(
        body, reason=degraded.STORE_UNAVAILABLE, detail=detail, status=202
    )


async def _push_to_car(
    app: web.Application, vin: str, keys: Sequence[KeyRecord], *, now: int
) -> None:
    car = app[HUB].car(vin)
    held = None if car is None else car.held_revocations()
    if car is None or held is None:
        return  # not connected here: the car gets the entries from the ledger after replay
    cutoff = now + 1  # as keyserver.issuance: tokens signed up to now die
    holders = []
    for device_id in sorted({k.device_id for k in keys}):
        try:
            device = await app[STORE].device(device_id)  # last known, in an outage
        except StoreUnavailable:
            device = None
        if device is not None:
            holders.append(
                RevokedHolder(holder_id(device.public_key), cutoff, cutoff + MAX_TOKEN_LIFETIME)
            )
    if not holders:
        return
    journal = app[JOURNAL]
    ledger_base, sequence = held
    # a car that reconnected holding a list signed here earlier: its real base is older
    bases = [row.ledger_base for row in journal.open_lists() if row.vin == vin]
    ledger_base = min([ledger_base, *bases])
    issued = sequence + 1
    await journal.record_list(vin, ledger_base=ledger_base, sequence=issued)  # before the push
    document = sign_revocation_list(
        app[KEYRING].ring.active.signer,
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
