"""Last known data: a bounded per-process cache filled by every successful store read, and the store
wrapper that answers reads from it while the store is down (marking the request stale).

``LastKnownStore`` wraps the app's store (outermost: it sees what the breaker and the retries
finally made of a call; keyserver.resources.assemble_store puts it there). A read that succeeds
refreshes the cache; a read that raises ``StoreUnavailable`` is answered from the cache if the
value is there and younger than ``max_age_s`` — the request is then marked stale with the value's
age (``keyserver.degraded.note_stale``) — and raises on a miss, so an unknown caller is refused
(fail closed, 429) rather than shown anything. Only records are kept: a session under the hash of
its bearer token (never the token), devices with their public keys, vehicles, keys, commands and
revocation ledgers. A "no such record" answer evicts the entry.

Writes are never answered from here: they raise, and the route decides (journal, 429, ...). The
one exception is a device proof's nonce: while the store is down it is spent in a local book, so
a proof is still single use on this process (across processes, only within the proof's skew).

What a stale value can miss: a change made through another process since it was cached (a session
closed, a key revoked there). Writes through this process update or evict the entries they touch;
``max_age_s`` bounds the rest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from keyserver.clock import Clock, process_clock
from keyserver.degraded import note_stale
from keyserver.errors import StoreUnavailable
from keyserver.models import (
    Account,
    CommandRecord,
    Device,
    KeyRecord,
    KeyStatus,
    KeyWithdrawal,
    NonceClaim,
    RefreshContext,
    RevocationEntry,
    Session,
    Vehicle,
)
from keyserver.store import Store
from keyserver.store.forwarding import ForwardingStore

T = TypeVar("T")
MAX_LOCAL_NONCES = 100_000


class LastKnown:
    """An LRU of values with the time each was stored: at most ``capacity`` entries, none
    older than ``max_age_s`` when read. Times are passed in (Unix seconds)."""

    def __init__(self, *, capacity: int, max_age_s: int) -> None:
        self.capacity = capacity
        self.max_age_s = max_age_s
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Hashable, value: Any, *, now: int) -> None:
        self._entries[key] = (value, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, key: Hashable, *, now: int) -> tuple[Any, int] | None:
        """(value, age in seconds), or None when unknown or too old."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, stored_at = entry
        age = max(0, now - stored_at)
        if age > self.max_age_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value, age

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)


class LocalNonces:
    """Single use of proof nonces on this process while the store cannot record them."""

    def __init__(self, capacity: int = MAX_LOCAL_NONCES) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, bytes], int] = OrderedDict()

    def claim(self, scope: str, nonce: bytes, *, now: int, expires_at: int) -> bool:
        for key, expiry in list(self._seen.items())[:64]:  # amortised pruning, oldest first
            if expiry < now:
                del self._seen[key]
        if (scope, nonce) in self._seen:
            return False
        self._seen[(scope, nonce)] = expires_at
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True


