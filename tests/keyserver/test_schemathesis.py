"""schemathesis against a live `keyserver serve`: no 5xx and no response outside the schema."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from lab.processes.base import free_port

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


async def test_schemathesis_over_the_openapi_document(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PHONEKEY_PORT": str(port),
        "PHONEKEY_DATA_DIR": str(tmp_path),
        "PHONEKEY_LOG_LEVEL": "warning",
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyserver.cli", "serve", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert server.stderr is not None
    try:
        async with asyncio.timeout(30):  # a hang guard, not a timing assertion
            while b"Running on" not in (line := await server.stderr.readline()):
                assert line, "keyserver exited before it was ready"
        drain = asyncio.create_task(server.stderr.read())
        token = await _session(port)
        runner = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("schemathesis")),
            "run", f"http://127.0.0.1:{port}/openapi.json",
            "--checks", CHECKS,
            "--max-examples", "30",
            "--seed", "20261121",
            "--request-timeout", "10",
            "--workers", "1",
            # a real session, so routes behind it are exercised past the 401
            "--header", f"Authorization: Bearer {token}",
            "--exclude-path", "/v1/sessions/current",  # logging out would end that session
            "--warnings", "off",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )  # fmt: skip
        output, _ = await runner.communicate()
        report = output.decode(errors="replace")
        assert runner.returncode == 0, report[-4000:]
        assert "No issues found" in report, report[-2000:]
        assert "passed" in report
    finally:
        server.send_signal(signal.SIGTERM)
        await server.wait()
    drain.cancel()


async def _session(port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    credentials = {"email": "fuzz@example.org", "password": "correct horse battery"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/accounts", json=credentials) as response:
            assert response.status == 201
        async with http.post(f"{base}/v1/sessions", json=credentials) as response:
            assert response.status == 201
            return str((await response.json())["token"])
