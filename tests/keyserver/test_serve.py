"""`keyserver serve` as a real process: starts on the embedded default, answers, stops cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from lab.processes.base import free_port


async def test_serve_starts_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PHONEKEY_PORT": str(port), "PHONEKEY_DATA_DIR": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyserver.cli", "serve",
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        async with asyncio.timeout(30):  # a hang guard, not a timing assertion
            while b"Running on" not in (line := await process.stderr.readline()):
                assert line, "keyserver exited before it was ready"
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/readyz") as response,
            ):
                assert response.status == 200
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (tmp_path / "keyserver.db").exists()
    assert (tmp_path / "keys" / "ring.json").exists()


async def test_bad_configuration_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "PHONEKEY_PORT": "eighty"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyserver.cli", "serve",
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    assert process.returncode == 2
    assert err.decode().strip() == "keyserver: setting 'port': 'eighty' is not a valid value"
