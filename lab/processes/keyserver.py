"""The keyserver as a process of the lab's own: its command line, its environment, and
``OwnKeyserver`` (one process with its own data directory, restartable on the same port), used by
the fleet, the demo, the benchmarks and the tests that need a real keyserver process.

The environment starts from this process's own without any ``PHONEKEY_*`` variable, so a setting
of the developer's shell never leaks into a run.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from keyserver.keyring import KeyRingStore
from lab.processes.app import AppServer
from lab.processes.base import LOOPBACK, free_port

# The keyserver's rate limits (keyserver/ratelimit.py) wherever staging runs one — the stack, the
# fleet and demo (``OwnKeyserver`` below), the surge and world tests: every phone and car
# is on one loopback address, and the fleet operator and the surge's one account act for
# thousands of cars, so the production defaults would refuse staging's ordinary traffic. Raised
# as a whole; the limits themselves are tested in tests/keyserver/test_ratelimit.py.
STAGING_RATE_LIMITS = {
    "PHONEKEY_REGISTRATIONS_PER_HOUR": "1000000",  # every person registers from 127.0.0.1
    "PHONEKEY_LOGIN_ATTEMPTS_PER_MINUTE": "10000",  # ... and logs in from there (its maximum)
    "PHONEKEY_PAIRING_ATTEMPTS_PER_MINUTE": "100000",  # one operator pairs every car
    "PHONEKEY_ACCOUNT_WRITES_PER_MINUTE": "1000000",  # one account revokes, commands for all
    "PHONEKEY_ADDRESS_WRITES_PER_MINUTE": "10000000",  # everyone is 127.0.0.1
}


def keyserver_command(*options: str) -> list[str]:
    """The command line of ``keyserver serve`` on this interpreter."""
    return [sys.executable, "-m", "keyserver.cli", "serve", *options]


def keyserver_env(
    *,
    port: int,
    data_dir: Path,
    secret: str,
    redis_url: str | None = None,
    log_level: str = "warning",
    settings: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a keyserver on loopback ``port`` (0: it picks one and says which, as
    ``AppServer`` reads it); ``redis_url`` None is the embedded SQLite store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHONEKEY_")}
    env.update(
        PHONEKEY_HOST=LOOPBACK,
        PHONEKEY_PORT=str(port),
        PHONEKEY_DATA_DIR=str(data_dir),
        PHONEKEY_PROVISIONING_SECRET=secret,
        PHONEKEY_LOG_LEVEL=log_level,
    )
    if redis_url is not None:
        env["PHONEKEY_REDIS_URL"] = redis_url
    env.update(settings or {})
    return env


@dataclass
class OwnKeyserver:
    """A keyserver process of the run's own, restartable on the same port."""

    work: Path
    secret: str
    port: int
    server: AppServer | None = None
    redis_url: str | None = None  # None: the embedded SQLite store

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        env = keyserver_env(
            port=self.port,
            data_dir=self.work / "keyserver",
            secret=self.secret,
            redis_url=self.redis_url,
            # one operator pairs, revokes and commands every car
            settings=STAGING_RATE_LIMITS,
        )
        self.server = AppServer(
            keyserver_command(), workdir=self.work / "keyserver", env=env, name="keyserver"
        )
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def pid(self) -> int | None:
        return None if self.server is None or self.server.process is None else self.server.pid

    def root(self) -> ec.EllipticCurvePublicKey:
        return KeyRingStore(self.work / "keyserver" / "keys").load().root_key


@contextmanager
def own_keyserver(work: Path, *, redis_url: str | None = None) -> Iterator[OwnKeyserver]:
    own = OwnKeyserver(work, secrets.token_urlsafe(24), free_port(), redis_url=redis_url)
    own.start()
    try:
        yield own
    finally:
        own.stop()
