"""The local staging stack: every process of a phonekey deployment on one machine, on loopback
ports, detached from whoever started it, and described by ``DIR/stack.json`` so that drills, the
demo, ``phonekey stack status|down`` and tests find it again.

Variants: ``embedded`` (one keyserver on SQLite) and ``ha`` (a Redis primary, a replica and three
Sentinels, ≥ 2 keyservers following the Sentinels). In both, phones and cars reach the keyservers
through fault proxies of our own (``phones-edge``, ``cars-edge``: round robin over every
keyserver); in ``ha`` the Sentinels know the primary by the ``redis-path`` proxy's port, so every
client that asks them for the master goes through that proxy until a failover promotes the
replica (at its own port). The world (simulated cars and phones) starts last.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import secrets
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from keycore import ROLE_MAX_LIFETIME
from keycore.cose import point_bytes
from keycore.encoding import b64url_encode
from keyserver.keyring import KeyRingStore
from lab.processes.base import LOOPBACK, ProcessError
from lab.processes.keyserver import STAGING_RATE_LIMITS
from lab.processes.redis_ha import ask, poll
from lab.proxy.control import ProxyControl, ProxyControlError
from lab.stack import launch as launching
from lab.stack import process as stack_process
from lab.stack.spec import DEFAULT_DIR, STATE_FILE, ProcessRecord, StackError, StackSpec, StackState

SERVICE = "phonekey"  # the master's name in the Sentinels' configuration
SENTINELS = 3
QUORUM = 2
STOP_TIMEOUT_S = 10.0
RESTART_TIMEOUT_S = 30.0
# what up creates in DIR (and removes there before a fresh start)
OWNED = (
    "stack.json", "secret", "keyserver.toml", "events.jsonl", "logs", "keys-admin", "keys", "data",
    "world",
)  # fmt: skip
# down stops the world first and Redis last: each stage still has what it depends on
_STAGES = ("world", "edge", "keyserver", "sentinel", "redis-path", "redis")


class Stack:
    """``Stack.up(StackSpec(variant="ha"), dir)`` or ``Stack.load(dir)``; ``with`` downs it."""

    def __init__(self, state: StackState) -> None:
        self.state = state

    # -- bringing it up ---------------------------------------------------------------------

    @classmethod
    def up(cls, spec: StackSpec, directory: Path | str = DEFAULT_DIR) -> Stack:
        """Start every process, wait until each is ready, write stack.json. On failure
        everything started is stopped again and StackError says what went wrong."""
        if spec.world and importlib.util.find_spec("lab.world.world") is None:
            raise StackError(
                "the world (lab/world/world.py) is not available: start with --no-world"
            )
        directory = Path(directory).resolve()
        _prepare(directory)
        secret_file = directory / "secret"
        secret = secrets.token_urlsafe(24)
        _write_private(secret_file, secret)
        config_file = directory / "keyserver.toml"
        _write_private(config_file, f'provisioning_secret = "{secret}"\n')
        # as an operator would: the ring (with the root key) in an admin directory, and only
        # its serving part where the keyservers read it
        admin = KeyRingStore(directory / "keys-admin")
        admin.init(
            now=int(time.time()),
            key_lifetime=365 * 86_400,
            max_token_lifetime=max(ROLE_MAX_LIFETIME.values()),
        )
        keys = directory / "keys"
        ring = admin.publish(keys)
        events = directory / "events.jsonl"
        events.touch()
        state = StackState(
            variant=spec.variant,
            dir=str(directory),
            started_at=time.time(),
            root_key=b64url_encode(point_bytes(ring.root_key)),
            provisioning_secret_file=str(secret_file),
            keys_dir=str(keys),
            events=str(events),
        )
        state.save()
        stack = cls(state)
        try:
            settings = {
                "PHONEKEY_KEY_DIR": str(keys),
                **STAGING_RATE_LIMITS,  # the world's phones all come from 127.0.0.1
                "PHONEKEY_LOG_LEVEL": spec.keyserver_log_level,
                "PHONEKEY_SHUTDOWN_GRACE_S": "3",
                # a car whose connection went silent (a partition) is dropped within ~7.5 s, so
                # commands for it are queued with the car_unreachable hint instead of being
                # "delivered" into a dead socket (production: 30 s)
                "PHONEKEY_CHANNEL_HEARTBEAT_S": "5",
            }
            if spec.variant == "ha":
                settings.update(stack._start_redis(spec))
            stack._start_keyservers(spec, config_file, settings)
            if spec.world:
                stack._start_world(spec)
        except BaseException:
            with contextlib.suppress(StackError):
                stack.down()
            raise
        state.save()
        return stack

    def _track(self, record: ProcessRecord) -> ProcessRecord:
        """Note a process in stack.json as soon as it runs, so down finds it whatever happens."""
        self.state.processes = [r for r in self.state.processes if r.name != record.name]
        self.state.processes.append(record)
        self.state.save()
        return record

    def _start_many(self, records: list[ProcessRecord], timeout: float) -> None:
        """Start them all at once, then wait for each."""
        offsets = [launching.launch(r, on_launch=self._track) for r in records]
        for record, offset in zip(records, offsets, strict=True):
            launching.await_ready(record, offset, timeout)
        self.state.save()

    def _start_on_free_port(
        self, make: Callable[[int], ProcessRecord], timeout: float
    ) -> ProcessRecord:
        record = launching.start_on_free_port(make, timeout, on_launch=self._track)
        self.state.save()
        return record

    def _start_redis(self, spec: StackSpec) -> dict[str, str]:
        directory, timeout = self.directory, spec.start_timeout_s
        primary = self._start_on_free_port(
            lambda port: launching.redis_record(directory, "redis-0", port, None), timeout
        )
        assert primary.port is not None
        path = launching.proxy_record(directory, "redis-path", [primary.port])
        self._start_many([path], timeout)
        via = path.port
        assert via is not None
        # the replica and the Sentinels know the primary only by the proxy's port
        self._start_on_free_port(
            lambda port: launching.redis_record(directory, "redis-1", port, via), timeout
        )
        sentinels = [
            self._start_on_free_port(
                functools.partial(
                    launching.sentinel_record, directory, f"sentinel-{n}", service=SERVICE,
                    master_port=via,
                ),
                timeout,
            )
            for n in range(SENTINELS)
        ]  # fmt: skip
        addresses = [f"{LOOPBACK}:{s.port}" for s in sentinels]
        self.state.redis = {"service": SERVICE, "sentinels": addresses, "primary_via": via}
        self.state.save()
        poll(lambda: self._redis_ready(via), timeout, "the Sentinels to see primary and replica")
        return {
            "PHONEKEY_REDIS_SENTINELS": ",".join(addresses),
            "PHONEKEY_REDIS_SERVICE": SERVICE,
            "PHONEKEY_REDIS_WAIT_REPLICAS": str(spec.redis_wait_replicas),
        }

    def _redis_ready(self, master: int) -> bool:
        info = ask(master, "INFO", "replication")
        if not isinstance(info, dict) or info.get("role") != "master":
            return False
        linked = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        if not any(replica.get("state") == "online" for replica in linked):
            return False
        for name in self.names("sentinel"):
            port = self.process(name).port
            assert port is not None
            named = ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            replicas = ask(port, "SENTINEL", "REPLICAS", SERVICE) or []
            others = ask(port, "SENTINEL", "SENTINELS", SERVICE) or []
            healthy = [r for r in replicas if "s_down" not in r.get("flags", "")]
            if not named or int(named[1]) != master:
                return False
            if not healthy or len(others) < SENTINELS - 1:
                return False
        return True

    def _start_keyservers(
        self, spec: StackSpec, config_file: Path, settings: dict[str, str]
    ) -> None:
        directory = self.directory
        keyservers = [
            launching.keyserver_record(directory, f"keyserver-{n}", config_file, settings)
            for n in range(spec.keyserver_count)
        ]
        self._start_many(keyservers, spec.start_timeout_s)
        ports = [k.port for k in keyservers if k.port is not None]
        edges = [launching.proxy_record(directory, name, ports) for name in _EDGES]
        self._start_many(edges, spec.start_timeout_s)
        self.state.urls = {
            "phones": launching.url(_port(self.process("phones-edge"))),
            "cars": launching.url(_port(self.process("cars-edge"))),
        }
        self.state.save()

    def _start_world(self, spec: StackSpec) -> None:
        state = self.state
        options = [
            "--phones-url", state.urls["phones"],
            "--cars-url", state.urls["cars"],
            f"--root-key={state.root_key}",  # with "=": a key may begin with "-"
            "--provisioning-secret-file", state.provisioning_secret_file,
            "--cars", str(spec.cars),
            "--phones", str(spec.phones),
            "--events", state.events,
            "--state-dir", str(self.directory / "world"),
        ]  # fmt: skip
        self._start_on_free_port(
            lambda port: launching.world_record(self.directory, port, options),
            spec.warm_timeout_s,
        )

    # -- finding it again -------------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path | str = DEFAULT_DIR) -> Stack:
        return cls(StackState.load(Path(directory).resolve()))

    @property
    def directory(self) -> Path:
        return Path(self.state.dir)

    @property
    def variant(self) -> str:
        return self.state.variant

    @property
    def urls(self) -> dict[str, str]:
        return dict(self.state.urls)

    def process(self, name: str) -> ProcessRecord:
        return self.state.record(name)

    def names(self, kind: str | None = None) -> list[str]:
        return [r.name for r in self.state.processes if kind is None or r.kind == kind]

    def refresh(self) -> None:
        """Read stack.json again: another ``Stack`` on the same directory (a drill's action) may
        have restarted a process since. The fault methods and ``down`` do this first."""
        with contextlib.suppress(StackError):
            self.state = StackState.load(self.directory)

    def alive(self, name: str) -> bool:
        self.refresh()
        return stack_process.is_running(self.process(name))

    def status(self) -> list[dict[str, Any]]:
        """Each process as in stack.json, with ``alive``."""
        self.refresh()
        return [{**asdict(r), "alive": stack_process.is_running(r)} for r in self.state.processes]

    # -- faults -----------------------------------------------------------------------------

    def kill(self, name: str) -> bool:
        """SIGKILL, as a crash would; returns once it is gone (False: it was not running)."""
        self.refresh()
        record = self.process(name)
        if not stack_process.send(record, signal.SIGKILL):
            return False
        if stack_process.wait_gone([record], STOP_TIMEOUT_S):
            raise StackError(f"{name} still runs after SIGKILL")
        return True

    def pause(self, name: str) -> None:
        """SIGSTOP: it hangs with its sockets open."""
        self.refresh()
        if not stack_process.send(self.process(name), signal.SIGSTOP):
            raise StackError(f"{name} is not running")

    def resume(self, name: str) -> bool:
        self.refresh()
        return stack_process.send(self.process(name), signal.SIGCONT)

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM (SIGKILL after ``timeout``); returns once it is gone."""
        self.refresh()
        record = self.process(name)
        running = stack_process.is_running(record)
        stack_process.terminate([record], timeout)
        return running

    def restart(self, name: str, timeout: float | None = None) -> ProcessRecord:
        """Stop it if it runs, start it again with the same command, environment and port,
        wait until it is ready, and update stack.json."""
        self.refresh()
        record = self.process(name)
        stack_process.terminate([record], STOP_TIMEOUT_S)
        if timeout is None:
            timeout = 300.0 if record.kind == "world" else RESTART_TIMEOUT_S
        offset = launching.launch(record)
        self.state.save()
        launching.await_ready(record, offset, timeout)
        self.state.save()
        if record.port is not None:
            self._until_proxies_listen(f"{LOOPBACK}:{record.port}", timeout)
        return record

    def _until_proxies_listen(self, target: str, timeout: float) -> None:
        """Until every running proxy in front of ``target`` listens again: one that found none
        of its targets accepting stopped listening, and opens again within a health interval."""
        for name in self.names("proxy"):
            proxy = self.process(name)
            if target not in (proxy.targets or ()) or not stack_process.is_running(proxy):
                continue
            try:
                poll(functools.partial(_listens, self.proxy(name)), timeout, f"{name} to listen")
            except ProcessError as error:
                raise StackError(str(error)) from None

    def proxy(self, name: str) -> ProxyControl:
        record = self.process(name)
        if record.kind != "proxy" or record.control is None:
            raise StackError(f"{name} is not a proxy")
        return ProxyControl(record.control)

    def sentinel_master_port(self) -> int | None:
        """The master's port as a quorum of the Sentinels names it (None: no quorum agrees)."""
        if self.state.redis is None:
            raise StackError("the embedded variant has no Sentinels")
        self.refresh()
        named: Counter[int] = Counter()
        for name in self.names("sentinel"):
            record = self.process(name)
            if record.port is None or not stack_process.is_running(record):
                continue
            answer = ask(record.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            if answer:
                named[int(answer[1])] += 1
        if not named:
            return None
        port, votes = named.most_common(1)[0]
        return port if votes >= QUORUM else None

    def wait_for_master(self, *, other_than: int | None = None, timeout: float = 30.0) -> int:
        """The master's port once a quorum of Sentinels names one (other than ``other_than``:
        after a failover) and it answers as a master."""

        def agreed() -> int | None:
            port = self.sentinel_master_port()
            if port is None or port == other_than:
                return None
            info = ask(port, "INFO", "replication")
            return port if isinstance(info, dict) and info.get("role") == "master" else None

        return poll(agreed, timeout, "the Sentinels to agree on a master")

    # -- taking it down ---------------------------------------------------------------------

    def down(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop every process (SIGTERM, SIGKILL after ``timeout``), stage by stage; returns once
        each is gone. Safe to call again."""
        self.refresh()
        for stage in _STAGES:
            in_stage = [r for r in self.state.processes if _stage(r) == stage]
            stack_process.terminate(in_stage, timeout)
        self.state.stopped_at = time.time()
        self.state.save()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()


_EDGES = ("phones-edge", "cars-edge")


def _listens(control: ProxyControl) -> bool:
    try:
        return control.get()["stats"].get("listening") is not False
    except ProxyControlError:
        return False


def _stage(record: ProcessRecord) -> str:
    if record.kind == "proxy":
        return "redis-path" if record.name == "redis-path" else "edge"
    return record.kind


def _port(record: ProcessRecord) -> int:
    if record.port is None:
        raise StackError(f"{record.name} has no port")
    return record.port


def _prepare(directory: Path) -> None:
    """Make ``directory`` ready for a fresh stack: refuse if one runs there, or if it holds
    files of the names we use without being a stack directory; else remove the last run's."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / STATE_FILE).exists():
        previous = StackState.load(directory)
        running = [r.name for r in previous.processes if stack_process.is_running(r)]
        if running:
            raise StackError(
                f"a stack runs in {directory} ({', '.join(running)}): take it down first"
            )
    else:
        present = [name for name in OWNED if (directory / name).exists()]
        if present:
            raise StackError(
                f"{directory} holds {', '.join(present)} but no stack.json: use another directory"
            )
    for name in OWNED:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
