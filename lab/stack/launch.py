"""How each kind of stack process is started and known to be ready: its command line and
environment (kept in its ``ProcessRecord`` so a restart repeats them), and the sign it gives.

Processes of ours listen on port 0 and print the port they got (the keyserver through aiohttp's
"Running on" line, the proxy through its ready line), so no other process can take the port in
between; the record is then rewritten to ask for that port, so a restart keeps it. redis-server
and the world need a port number up front: a port found free is tried, and another one if the
process reports it taken.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from lab.processes.app import APP_READY
from lab.processes.base import LOOPBACK, free_port
from lab.processes.keyserver import keyserver_command
from lab.processes.redis_ha import RedisSentinel
from lab.processes.redis_server import READY_MARKER, RedisServer
from lab.proxy.cli import READY as PROXY_READY
from lab.stack import process as stack_process
from lab.stack.spec import ProcessRecord, StackError

SENTINEL_READY = re.compile(rb"\+monitor master")
REDIS_READY = re.compile(re.escape(READY_MARKER))
PORT_TAKEN = re.compile(rb"(?i)address already in use")
PORT_ATTEMPTS = 3
SENTINEL_DOWN_AFTER_MS = 500
SENTINEL_FAILOVER_TIMEOUT_MS = 2000
# Each server restarts with its data (a killed primary that came back empty before Sentinel
# noticed would otherwise hand its empty data set to the replica), and a replica's full sync
# starts at once (Redis 7 waits 5 s for more replicas to share a diskless transfer).
REDIS_ARGS = (
    "--appendonly", "yes",
    "--appendfsync", "everysec",
    "--repl-diskless-sync-delay", "0",
)  # fmt: skip


def url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"


def log_path(directory: Path, name: str) -> str:
    return str(directory / "logs" / f"{name}.log")


def redis_record(directory: Path, name: str, port: int, replica_of: int | None) -> ProcessRecord:
    server = RedisServer(directory / "data" / name, extra_args=REDIS_ARGS, replica_of=replica_of)
    server.port = port
    argv = server.command_line()
    return ProcessRecord(name, "redis", argv, {}, log_path(directory, name), port=port)


def sentinel_record(
    directory: Path, name: str, port: int, *, service: str, master_port: int
) -> ProcessRecord:
    sentinel = RedisSentinel(
        directory / "data" / name,
        service=service,
        master_port=master_port,
        down_after_ms=SENTINEL_DOWN_AFTER_MS,
        failover_timeout_ms=SENTINEL_FAILOVER_TIMEOUT_MS,
    )
    sentinel.port = port
    argv = sentinel.command_line()  # writes its config file, which it rewrites as it learns
    return ProcessRecord(name, "sentinel", argv, {}, log_path(directory, name), port=port)


def keyserver_record(
    directory: Path, name: str, config_file: Path, settings: dict[str, str]
) -> ProcessRecord:
    env = {
        "PHONEKEY_HOST": LOOPBACK,
        "PHONEKEY_PORT": "0",  # the port it got replaces this once it is ready
        "PHONEKEY_DATA_DIR": str(directory / "data" / name),
        **settings,
    }
    argv = keyserver_command("--config", str(config_file))
    return ProcessRecord(name, "keyserver", argv, env, log_path(directory, name))


def proxy_record(directory: Path, name: str, targets: Sequence[int]) -> ProcessRecord:
    shown = [f"{LOOPBACK}:{port}" for port in targets]
    argv = [sys.executable, "-m", "lab.proxy.cli", "--name", name]
    argv += ["--listen-port", "0", "--control-port", "0"]
    for target in shown:
        argv += ["--target", target]
    return ProcessRecord(name, "proxy", argv, {}, log_path(directory, name), targets=shown)


def world_record(directory: Path, port: int, options: Sequence[str]) -> ProcessRecord:
    argv = [sys.executable, "-m", "lab.cli", "world", *options, "--control-port", str(port)]
    record = ProcessRecord("world", "world", argv, {}, log_path(directory, "world"), port=port)
    record.control = url(port)
    record.metrics = f"{url(port)}/metrics"
    return record


def launch(
    record: ProcessRecord, *, on_launch: Callable[[ProcessRecord], object] = lambda _: None
) -> int:
    """Start the recorded command detached, then tell ``on_launch`` (which notes it, so it is
    found again whatever happens next); the log offset its output starts at."""
    record.pid, record.start_ticks, offset = stack_process.spawn(
        record.argv, record.env, Path(record.log)
    )
    on_launch(record)
    return offset


def await_ready(record: ProcessRecord, offset: int, timeout: float) -> None:
    """Return once the process says it is ready (and note the ports it announced)."""
    if record.kind == "redis":
        stack_process.wait_for_line(record, offset, REDIS_READY, timeout)
    elif record.kind == "sentinel":
        stack_process.wait_for_line(record, offset, SENTINEL_READY, timeout)
    elif record.kind == "keyserver":
        found = stack_process.wait_for_line(record, offset, APP_READY, timeout)
        record.port = int(found.group(1))
        record.env["PHONEKEY_PORT"] = str(record.port)
        record.metrics = f"{url(record.port)}/metrics"
    elif record.kind == "proxy":
        found = stack_process.wait_for_line(record, offset, PROXY_READY, timeout)
        record.port, control = int(found.group(1)), int(found.group(2))
        record.control = url(control)
        record.metrics = f"{url(control)}/metrics"
        _set_option(record.argv, "--listen-port", str(record.port))
        _set_option(record.argv, "--control-port", str(control))
    elif record.kind == "world":
        assert record.control is not None
        status = f"{record.control}/status"
        stack_process.wait_until(record, lambda: _warm(status), timeout, "the world warms up")
    else:
        raise StackError(f"unknown process kind {record.kind!r}")


def start_on_free_port(
    make: Callable[[int], ProcessRecord],
    timeout: float,
    *,
    on_launch: Callable[[ProcessRecord], object] = lambda _: None,
) -> ProcessRecord:
    """Start the record ``make(port)`` builds on a port found free; another if it was taken."""
    for attempt in range(PORT_ATTEMPTS):
        record = make(free_port())
        offset = launch(record, on_launch=on_launch)
        try:
            await_ready(record, offset, timeout)
        except StackError:
            stack_process.terminate([record], timeout)
            if attempt + 1 < PORT_ATTEMPTS and _said(record, offset, PORT_TAKEN):
                continue
            raise
        return record
    raise AssertionError("unreachable")


def _said(record: ProcessRecord, offset: int, pattern: re.Pattern[bytes]) -> bool:
    with Path(record.log).open("rb") as source:
        source.seek(offset)
        return pattern.search(source.read()) is not None


def _set_option(argv: list[str], option: str, value: str) -> None:
    argv[argv.index(option) + 1] = value


def _warm(status_url: str) -> bool:
    try:
        with urllib.request.urlopen(status_url, timeout=2.0) as answer:  # noqa: S310 — loopback
            status = json.loads(answer.read())
    except urllib.error.HTTPError as error:  # up, not answering yet
        error.close()
        return False
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return isinstance(status, dict) and status.get("warm") is True
