"""The drills' actions: plain synchronous functions that Chaos Toolkit's Python provider calls with
the stack's directory (``stack_dir``, from the experiment's configuration) and their arguments.

Faults come from real processes (SIGKILL, SIGSTOP/SIGCONT through ``lab.stack.stack.Stack``), the
fault proxies' control API, and the world's control API. Every undo is idempotent — safe to run
as a rollback whatever the method got to — and ``start_fault`` / ``end_fault`` write the
``fault`` events the report measures detection and recovery from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.drill.chaos.access import ChaosError, call_world, emit, events_path
from lab.events import read_events
from lab.processes.redis_ha import poll
from lab.stack.process import is_running
from lab.stack.spec import ProcessRecord
from lab.stack.stack import Stack

FAILOVER_TIMEOUT_S = 60.0


def _stack(stack_dir: str) -> Stack:
    return Stack.load(Path(stack_dir))


def _chosen(stack: Stack, kind: str | None, names: list[str] | None) -> list[str]:
    chosen = [*(names or ()), *(stack.names(kind) if kind else ())]
    if not chosen:
        raise ChaosError(f"no process of kind {kind!r} and no names given")
    return list(dict.fromkeys(chosen))


def kill_processes(
    stack_dir: str, kind: str | None = None, names: list[str] | None = None
) -> list[str]:
    """SIGKILL each process of ``kind`` (and each of ``names``); returns once they are gone."""
    stack = _stack(stack_dir)
    chosen = _chosen(stack, kind, names)
    for name in chosen:
        stack.kill(name)
    return chosen


def restart_processes(
    stack_dir: str, kind: str | None = None, names: list[str] | None = None
) -> list[str]:
    """Start again each of those processes that is not running (same argv, port); the others are
    left alone. Returns the names restarted."""
    stack = _stack(stack_dir)
    restarted = []
    for name in _chosen(stack, kind, names):
        if not is_running(stack.process(name)):
            stack.restart(name)
            restarted.append(name)
    return restarted


def pause_processes(
    stack_dir: str, kind: str | None = None, names: list[str] | None = None
) -> list[str]:
    """SIGSTOP each of those processes: alive, holding its sockets, answering nothing."""
    stack = _stack(stack_dir)
    chosen = _chosen(stack, kind, names)
    for name in chosen:
        stack.pause(name)
    return chosen


def resume_processes(
    stack_dir: str, kind: str | None = None, names: list[str] | None = None
) -> list[str]:
    """SIGCONT each of those processes that is running (a no-op for one not paused)."""
    stack = _stack(stack_dir)
    resumed = []
    for name in _chosen(stack, kind, names):
        if is_running(stack.process(name)):
            stack.resume(name)
            resumed.append(name)
    return resumed


def _redis_at(stack: Stack, port: int) -> ProcessRecord | None:
    """The redis-server behind ``port``: itself, or the target of the proxy listening there."""
    records = [stack.process(name) for name in stack.names("redis")]
    proxies = [stack.process(name) for name in stack.names("proxy")]
    for proxy in proxies:
        if proxy.port == port and proxy.targets:
            port = int(proxy.targets[0].rsplit(":", 1)[1])
    return next((r for r in records if r.port == port), None)


def kill_redis_primary(stack_dir: str) -> str:
    """SIGKILL the redis-server the Sentinels name as master; its name."""
    stack = _stack(stack_dir)
    port = stack.sentinel_master_port()
    primary = _redis_at(stack, port) if port is not None else None
    if primary is None:
        raise ChaosError(f"no redis-server of the stack is the Sentinels' master (port {port})")
    stack.kill(primary.name)
    return primary.name


def wait_for_new_primary(stack_dir: str, timeout_s: float = FAILOVER_TIMEOUT_S) -> str:
    """Wait until the Sentinels' master is a running redis-server (after the old one was killed:
    a promoted replica); its name."""
    stack = _stack(stack_dir)

    def promoted() -> str | None:
        port = stack.sentinel_master_port()
        record = _redis_at(stack, port) if port is not None else None
        return record.name if record is not None and is_running(record) else None

    return poll(promoted, timeout_s, "the Sentinels to promote a running replica")


def set_proxy_faults(
    stack_dir: str,
    proxy: str,
    latency_ms: float = 0.0,
    jitter_ms: float = 0.0,
    black_hole: bool = False,
    reset: bool = False,
) -> dict[str, Any]:
    """Replace the faults of the fault proxy named ``proxy``; the proxy's answer."""
    return (
        _stack(stack_dir)
        .proxy(proxy)
        .set(latency_ms=latency_ms, jitter_ms=jitter_ms, black_hole=black_hole, reset=reset)
    )


