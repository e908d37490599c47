"""One ``redis-server`` process of our own: a primary or a replica, on a free loopback port,
nothing persisted; killed, paused and resumed as the drills and tests ask."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from lab.processes.base import LOOPBACK, ProcessError, drain_to_file, free_port, wait_for_line

READY_MARKER = b"Ready to accept connections"


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise ProcessError(
            "redis-server not found: install it (Debian: apt-get install redis-server)"
        )
    return path


class RedisServer:
    """One ``redis-server`` on a free loopback port, with nothing persisted to disk; with
    ``replica_of`` (a port on loopback) it starts as that server's replica."""

    ready_marker = READY_MARKER  # what the server prints once it listens

    def __init__(
        self, workdir: Path, *, extra_args: Sequence[str] = (), replica_of: int | None = None
    ) -> None:
        self.workdir = Path(workdir)
        self.extra_args = tuple(extra_args)
        self.replica_of = replica_of
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "redis.log"
        self._drain: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ProcessError("redis-server is not running")
        return self.process.pid

    def start(self, *, timeout: float = 15.0, attempts: int = 3, port: int | None = None) -> Self:
        """Start on a free port, or on ``port`` (a restart where clients expect it)."""
        binary = redis_server_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):  # a port found free may be taken before the server binds it
            self.port = port or free_port()
            args = self._command(binary)
            process = subprocess.Popen(  # noqa: S603 — fixed binary, our own arguments
                args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.workdir
            )
            assert process.stdout is not None
            seen, ready = wait_for_line(process, process.stdout, self.ready_marker, timeout)
            if ready:
                self.process = process
                self._drain = drain_to_file(process.stdout, self.log_path, seen)
                return self
            process.kill()
            process.wait()
            process.stdout.close()
        raise ProcessError(f"redis-server did not become ready ({attempts} attempts)")

    def command_line(self) -> list[str]:
        """The command that runs this server on ``self.port``, for a supervisor that starts it
        itself (the staging stack: detached, output to a log file)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self._command(redis_server_binary())

    def _command(self, binary: str) -> list[str]:
        replica = ["--replicaof", LOOPBACK, str(self.replica_of)] if self.replica_of else []
        return [
            binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--logfile", "",
            "--daemonize", "no",
            *replica,
            *self.extra_args,
        ]  # fmt: skip

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the server hangs with its sockets open (a black-holed dependency)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self, *, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._drain is not None:
            self._drain.join(timeout)
        self.process = None

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            raise ProcessError("redis-server is not running")
        os.kill(self.process.pid, sig)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
