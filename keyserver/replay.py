"""Replaying the journal once the store is back (keyserver.journal says what and why).

``Replayer.run`` is the background task (``start``/``stop``): whenever the journal has work it
tries a replay, and waits for ``kick()`` or ``interval_s`` between tries. ``replay_once`` applies
pending operations in order (a store failure stops it at that operation, to resume later), then
moves each vehicle's ledger past the lists signed during the outage and tells the hub. ``drain``
is the last replay of a process that stops (keyserver.resources), bounded by a deadline; it and
``keyserver journal replay`` (keyserver.journal_cli) run with no hub bridge, so they ``announce``
the vehicles whose ledger grew to the other instances themselves. The replayer receives the
store, the hub, the journal and the services that apply each operation (``Holders``, ``Acceptor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable

from keyserver.acceptance import ACCEPT, Acceptor
from keyserver.clock import Clock
from keyserver.errors import StoreUnavailable
from keyserver.hub import ChannelHub
from keyserver.hub_bridge import REVOKED, Notice
from keyserver.issuance import Holders
from keyserver.journal import DONE, REFUSED, IssuedList, Journal, NotYet, Operation
from keyserver.models import KeyStatus
from keyserver.store import Store

log = logging.getLogger("keyserver.replay")
WITHDRAW = "withdraw"  # a journaled revocation or suspension (keyserver.outage)
TASK_NAME = "journal-replay"


class Replayer:
    def __init__(
        self,
        store: Store,
        hub: ChannelHub,
        journal: Journal,
        holders: Holders,
        acceptor: Acceptor,
        clock: Clock,
        *,
        interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.hub = hub
        self.journal = journal
        self.holders = holders
        self.acceptor = acceptor
        self.clock = clock
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one replay at a time, whoever asks
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.replays = 0  # completed replays, for tests and metrics
        # vehicles whose ledger a replay grew while no hub bridge relayed it (at shutdown, after
        # the bridge has closed; in `keyserver journal replay`): they are announced by hand
        self.unannounced: set[str] = set()

    def kick(self) -> None:
        """Try now (the store is known to be back, or new work was accepted)."""
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name=TASK_NAME)

    async def stop(self) -> None:
        """End the background task once the replay in flight, if any, is over. Not by cancelling
        it: that could cut an operation in two (an invitation taken from the store and not yet
        held by the journal, keyserver.acceptance). Cancelled itself (a deadline), it cancels
        the task too."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def drain(self, *, deadline_s: float) -> bool:
        """The last replay of a stopping process, within ``deadline_s``: True if the journal
        holds no more work. With the store down (or too slow) the work stays in the journal,
        for the next keyserver that mounts it or ``keyserver journal replay``."""
        try:
            async with asyncio.timeout(deadline_s):
                await self.stop()
                if not self.journal.has_work():
                    return True
                await self.replay_once()
        except (StoreUnavailable, NotYet, TimeoutError) as error:
            why = type(error).__name__
        except Exception:  # a bug must not hold the shutdown: the journal keeps the work
            log.exception("journal drain failed")
            why = "error"
        else:
            log.info("journal drained at shutdown", extra={"fields": self.journal.counts()})
            return not self.journal.has_work()
        log.warning(
            "journal kept at shutdown", extra={"fields": {**self.journal.counts(), "why": why}}
        )
        return False

    async def run(self) -> None:
        while not self._stopping:
            if self.journal.has_work():
                try:
                    await self.replay_once()
                except (StoreUnavailable, NotYet):
                    pass  # the next try resumes at the same operation
                except Exception:  # a bug must not end the task: the journal keeps the work
                    log.exception("journal replay failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def replay_once(self) -> None:
        """Apply every pending operation, then settle the lists signed during the outage.
        Raises StoreUnavailable if the store fails on the way, NotYet if an operation must wait
        (nothing is lost: resume later, at the same operation)."""
        async with self._lock:
            await self._replay()

    async def _replay(self) -> None:
        for operation in self.journal.pending():
            state, outcome = await self._apply(operation)
            if state == DONE and operation.kind == WITHDRAW:
                self._grown(operation.vin)
            await self.journal.settle(operation.seq, state, outcome)
            log.info(
                "journal replayed",
                extra={"fields": {"op": operation.op_id, "state": state, "outcome": outcome}},
            )
        by_vin: dict[str, list[IssuedList]] = defaultdict(list)
        for row in self.journal.open_lists():
            by_vin[row.vin].append(row)
        for vin, rows in by_vin.items():
            await self._converge(vin, rows)
        self.replays += 1

    async def _apply(self, operation: Operation) -> tuple[str, str]:
        if operation.kind == ACCEPT:
            return await self.acceptor.replay(self.journal, operation)
        if operation.kind != WITHDRAW:
            return REFUSED, f"unknown operation {operation.kind}"
        store = self.store
        status = KeyStatus(operation.payload["status"])
        keys = []
        for key_id in operation.payload["key_ids"]:
            key = await store.key(key_id)
            if key is not None and key.vin == operation.vin:
                keys.append(key)
        if status is KeyStatus.SUSPENDED:
            keys = [k for k in keys if k.status is not KeyStatus.REVOKED]
        if not keys:  # a business refusal: recorded, never retried
            return REFUSED, "unknown_key" if status is KeyStatus.REVOKED else "key_revoked"
        holders = self.holders
        withdraw = holders.revoke_keys if status is KeyStatus.REVOKED else holders.suspend_keys
        done = await withdraw(operation.vin, keys, now=self.clock())
        return DONE, f"revocation_sequence={done.sequence}"

    async def _converge(self, vin: str, rows: list[IssuedList]) -> None:
        """Move the ledger past every sequence signed here during the outage, renumbering every
        entry after the lowest ledger base above them (keyserver.journal, steps 1–3)."""
        store = self.store
        highest = max(r.sequence for r in rows)
        lowest_base = min(r.ledger_base for r in rows)
        # steps 1 and 2 in one atomic store step: the ledger moves past every D and the entries
        # after the lowest base are renumbered above them (one entry per subject: no copies)
        await store.renumber_revocations(vin, since=lowest_base, above=highest)
        await self.journal.settle_lists(vin, up_to=highest)
        self.hub.revoked(vin)
        self._grown(vin)

    def _grown(self, vin: str) -> None:
        if self.hub.relay is None:
            self.unannounced.add(vin)


async def announce(
    vins: Iterable[str], *, channel: str, publish: Callable[[str, bytes], Awaitable[int]]
) -> None:
    """Tell every keyserver instance that these vehicles' ledgers grew, with the hub bridge's
    own notice (keyserver.hub_bridge): the instance holding a car pushes it the delta now, rather
    than at the car's next reconnect. Raises StoreUnavailable; a notice is a doorbell, the
    ledger in the store is what the car gets either way."""
    origin = f"journal-{secrets.token_hex(4)}"  # not any instance's: none ignores it as its own
    for vin in sorted(vins):
        await publish(channel, Notice(origin, REVOKED, vin).encode())