def clear_proxy_faults(stack_dir: str, proxies: list[str] | None = None) -> list[str]:
    """Clear the faults of the named proxies (default: every proxy of the stack)."""
    stack = _stack(stack_dir)
    chosen = proxies if proxies is not None else stack.names("proxy")
    for name in chosen:
        stack.proxy(name).clear()
    return list(chosen)


def _open_faults(stack_dir: str) -> set[str]:
    started: set[str] = set()
    for event in read_events(events_path(stack_dir), live=True):
        if event["kind"] == "fault":
            (started.add if event["phase"] == "start" else started.discard)(event["name"])
    return started


def start_fault(stack_dir: str, name: str) -> dict[str, Any]:
    """Write the ``fault`` start event (once the fault is in place)."""
    return emit(stack_dir, "fault", name=name, phase="start")


def end_fault(stack_dir: str, name: str) -> bool:
    """Write the ``fault`` end event if that fault is still open; whether it wrote one."""
    if name not in _open_faults(stack_dir):
        return False
    emit(stack_dir, "fault", name=name, phase="end")
    return True


def surge(stack_dir: str, factor: float, seconds: float) -> dict[str, Any]:
    """Multiply every rate of the world's work by ``factor`` for ``seconds``."""
    return call_world(stack_dir, "POST", "/surge", {"factor": factor, "seconds": seconds})


def end_surge(stack_dir: str) -> dict[str, Any]:
    """Back to the normal rates at once (the world takes no zero-second surge: factor 1 is the
    normal pace)."""
    return call_world(stack_dir, "POST", "/surge", {"factor": 1, "seconds": 1})


def _vehicles(stack_dir: str) -> dict[str, dict[str, Any]]:
    vehicles = call_world(stack_dir, "GET", "/status").get("vehicles")
    if not isinstance(vehicles, dict) or not vehicles:
        raise ChaosError("the world's status lists no vehicles")
    return dict(sorted(vehicles.items()))


def jump_clocks(stack_dir: str, cars: int, jump_s: float) -> dict[str, float]:
    """Jump the wall clock of the first ``cars`` cars (by VIN) by ``jump_s``; their offsets."""
    chosen = list(_vehicles(stack_dir))[: max(1, cars)]
    offsets = {}
    for vin in chosen:
        answer = call_world(stack_dir, "POST", "/clock", {"vin": vin, "jump_s": jump_s})
        offsets[vin] = float(answer["wall_offset_s"][vin])
    return offsets


def reset_clocks(stack_dir: str) -> list[str]:
    """Jump every car whose wall clock is off back to true time (a clock reset); their VINs."""
    reset = []
    for vin, car in _vehicles(stack_dir).items():
        offset = float(car.get("wall_offset_s") or 0.0)
        if offset:
            call_world(stack_dir, "POST", "/clock", {"vin": vin, "jump_s": -offset})
            reset.append(vin)
    return reset


def arm_failpoint(stack_dir: str, point: str) -> str:
    """Arm ``point`` on the first online car that has not crashed yet; its VIN."""
    for vin, car in _vehicles(stack_dir).items():
        if car.get("online") and not car.get("crashes") and car.get("failpoint") is None:
            call_world(stack_dir, "POST", "/failpoint", {"vin": vin, "point": point})
            return vin
    raise ChaosError("no online car without a crash to arm a failpoint on")


def wait_for_agent_crash(stack_dir: str, timeout_s: float) -> list[str]:
    """Wait until the armed failpoint fired: no car armed any more and at least one agent
    crashed (the world's own traffic sends the car a remote command: its owner's remote locks
    from afar). The VINs of the cars whose agent crashed."""

    def fired() -> list[str] | None:
        vehicles = _vehicles(stack_dir)
        if any(car.get("failpoint") is not None for car in vehicles.values()):
            return None
        crashed = [vin for vin, car in vehicles.items() if car.get("crashes")]
        return crashed or None

    return poll(fired, timeout_s, "the armed car to execute a remote command and crash")


def disarm_failpoints(stack_dir: str) -> list[str]:
    """Disarm every armed failpoint; the VINs disarmed."""
    armed = [vin for vin, car in _vehicles(stack_dir).items() if car.get("failpoint")]
    for vin in armed:
        call_world(stack_dir, "POST", "/failpoint", {"vin": vin, "point": None})
    return armed
