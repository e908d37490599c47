"""Redis with Sentinel on one machine: a primary, its replicas and a few Sentinels, all real
``redis-server`` processes on free loopback ports, so tests and drills can kill the primary and
watch a failover.

Readiness is polled from the servers themselves (replication link up, Sentinels that know each
other and every replica), in bounded loops with a short interval: never a fixed sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from lab.processes.base import LOOPBACK, ProcessError
from lab.processes.redis_server import RedisServer

POLL_INTERVAL_S = 0.05
T = TypeVar("T")


class RedisSentinel(RedisServer):
    """One Sentinel (``redis-server <config> --sentinel``) watching ``service`` at
    ``master_port``. Failure detection and failover are tuned for drills, not for a WAN:
    down after 500 ms, a failover may be retried after 2 × ``failover_timeout_ms``."""

    ready_marker = b"+monitor master"  # printed once the Sentinel listens and monitors

    def __init__(
        self,
        workdir: Path,
        *,
        service: str,
        master_port: int,
        quorum: int = 2,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
    ) -> None:
        super().__init__(workdir)
        self.service = service
        self.master_port = master_port
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, self.port

    def _command(self, binary: str) -> list[str]:
        # Sentinel rewrites its own config file; a fresh one per start keeps starts independent.
        config = self.workdir / "sentinel.conf"
        name = self.service
        config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {LOOPBACK}",
                    "daemonize no",
                    'logfile ""',
                    f"dir {self.workdir}",
                    f"sentinel monitor {name} {LOOPBACK} {self.master_port} {self.quorum}",
                    f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                    f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {name} 1",
                    "",
                ]
            )
        )
        return [binary, str(config), "--sentinel"]


def _client(port: int) -> redis.Redis:
    return redis.Redis(
        host=LOOPBACK,
        port=port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def ask(port: int, *command: str | int) -> Any:
    """One command to the server on ``port``; None if it does not answer."""
    with _client(port) as client:
        try:
            return client.execute_command(*command)
        except (RedisError, OSError):
            return None


def poll(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """``condition()`` until it returns something other than None or False, at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise ProcessError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


@dataclass
class SentinelGroup:
    """A primary, its replicas and the Sentinels that watch them; ``stop()`` stops them all."""

    service: str
    primary: RedisServer
    replicas: list[RedisServer] = field(default_factory=list)
    sentinels: list[RedisSentinel] = field(default_factory=list)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [s.address for s in self.sentinels]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    def master_port(self) -> int | None:
        """The master's port if every running Sentinel names the same one, else None."""
        named = set()
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            answer = ask(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            if not answer:
                return None
            named.add(int(answer[1]))
        return named.pop() if len(named) == 1 else None

    def wait_for_master(self, *, other_than: int | None = None, timeout: float = 30.0) -> int:
        """The port of the master the Sentinels agree on (one other than ``other_than``: after a
        failover), once they see it with a live replica link."""

        def agreed() -> int | None:
            port = self.master_port()
            if port is None or port == other_than:
                return None
            return port if self._ready(port, replicas_needed=0) else None

        return poll(agreed, timeout, f"the Sentinels to agree on a master for {self.service}")

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Replicas in sync, every Sentinel knows the others and every replica."""
        port = self.primary.port
        poll(
            lambda: self.master_port() == port and self._ready(port, len(self.replicas)),
            timeout,
            "the Sentinel group to be ready",
        )

    def _ready(self, master: int, replicas_needed: int) -> bool:
        info = ask(master, "INFO", "replication")
        if not isinstance(info, dict) or info.get("role") != "master":
            return False
        linked = sum(
            1
            for k, v in info.items()
            if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
        )
        if linked < replicas_needed:
            return False
        for sentinel in self.sentinels:
            known = ask(sentinel.port, "SENTINEL", "REPLICAS", self.service) or []
            healthy = [r for r in known if "s_down" not in r.get("flags", "")]
            others = ask(sentinel.port, "SENTINEL", "SENTINELS", self.service)
            if len(healthy) < replicas_needed or others is None:
                return False
            if len(others) < len(self.sentinels) - 1:
                return False
        return True

    def stop(self) -> None:
        for process in [*self.sentinels, *self.replicas, self.primary]:
            process.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_sentinel_group(
    workdir: Path,
    *,
    service: str = "phonekey",
    replicas: int = 1,
    sentinels: int = 3,
    quorum: int = 2,
    timeout: float = 30.0,
) -> SentinelGroup:
    """Start a primary, ``replicas`` replicas and ``sentinels`` Sentinels; return once ready."""
    workdir = Path(workdir)
    group = SentinelGroup(service, RedisServer(workdir / "primary"))
    try:
        group.primary.start()
        for n in range(replicas):
            replica = RedisServer(workdir / f"replica{n}", replica_of=group.primary.port)
            group.replicas.append(replica)
            replica.start()
        for n in range(sentinels):
            sentinel = RedisSentinel(
                workdir / f"sentinel{n}",
                service=service,
                master_port=group.primary.port,
                quorum=quorum,
            )
            group.sentinels.append(sentinel)
            sentinel.start()
        group.wait_until_ready(timeout)
    except BaseException:
        group.stop()
        raise
    return group
