"""One aiohttp application process of ours (the keyserver, the benchmark's reference servers) on
the loopback port it picks itself and announces."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from lab.processes.base import LOOPBACK, ProcessError, drain_to_file, last_line, wait_for_line

# what aiohttp's web.run_app prints once its site listens (with the port it was given)
APP_READY = re.compile(rb"Running on http://127\.0\.0\.1:([0-9]+)[^0-9]")


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
        seen, ready = wait_for_line(process, process.stdout, APP_READY, timeout)
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
        self._drain = drain_to_file(process.stdout, self.log_path, seen)
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
