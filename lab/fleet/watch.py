"""What each simulated car was answered when it asked for its channel: an aiohttp trace on the
cars' shared session records every upgrade request's outcome per VIN — the status (with the
error code of a refusal, from its PK-Refusal header or its small JSON body, and its
Retry-After), or the exception
of a connection that failed — with the monotonic time. The car's own code is not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import aiohttp

MAX_ANSWERS_PER_CAR = 512  # a bound: a car tries at most a few dozen times per restart
MAX_BODY_BYTES = 4096
_CHANNEL_SUFFIX = "/channel"
REFUSAL_HEADER = "PK-Refusal"  # the keyserver names a paced refusal here as well as in the body


@dataclass(frozen=True)
class Answer:
    at: float  # monotonic seconds, when the answer was seen
    outcome: str  # "101", "429 reconnect_paced", "503 overloaded", "error ClientConnectorError"
    retry_after_s: float = 0.0
    started: float | None = None  # when the request was sent (None: not traced)

    @property
    def sent_at(self) -> float:
        return self.at if self.started is None else self.started

    @property
    def failed(self) -> bool:
        return self.outcome != "101"

    @property
    def is_error(self) -> bool:
        """Neither an upgrade nor a 429 refusal."""
        return self.outcome != "101" and not self.outcome.startswith("429")


@dataclass
class UpgradeWatch:
    answers: dict[str, list[Answer]] = field(default_factory=dict)

    def trace_config(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(self._started)
        trace.on_request_end.append(self._ended)
        trace.on_request_exception.append(self._failed)
        return trace

    def since(self, vin: str, start: float) -> list[Answer]:
        return [a for a in self.answers.get(vin, ()) if a.at >= start]

    def _record(self, url: object, answer: Answer) -> None:
        path = getattr(url, "path", "")
        if not path.endswith(_CHANNEL_SUFFIX):
            return
        vin = path.split("/")[-2]
        kept = self.answers.setdefault(vin, [])
        if len(kept) >= MAX_ANSWERS_PER_CAR:
            del kept[: MAX_ANSWERS_PER_CAR // 2]  # keep the recent half
        kept.append(answer)

    async def _started(
        self, session: aiohttp.ClientSession, context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:  # fmt: skip
        context.started = time.monotonic()  # one context per request, shared by its callbacks

    async def _ended(
        self, session: aiohttp.ClientSession, context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:  # fmt: skip
        at = time.monotonic()
        response = params.response
        outcome = str(response.status)
        retry_after = 0.0
        if response.status != 101:
            raw = response.headers.get("Retry-After", "")
            with contextlib.suppress(ValueError):
                retry_after = float(raw) if raw else 0.0
            code = response.headers.get(REFUSAL_HEADER, "") or await _error_code(response)
            outcome += f" {code[:64]}"
        started = getattr(context, "started", None)
        self._record(params.url, Answer(at, outcome.strip(), retry_after, started))

    async def _failed(
        self, session: aiohttp.ClientSession, context: SimpleNamespace,
        params: aiohttp.TraceRequestExceptionParams,
    ) -> None:  # fmt: skip
        error = params.exception
        name = type(error).__name__
        if name == "CancelledError":  # the attempt's timeout, or the car stopping
            name = "timeout"
        cause = getattr(error, "os_error", None)  # a connector error: which errno
        if isinstance(cause, OSError) and cause.errno is not None:
            name += f" {errno.errorcode.get(cause.errno, cause.errno)}"
        started = getattr(context, "started", None)
        self._record(params.url, Answer(time.monotonic(), f"error {name}", 0.0, started))


async def _error_code(response: aiohttp.ClientResponse) -> str:
    """The ``error.code`` of a refusal's JSON body, or "" (the body is small and bounded)."""
    try:
        async with asyncio.timeout(1.0):
            body = await response.content.read(MAX_BODY_BYTES)
        code = json.loads(body)["error"]["code"]
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
        return ""
    return code if isinstance(code, str) and code.isprintable() and len(code) <= 64 else ""
