"""A store that fails on demand, in process and deterministically: every operation raises
``StoreUnavailable`` while ``down`` (with ``may_have_succeeded`` as set), and goes through to
the real store otherwise. ``land_writes`` makes a failing write happen before it raises: the
"sent but not answered" case. ``broken`` names operations that fail even while up: the store
going down in the middle of a request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from keyserver.errors import StoreUnavailable
from keyserver.store import Store

_READS = {
    "ping", "account", "account_by_email", "session", "device", "devices_of", "vehicle", "key",
    "keys_of_vehicle", "revocations", "command", "pending_commands", "audit_events", "ownership",
}  # fmt: skip


class FlakyStore:
    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.down = False
        self.may_have_succeeded = False
        self.land_writes = False
        self.failures = 0  # calls refused while down
        self.broken: set[str] = set()

    def fail(self, *, may_have_succeeded: bool = False, land_writes: bool = False) -> None:
        self.down = True
        self.may_have_succeeded = may_have_succeeded
        self.land_writes = land_writes

    def recover(self) -> None:
        self.down = False
        self.broken.clear()

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        operation = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if not self.down and name not in self.broken:
                return await operation(*args, **kwargs)
            self.failures += 1
            if self.land_writes and name not in _READS:
                await operation(*args, **kwargs)
            raise StoreUnavailable(
                f"flaky store is down ({name})",
                may_have_succeeded=self.may_have_succeeded and name not in _READS,
            )

        return call


PROVISIONING_SECRET = "factory-secret-0123456789"


async def open_flaky(path: Any) -> FlakyStore:
    from keyserver.store.sqlite import SQLiteStore

    return FlakyStore(await SQLiteStore.open(path))


def flaky_config(data_dir: Any) -> Any:
    from keyserver.config import build

    return build({"data_dir": str(data_dir), "provisioning_secret": PROVISIONING_SECRET})
