"""Real server processes started by the code that needs them: redis-server (primary or replica,
``lab.processes.redis_server``; Sentinel is in ``lab.processes.redis_ha``), and our own aiohttp
applications (``lab.processes.app``: the keyserver, ``lab.processes.keyserver``, and the
benchmark's reference servers). This module holds what they share: the loopback address, free
ports, the error, and waiting for a process's ready line while keeping its output in a log.

Tests and the staging stack start their own ``redis-server`` on free loopback ports and stop it
after, so drills can kill, pause and resume it. Readiness is awaited by reading the server's own
"Ready to accept connections" (or aiohttp's "Running on …") line, never by sleeping.
"""

from __future__ import annotations

import os
import re
import selectors
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from lab.errors import LabError

LOOPBACK = "127.0.0.1"


class ProcessError(LabError, RuntimeError):
    """A server process could not be found or started; the message is one line for a person."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (callers retry if someone takes it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_line(
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


def drain_to_file(stream: IO[bytes], path: Path, already: bytes) -> threading.Thread:
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
