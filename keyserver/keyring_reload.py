"""The key ring a running keyserver signs with, swapped whole when its key directory changes.

The operator rotates in the admin directory and publishes the serving part into the key
directory (``keyserver keys``); every keyserver looks at that directory every ``key_poll_s`` and
serves the new ring once ``KeyRingStore.load`` has checked it whole. A directory that does not
load, a root other than the one served (cars hold theirs from the factory) or an older trust
update is refused in one log line, and the ring served until then stays: fail closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry, Counter, Gauge

from keycore import ROLE_MAX_LIFETIME, IssuerKeyRing, KeyStatus, TrustStore
from keyserver.config import Config
from keyserver.errors import KeyRingError
from keyserver.keyring import RING_FILE, ROOT_PUBLIC_FILE, TRUST_FILE, KeyRingState, KeyRingStore
from resilience.waiting import PredicateWaiters

log = logging.getLogger("keyserver.keyring")

DEFAULT_KEY_LIFETIME_S = 365 * 86_400
_WATCHED = {RING_FILE, TRUST_FILE, ROOT_PUBLIC_FILE}
Fingerprint = tuple[tuple[str, int, int, int], ...]


def open_key_ring(config: Config) -> KeyRingState:
    """The ring to serve at start-up; raises KeyRingError. Only the zero-configuration default
    (no ``key_dir``) makes one: a mistyped key directory must not mint a new fleet root."""
    store = KeyRingStore(config.keys_path)
    if store.exists():
        return store.load()
    if config.key_dir is not None:
        raise KeyRingError(
            f"no key ring in {config.keys_path} (key_dir is set): make one with"
            f" `keyserver keys --dir ADMIN_DIR init` on the admin machine, then"
            f" `keyserver keys --dir ADMIN_DIR publish {config.keys_path}`"
        )
    state = store.init(
        now=int(time.time()),
        key_lifetime=DEFAULT_KEY_LIFETIME_S,
        max_token_lifetime=max(ROLE_MAX_LIFETIME.values()),
    )
    log.warning(
        "key ring created",
        extra={
            "fields": {
                "key_dir": str(config.keys_path),
                "root_kid": state.root_kid.hex(),
                "why": "first start without key_dir (zero-configuration default)",
            }
        },
    )
    return state


class ServedKeyRing:
    """The ring served now (``state``), with read-through attributes for the request handlers.

    A swap happens on the event loop between two awaits, so a handler that reads, say,
    ``trust_sequence`` and ``trust_update`` without awaiting in between sees one ring.
    """

    def __init__(
        self, store: KeyRingStore, state: KeyRingState, registry: CollectorRegistry | None = None
    ) -> None:
        self._store = store
        self._state = state
        self._seen: Fingerprint | None = None  # None: the first look reads the directory
        self._doubted: Fingerprint | None = None  # failed once; judged at the next look
        self.refused = 0  # directory changes refused since start
        self._waiters = PredicateWaiters()
        self._reloads = Counter(
            "keyserver_keyring_reloads",
            "Key directory changes: loaded (a newer ring served) or refused (old ring kept)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("loaded", "refused"):  # both series from the start, at 0
            self._reloads.labels(outcome)
        self._sequence = Gauge(
            "keyserver_trust_sequence", "The trust-store update served", registry=registry
        )
        self._sequence.set(state.trust_sequence)

    @classmethod
    def start(cls, config: Config, registry: CollectorRegistry | None = None) -> ServedKeyRing:
        """Open the ring (``open_key_ring``) and say in the log which keys this server serves."""
        store = KeyRingStore(config.keys_path)
        served = cls(store, open_key_ring(config), registry)
        fields = {"key_dir": str(store.directory), **_described(served.state)}
        log.info("serving key ring", extra={"fields": fields})
        if config.key_dir is not None and store.holds_root_private_key():
            log.warning(
                "the root private key is in the serving key directory: keep it in the admin"
                " directory and publish the serving part (keyserver keys publish)",
                extra={"fields": {"key_dir": str(store.directory)}},
            )
        return served

    # -- what handlers read: the ring served now -------------------------------------------

    @property
    def state(self) -> KeyRingState:
        return self._state

    @property
    def ring(self) -> IssuerKeyRing:
        return self._state.ring

    @property
    def root_key(self) -> ec.EllipticCurvePublicKey:
        return self._state.root_key

    @property
    def trust_sequence(self) -> int:
        return self._state.trust_sequence

    @property
    def trust_update(self) -> bytes:
        return self._state.trust_update

    def trust_store(self) -> TrustStore:
        return self._state.trust

    # -- reloading ---------------------------------------------------------------------------

    async def watch(self, interval: float) -> None:
        """Look at the key directory every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # a bug here must not stop the looking, nor the serving
                log.exception("key directory check failed")

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; checked after every verdict on a changed directory
        (tests and drills wait on a reload or a refusal; nothing sleeps)."""
        await self._waiters.wait_for(predicate)

    def check(self) -> bool:
        """Look at the key directory once; True if a newer ring is served from now on.

        Runs on the event loop (a few small files, read only when they changed). A directory
        that fails to load while it changes under the reader is being published: looked at
        again, not judged; one that fails twice unchanged is refused.
        """
        seen = _fingerprint(self._store.directory)
        if seen == self._seen:
            return False
        try:
            state = self._store.load()
            self._admissible(state)
        except KeyRingError as error:
            if _fingerprint(self._store.directory) != seen or self._doubted != seen:
                self._doubted = seen
                return False
            self._seen = seen
            self.refused += 1
            self._reloads.labels("refused").inc()
            log.warning(
                "key ring not reloaded: keeping the one served",
                extra={
                    "fields": {
                        "key_dir": str(self._store.directory),
                        "error": str(error),
                        "trust_sequence": self.trust_sequence,
                    }
                },
            )
            self._waiters.notify()
            return False
        self._seen, self._doubted = seen, None
        swapped = state.trust_sequence > self.trust_sequence
        if swapped:
            self._state = state
            self._sequence.set(state.trust_sequence)
            self._reloads.labels("loaded").inc()
            fields = {"key_dir": str(self._store.directory), **_described(state)}
            log.info("key ring reloaded", extra={"fields": fields})
        self._waiters.notify()
        return swapped

    def _admissible(self, state: KeyRingState) -> None:
        served = self._state
        if state.root_kid != served.root_kid:
            raise KeyRingError(
                f"root {state.root_kid.hex()} is not the root served ({served.root_kid.hex()}),"
                " which cars hold: a new root needs new cars' trust, not a reload"
            )
        if state.trust_sequence < served.trust_sequence:
            raise KeyRingError(
                f"trust-store update {state.trust_sequence} is older than the one served"
                f" ({served.trust_sequence})"
            )
        if state.trust_sequence == served.trust_sequence and (
            state.trust_update != served.trust_update
        ):
            raise KeyRingError(
                f"a different trust-store update under the served sequence {state.trust_sequence}"
            )


def _described(state: KeyRingState) -> dict[str, object]:
    by_status = {
        status.value: [k.kid.hex() for k in state.ring.keys if k.status is status]
        for status in KeyStatus
    }
    return {"root_kid": state.root_kid.hex(), "trust_sequence": state.trust_sequence, **by_status}


def _fingerprint(directory: Path) -> Fingerprint:
    """Names, inodes, mtimes and sizes of the ring's files. ``stat`` follows symlinks: a
    Kubernetes Secret volume publishes by swapping a symlink, which changes every inode."""
    entries = []
    try:
        with os.scandir(directory) as listing:
            for entry in listing:
                if entry.name in _WATCHED or (
                    entry.name.startswith("issuer-") and entry.name.endswith(".pem")
                ):
                    st = os.stat(entry.path)
                    entries.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_size))
    except OSError as exc:  # gone, or changing under us: never equal to a readable directory
        return ((f"unreadable: {type(exc).__name__}", -1, -1, -1),)
    return tuple(sorted(entries))
