"""Calling the keyserver's REST API as a phone, a car or the factory would, for the lab's tools.

One request per call: a JSON body, a bearer session and/or a device proof signed by the caller's
key (``PK-Device-Proof``), and anything but a 2xx raised as ``ApiCallError`` with one line for a
person. No retries here: a tool that wants them says so where it calls.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from keycore import SoftwareSigner
from keycore.request_proof import HEADER, sign_request
from lab.errors import LabError


class ApiCallError(LabError, RuntimeError):
    """A keyserver call answered with a non-2xx status (or not with JSON)."""

    def __init__(
        self, method: str, path: str, status: int, answer: bytes, *,
        retry_after: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__(f"{method} {path}: {status} {answer[:200]!r}")
        self.status = status
        self.retry_after = retry_after  # the answer's Retry-After (delta seconds), if it had one


async def call(
    http: aiohttp.ClientSession,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    method: str = "POST",
    bearer: str | None = None,
    signer: tuple[SoftwareSigner, str] | None = None,
    authorization: str | None = None,
) -> dict[str, Any]:
    """``method path`` on ``http``'s base URL; ``signer`` is (key, device id) for the proof."""
    raw = b"" if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if raw else {}
    if bearer is not None:
        authorization = f"Bearer {bearer}"
    if authorization is not None:
        headers["Authorization"] = authorization
    if signer is not None:
        key, device_id = signer
        headers[HEADER] = sign_request(
            key, device_id=device_id, method=method, path=path, body=raw,
            timestamp=int(time.time()),
        )  # fmt: skip
    async with http.request(method, path, data=raw or None, headers=headers) as response:
        answer = await response.read()
        if not 200 <= response.status < 300:
            wait = response.headers.get("Retry-After", "")
            retry_after = float(wait) if wait.isascii() and wait.isdigit() else None
            raise ApiCallError(method, path, response.status, answer, retry_after=retry_after)
    try:
        result: dict[str, Any] = json.loads(answer)
    except ValueError:
        raise ApiCallError(method, path, response.status, answer) from None
    return result
