"""What a staging stack is: the request (``StackSpec``) and the record of what runs
(``StackState``, one ``ProcessRecord`` per process), kept in ``DIR/stack.json``.

stack.json is written atomically (a temporary file, then a rename), so a reader in another process
(``phonekey stack status``, a drill's probe) sees the old record or the new one, never half.
A record holds what is needed to find the process again (pid and its start time, so a recycled pid
is never taken for it) and to start it again the same way (argv, the environment set on top of the
caller's, the port).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from lab.errors import LabError

Variant = Literal["embedded", "ha"]
VARIANTS: tuple[Variant, ...] = ("embedded", "ha")
KINDS = ("redis", "sentinel", "keyserver", "proxy", "world")
STATE_FILE = "stack.json"
DEFAULT_DIR = Path(".phonekey-stack")
MAX_KEYSERVERS = 8
MAX_CARS = 2000
MAX_PHONES = 4000
MAX_STATE_BYTES = 1 << 20  # a stack.json larger than this is not ours


class StackError(LabError, RuntimeError):
    """The stack could not do what it was asked; the message is one line for a person."""


@dataclass(frozen=True)
class StackSpec:
    """What ``Stack.up`` starts. ``keyservers`` None: 1 (embedded) or 2 (ha)."""

    variant: Variant = "embedded"
    keyservers: int | None = None
    cars: int = 8
    phones: int = 16
    world: bool = True
    redis_wait_replicas: int = 0  # keyserver setting: WAIT for this many replicas on each write
    keyserver_log_level: str = "warning"
    start_timeout_s: float = 30.0  # each process (and the Sentinel group) to be ready
    warm_timeout_s: float = 300.0  # the world to say it is warm

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise StackError(f"unknown variant {self.variant!r} (one of: {', '.join(VARIANTS)})")
        count = self.keyserver_count
        if self.variant == "embedded" and count != 1:
            raise StackError("the embedded variant runs exactly one keyserver (SQLite)")
        if not 1 <= count <= MAX_KEYSERVERS:
            raise StackError(f"keyservers: 1…{MAX_KEYSERVERS}")
        if self.variant == "ha" and count < 2:
            raise StackError("the ha variant runs at least two keyservers")
        if not 1 <= self.cars <= MAX_CARS or not 1 <= self.phones <= MAX_PHONES:
            raise StackError(f"cars: 1…{MAX_CARS}, phones: 1…{MAX_PHONES}")
        if not 0 <= self.redis_wait_replicas <= 1:
            raise StackError("redis_wait_replicas: 0 or 1 (the stack runs one replica)")
        if min(self.start_timeout_s, self.warm_timeout_s) <= 0:
            raise StackError("timeouts must be positive")

    @property
    def keyserver_count(self) -> int:
        if self.keyservers is not None:
            return self.keyservers
        return 2 if self.variant == "ha" else 1


@dataclass
class ProcessRecord:
    name: str
    kind: str
    argv: list[str]
    env: dict[str, str]  # set on top of the caller's environment (PHONEKEY_* removed first)
    log: str
    pid: int | None = None
    start_ticks: int | None = None  # /proc/PID/stat start time: the pid's identity
    port: int | None = None
    metrics: str | None = None
    control: str | None = None
    targets: list[str] | None = None  # a proxy's HOST:PORT targets

    @classmethod
    def from_json(cls, data: Any) -> ProcessRecord:
        if not isinstance(data, dict):
            raise StackError("stack.json: a process entry is not an object")
        known = {f.name for f in fields(cls)}
        try:
            record = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as error:
            raise StackError(f"stack.json: bad process entry ({error})") from None
        if not isinstance(record.name, str) or not isinstance(record.argv, list):
            raise StackError("stack.json: a process entry without name or argv")
        return record


@dataclass
class StackState:
    variant: Variant
    dir: str
    started_at: float
    root_key: str  # base64url of the root public key's x||y, as `phonekey fleet --root-key`
    provisioning_secret_file: str
    keys_dir: str
    events: str
    processes: list[ProcessRecord] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)  # phones, cars: the edge proxies
    redis: dict[str, Any] | None = None  # ha: {"service": ..., "sentinels": ["host:port", ...]}
    stopped_at: float | None = None  # set by down

    @property
    def path(self) -> Path:
        return Path(self.dir) / STATE_FILE

    def save(self) -> None:
        """Write stack.json atomically."""
        text = json.dumps(asdict(self), indent=2) + "\n"
        directory = Path(self.dir)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".stack.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, directory: Path) -> StackState:
        path = Path(directory) / STATE_FILE
        try:
            with path.open("rb") as source:
                raw = source.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            raise StackError(f"no stack in {directory} ({path} is missing)") from None
        except OSError as error:
            raise StackError(f"cannot read {path}: {error.strerror}") from None
        if len(raw) > MAX_STATE_BYTES:
            raise StackError(f"{path} is too large to be a stack record")
        try:
            data = json.loads(raw)
        except ValueError:
            raise StackError(f"{path} is not JSON") from None
        if not isinstance(data, dict):
            raise StackError(f"{path} is not a stack record")
        processes = [ProcessRecord.from_json(p) for p in data.pop("processes", [])]
        known = {f.name for f in fields(cls)} - {"processes"}
        try:
            state = cls(**{k: v for k, v in data.items() if k in known}, processes=processes)
        except TypeError as error:
            raise StackError(f"{path} is not a stack record ({error})") from None
        if state.variant not in VARIANTS:
            raise StackError(f"{path}: unknown variant {state.variant!r}")
        return state

    def record(self, name: str) -> ProcessRecord:
        for record in self.processes:
            if record.name == name:
                return record
        raise StackError(f"no process named {name!r} in the stack")
