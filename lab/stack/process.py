"""The staging stack's processes at the operating-system level: start one detached (its own
session, output appended to its log file), know whether a recorded pid is still *that* process,
signal it, wait for it to be gone, and wait for the line it prints when ready.

A pid is taken for the recorded process only if ``/proc/PID/stat`` shows the start time recorded
when it was started and its command line still names the same program, so a pid the system has
given to another process since is never signalled. A process that exited but was not reaped yet
(a zombie) counts as gone; if it is a child of ours it is reaped on the way.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from lab.stack.spec import ProcessRecord, StackError

POLL_S = 0.02
LOG_TAIL_BYTES = 2000


def spawn(argv: Sequence[str], env: Mapping[str, str], log: Path) -> tuple[int, int, int]:
    """Start ``argv`` detached, with ``env`` set on top of ours (our PHONEKEY_* removed):
    (pid, start ticks, the log's size before it started)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PHONEKEY_")}
    environment.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        offset = os.fstat(fd).st_size
        pid = os.posix_spawn(
            argv[0],
            list(argv),
            environment,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,  # a new session: the parent's end or a Ctrl-C does not reach it
        )
    except OSError as error:
        raise StackError(f"cannot start {argv[0]}: {error.strerror}") from None
    finally:
        os.close(fd)
    ticks = start_ticks(pid)
    if ticks is None:  # gone already and reaped by someone: it did not start
        raise StackError(f"{argv[0]} exited at once (see {log})")
    return pid, ticks, offset


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of ``pid``, None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def start_ticks(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[1]


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is an exited child of ours (else nothing)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _program(argv0: str) -> str:
    return os.path.basename(argv0)


def is_running(record: ProcessRecord) -> bool:
    """Whether the recorded process is alive (running or stopped, not a zombie)."""
    if record.pid is None or record.start_ticks is None:
        return False
    _reap(record.pid)
    stat = _stat(record.pid)
    if stat is None or stat[0] in ("Z", "X") or stat[1] != record.start_ticks:
        return False
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if not cmdline:  # in the middle of its exec (just spawned): the start time has to do
        return True
    # redis-server rewrites its title ("redis-server 127.0.0.1:PORT"): compare the program only
    shown = cmdline.split(b"\0", 1)[0].split(b" ", 1)[0].decode(errors="replace")
    return bool(record.argv) and _program(shown) == _program(record.argv[0])


def send(record: ProcessRecord, sig: signal.Signals) -> bool:
    """Signal the recorded process if it is still that process; whether it was signalled."""
    if not is_running(record):
        return False
    assert record.pid is not None
    try:
        os.kill(record.pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(records: Iterable[ProcessRecord], timeout: float) -> list[ProcessRecord]:
    """Wait until every process is gone, at most ``timeout``: those still alive."""
    waiting = list(records)
    deadline = time.monotonic() + timeout
    while True:
        waiting = [r for r in waiting if is_running(r)]
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(POLL_S)


def terminate(records: Sequence[ProcessRecord], timeout: float) -> None:
    """SIGTERM (and SIGCONT, so a paused one can act on it), SIGKILL after ``timeout``; returns
    once every one is gone."""
    for record in records:
        if send(record, signal.SIGTERM):
            send(record, signal.SIGCONT)
    left = wait_gone(records, timeout)
    for record in left:
        send(record, signal.SIGKILL)
    left = wait_gone(left, timeout)
    if left:
        names = ", ".join(f"{r.name} (pid {r.pid})" for r in left)
        raise StackError(f"still running after SIGKILL: {names}")


def wait_for_line(
    record: ProcessRecord, offset: int, pattern: re.Pattern[bytes], timeout: float
) -> re.Match[bytes]:
    """The first match of ``pattern`` in what the process wrote to its log since ``offset``;
    raises StackError if it exits or ``timeout`` passes first."""
    log = Path(record.log)
    deadline = time.monotonic() + timeout
    seen = b""
    with log.open("rb") as source:
        source.seek(offset)
        while True:
            seen += source.read()
            found = pattern.search(seen)
            if found:
                return found
            if not is_running(record):
                seen += source.read()  # its last words may name the reason
                if found := pattern.search(seen):
                    return found
                raise StackError(f"{record.name} exited while starting: {last_line(seen)}")
            if time.monotonic() >= deadline:
                raise StackError(f"{record.name} not ready after {timeout:g} s (log: {log})")
            time.sleep(POLL_S)


def wait_until(
    record: ProcessRecord, condition: Callable[[], bool], timeout: float, what: str
) -> None:
    """Poll ``condition`` while the process lives, at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not is_running(record):
            raise StackError(f"{record.name} exited while {what} (log: {record.log})")
        if time.monotonic() >= deadline:
            raise StackError(f"timed out after {timeout:g} s: {what} (log: {record.log})")
        time.sleep(0.1)


def last_line(output: bytes) -> str:
    lines = [line for line in output[-LOG_TAIL_BYTES:].splitlines() if line.strip()]
    return lines[-1].decode(errors="replace").strip() if lines else "no output"
