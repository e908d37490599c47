"""What every Redis store operation shares: its key names under the store's prefix, how long a
record outlives its expiry, and what a failed call becomes (``StoreUnavailable``, saying whether
a write may have been applied)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import (
    BusyLoadingError,
    DataError,
    ExecAbortError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
)

from keyserver.errors import StoreUnavailable
from keyserver.store.redis.client import NotSent, writing

# Seconds a record outlives its expiry, and its least lifetime on Redis's clock: garbage
# collection must never run ahead of a caller whose clock is behind Redis's.
EXPIRY_SLACK = 60

# the server refused the whole command: nothing was applied
_REFUSED = (NotSent, BusyLoadingError, ReadOnlyError, OutOfMemoryError, ExecAbortError, DataError)


class Keyspace:
    """The store's key names: ``{prefix}{kind}:{part}:…`` (the layout is in the package doc)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, kind: str, *parts: str | int) -> str:
        return ":".join((f"{self.prefix}{kind}", *map(str, parts)))

    def ledger(self, vin: str) -> list[str]:
        """The vehicle's revocation ledger: its sequence, log, expiry index and subjects."""
        return [self(kind, vin) for kind in ("revseq", "revlog", "revuntil", "revsubj")]


@contextmanager
def failures(operation: str, *, write: bool) -> Iterator[None]:
    """Redis's and the socket's errors in the block become ``StoreUnavailable``; a write holds
    its connection until the replicas asked for have it (keyserver.store.redis.client)."""
    try:
        if write:
            with writing():  # the pool WAITs for replicas when the store asks for it
                yield
        else:
            yield
    except (RedisError, OSError) as exc:
        raise unavailable(operation, exc, write=write) from exc


def unavailable(operation: str, exc: BaseException, *, write: bool) -> StoreUnavailable:
    sent = write and not isinstance(exc, _REFUSED)
    cause = type(exc.__cause__ if isinstance(exc, NotSent) else exc).__name__
    outcome = ("; may have been applied" if sent else "; not applied") if write else ""
    return StoreUnavailable(f"redis {operation} failed ({cause}){outcome}", may_have_succeeded=sent)