class LastKnownStore(ForwardingStore):
    """The app's store, with reads answered from ``LastKnown`` while it is down (module doc).
    The operations written here are the ones it caches, evicts or answers itself; every other
    one is ``ForwardingStore``'s, straight through."""

    def __init__(
        self,
        inner: Store,
        cache: LastKnown,
        nonces: LocalNonces | None = None,
        *,
        clock: Clock = process_clock,
    ) -> None:
        super().__init__(inner)
        self.cache = cache
        self.nonces = nonces or LocalNonces()
        self.clock = clock  # when a value was read: its age while the store is down

    async def _read(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        try:
            value = await call()
        except StoreUnavailable:
            hit = self.cache.get(key, now=self.clock())
            if hit is None:
                raise
            note_stale(hit[1])
            return hit[0]  # type: ignore[no-any-return]
        if value is None:
            self.cache.forget(key)
        else:
            self.cache.put(key, value, now=self.clock())
        return value

    async def session(self, token_hash: bytes, *, now: int) -> Session | None:
        found = await self._read(
            ("session", token_hash), lambda: self._inner.session(token_hash, now=now)
        )
        return found if found is not None and found.expires_at > now else None

    async def delete_session(self, token_hash: bytes) -> None:
        self.cache.forget(("session", token_hash))  # first: closed here even if the store fails
        await self._inner.delete_session(token_hash)

    async def account(self, account_id: str) -> Account | None:
        return await self._read(("account", account_id), lambda: self._inner.account(account_id))

    async def device(self, device_id: str) -> Device | None:
        return await self._read(("device", device_id), lambda: self._inner.device(device_id))

    async def devices_of(self, account_id: str) -> list[Device]:
        devices = await self._read(
            ("devices_of", account_id), lambda: self._inner.devices_of(account_id)
        )
        self._put_all([(("device", d.device_id), d) for d in devices])
        return devices

    async def vehicle(self, vin: str) -> Vehicle | None:
        return await self._read(("vehicle", vin), lambda: self._inner.vehicle(vin))

    async def key(self, key_id: str) -> KeyRecord | None:
        return await self._read(("key", key_id), lambda: self._inner.key(key_id))

    async def keys_of_vehicle(self, vin: str) -> list[KeyRecord]:
        keys = await self._read(("keys_of_vehicle", vin), lambda: self._inner.keys_of_vehicle(vin))
        self._put_all([(("key", k.key_id), k) for k in keys])
        return keys

    async def command(self, command_id: str) -> CommandRecord | None:
        return await self._read(("command", command_id), lambda: self._inner.command(command_id))

    async def revocations(self, vin: str, *, since: int = 0) -> tuple[int, list[RevocationEntry]]:
        try:
            sequence, entries = await self._inner.revocations(vin, since=since)
        except StoreUnavailable:
            hit = self.cache.get(("ledger", vin), now=self.clock())
            if hit is None:
                raise
            (sequence, full), age = hit
            note_stale(age)
            return sequence, [e for e in full if e.sequence > since]
        if since == 0:
            self.cache.put(("ledger", vin), (sequence, entries), now=self.clock())
        return sequence, entries

    def ledger(self, vin: str) -> tuple[int, list[RevocationEntry]] | None:
        """The vehicle's last known full ledger, if this process has read it."""
        hit = self.cache.get(("ledger", vin), now=self.clock())
        if hit is None:
            return None
        ledger: tuple[int, list[RevocationEntry]] = hit[0]
        return ledger

    async def refresh_context(
        self, token_hash: bytes, *, device_id: str | None, key_id: str | None, now: int,
        claim: NonceClaim | None = None,
    ) -> RefreshContext:  # fmt: skip
        context = await self._inner.refresh_context(
            token_hash, device_id=device_id, key_id=key_id, now=now, claim=claim
        )
        stamp = now  # the request's: no second clock read on the hot path
        if context.session is not None:
            self.cache.put(("session", token_hash), context.session, now=stamp)
        if context.device is not None:
            self.cache.put(("device", context.device.device_id), context.device, now=stamp)
        if context.key is not None:
            self.cache.put(("key", context.key.key_id), context.key, now=stamp)
        return context

    async def claim_nonce(self, scope: str, nonce: bytes, *, now: int, expires_at: int) -> bool:
        try:
            fresh = await self._inner.claim_nonce(scope, nonce, now=now, expires_at=expires_at)
        except StoreUnavailable:
            return self.nonces.claim(scope, nonce, now=now, expires_at=expires_at)
        if fresh:  # a later local claim of the same nonce must fail too
            self.nonces.claim(scope, nonce, now=now, expires_at=expires_at)
        return fresh

    async def set_key_status(
        self, key_id: str, status: KeyStatus, *, expected: Sequence[KeyStatus]
    ) -> bool:
        changed = await self._inner.set_key_status(key_id, status, expected=expected)
        self.note_key_status(key_id, status, expected=expected)
        return changed

    def note_key_status(
        self, key_id: str, status: KeyStatus, *, expected: Sequence[KeyStatus]
    ) -> None:
        """A key's status as changed here (by the store, or by a journaled write): the cached
        record follows, so a degraded refresh on this process sees it at once."""
        hit = self.cache.get(("key", key_id), now=self.clock())
        if hit is None:
            return
        key: KeyRecord = hit[0]
        if key.status in expected:
            key = _with_status(key, status)
            self._restamp(("key", key_id), key)
        listed = self.cache.get(("keys_of_vehicle", key.vin), now=self.clock())
        if listed is not None:  # the vehicle's list says the same, keeping its age
            keys = [key if k.key_id == key_id else k for k in listed[0]]
            self._restamp(("keys_of_vehicle", key.vin), keys)

    def _restamp(self, key: Hashable, value: Any) -> None:
        """Replace a cached value, keeping the time it was read (its age stays honest)."""
        hit = self.cache.get(key, now=self.clock())
        age = 0 if hit is None else hit[1]
        self.cache.put(key, value, now=self.clock() - age)

    async def append_revocations(self, vin: str, entries: Sequence[RevocationEntry]) -> int:
        sequence = await self._inner.append_revocations(vin, entries)
        self.cache.forget(("ledger", vin))
        return sequence

    async def renumber_revocations(self, vin: str, *, since: int, above: int) -> int:
        sequence = await self._inner.renumber_revocations(vin, since=since, above=above)
        self.cache.forget(("ledger", vin))
        return sequence

    async def withdraw_keys(
        self,
        vin: str,
        keys: Sequence[KeyWithdrawal],
        status: KeyStatus,
        *,
        expected: Sequence[KeyStatus],
        before: int,
        until: int,
    ) -> tuple[int, list[str]]:
        sequence, changed = await self._inner.withdraw_keys(
            vin, keys, status, expected=expected, before=before, until=until
        )
        for key_id in changed:
            self.note_key_status(key_id, status, expected=expected)
        self.cache.forget(("ledger", vin))
        return sequence, changed

    def _put_all(self, items: list[tuple[Hashable, Any]]) -> None:
        """Each record of a list read: the list is as fresh as a read of each of them."""
        now = self.clock()
        for key, value in items:
            self.cache.put(key, value, now=now)


def _with_status(key: KeyRecord, status: KeyStatus) -> KeyRecord:
    return replace(key, status=status)
