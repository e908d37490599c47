"""Real server processes started by the code that needs them: redis-server (primary or replica;
Sentinel is in ``deploy.redis_ha``), and our own aiohttp applications (the keyserver, the
benchmark's reference servers).

Tests and the staging stack start their own ``redis-server`` on free loopback ports and stop it
after, so drills can kill, pause and resume it. Readiness is awaited by reading the server's own
"Ready to accept connections" (or aiohttp's "Running on …") line, never by sleeping.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from deploy.errors import LabError

READY_MARKER = b"Ready to accept connections"
LOOPBACK = "127.0.0.1"
# what aiohttp's web.run_app prints once its site listens (with the port it was given)
APP_READY = re.compile(rb"Running on http://127\.0\.0\.1:([0-9]+)[^0-9]")


class ProcessError(LabError, RuntimeError):
    """A server process could not be found or started; the message is one line for a person."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (callers retry if someone takes it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


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
            seen, ready = _wait_for_line(process, process.stdout, self.ready_marker, timeout)
            if ready:
                self.process = process
                self._drain = _drain_to_file(process.stdout, self.log_path, seen)
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


class AppServer:
    """One aiohttp application process of ours (``web.run_app``) on a loopback port it picks.

    The command must make the app listen on 127.0.0.1 port 0: aiohttp's "Running on
    http://127.0.0.1:<port>" line then says which port it got, so no other process can take the
    port in between. Its output (the app's logs) is copied to ``log_path``.
    """

    def __init__(
        self, args: Sequence[str], *, workdir: Path, env: Mapping[str, str], name: str
    ) -> None:
        self.args = tuple(args)
        self.workdir = Path(workdir)
        self.env = dict(env)
        self.name = name
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{name}.log"
        self._drain: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ProcessError(f"{self.name} is not running")
        return self.process.pid

    def start(self, *, timeout: float = 30.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(  # noqa: S603 — our own interpreter and module
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self.env,
        )
        assert process.stdout is not None
        seen, ready = _wait_for_line(process, process.stdout, APP_READY, timeout)
        if not ready:
            if process.poll() is None:
                process.kill()
            process.wait()
            output = seen + process.stdout.read()
            self.log_path.write_bytes(output)
            process.stdout.close()
            # the last line says why, in the message itself: the log may live in a temporary
            # folder its caller removes (a benchmark's) before anyone reads it
            why = last_line(output)
            said = (
                f'; it said: "{why}"'
                if why
                else (f"; it exited {process.returncode}" if process.returncode else "")
            )
            raise ProcessError(
                f"{self.name} did not become ready within {timeout:g} s{said}"
                f" (its output: {self.log_path})"
            )
        announced = APP_READY.search(seen)
        assert announced is not None
        self.port = int(announced.group(1))
        self.process = process
        self._drain = _drain_to_file(process.stdout, self.log_path, seen)
        return self

    def stop(self, *, timeout: float = 15.0) -> None:
        """SIGTERM (the app drains in-flight requests and exits), SIGKILL if it does not."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._drain is not None:
            self._drain.join(timeout)
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _wait_for_line(
    process: subprocess.Popen[bytes],
    stream: IO[bytes],
    marker: bytes | re.Pattern[bytes],
    timeout: float,
) -> tuple[bytes, bool]:
    """Read ``stream`` until it holds ``marker``: (the output so far, whether the marker came
    before the process exited or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    seen = b""
    fd = stream.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (marker not in seen) if isinstance(marker, bytes) else not marker.search(seen):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return seen, False
            chunk = os.read(fd, 65536)
            if not chunk:  # the process closed its output: it exited
                process.wait()
                return seen, False
            seen += chunk
    return seen, True


def last_line(output: bytes, limit: int = 200) -> str:
    """The last non-blank line of a process's output, printable and at most ``limit`` chars."""
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    text = "".join(c if c.isprintable() else "?" for c in last)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _drain_to_file(stream: IO[bytes], path: Path, already: bytes) -> threading.Thread:
    """Keep reading the server's output into ``path`` so a full pipe never blocks it."""

    def copy() -> None:
        with path.open("ab") as log:
            log.write(already)
            for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
                log.write(chunk)
                log.flush()
        stream.close()

    thread = threading.Thread(target=copy, name=f"drain-{path.name}", daemon=True)
    thread.start()
    return thread
