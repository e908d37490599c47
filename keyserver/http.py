"""HTTP plumbing: the JSON error shape, request ids, body limits, and the error middleware.

Every error leaves as ``{"error": {"code": ..., "message": ...}}`` with a 4xx, or a 500 with code
``internal`` that says nothing more. Handlers raise ``ApiError``; the services below them raise
domain refusals (``keyserver.errors.Refused``), given their HTTP status here, in ``REFUSALS``, the
one table that maps them; nothing else reaches a client.
A store failure no route turned into a degraded answer becomes 429 ``temporarily_unavailable``
(never a 503), and an answer built from last known data gets the degraded marker
(keyserver.degraded).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from aiohttp import web

from keyserver import degraded
from keyserver.errors import (
    DeviceHasKey,
    InvitationNotFound,
    KeyserverError,
    OwnInvitation,
    Refused,
    SinceAhead,
    StoreUnavailable,
    TooManyHolders,
    TooSoon,
)

CBOR = "application/cbor"
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
log = logging.getLogger("keyserver.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(KeyserverError):
    """A refusal with an HTTP status and a machine-readable code; the message is for people."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


#: The HTTP status of each domain refusal; the code and message are the refusal's own.
REFUSALS: dict[type[Refused], int] = {
    DeviceHasKey: 409,
    TooSoon: 409,
    TooManyHolders: 409,
    InvitationNotFound: 404,
    OwnInvitation: 403,
    SinceAhead: 400,
}


def refusal_error(refused: Refused) -> ApiError:
    """The HTTP answer to a domain refusal (``REFUSALS``); Retry-After when it says when."""
    headers = {} if refused.retry_after is None else {"Retry-After": str(refused.retry_after)}
    return ApiError(REFUSALS[type(refused)], refused.code, refused.message, headers=headers)


# aiohttp's own refusals, mapped to our codes
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


CLIENT_GONE = 499  # never seen by a client: for the log and the metrics


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get(REQUEST_ID_HEADER, "")
    if not _REQUEST_ID.fullmatch(rid):
        rid = secrets.token_hex(8)
    token = request_id_var.set(rid)
    mark = degraded.begin_request()
    started = time.perf_counter()
    try:
        try:
            response = await handler(request)
        except ApiError as error:
            response = error_response(error.status, error.code, error.message, error.headers)
        except Refused as refused:
            answer = refusal_error(refused)
            response = error_response(answer.status, answer.code, answer.message, answer.headers)
        except StoreUnavailable as error:
            # Never a 503 (G2): a route with a degraded path has answered already; reaching here
            # means it has none for this request (each route declares its own: Route.degraded).
            log.warning(
                "store unavailable",
                extra={
                    "fields": {"error": str(error), "may_have_succeeded": error.may_have_succeeded}
                },
            )
            detail = (
                "the state store is unavailable and this request needs it; try again later"
                if not error.may_have_succeeded
                else "the state store is unavailable; this change may have been applied: check"
                " before repeating it"
            )
            response = degraded.try_later(detail, may_have_succeeded=error.may_have_succeeded)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_CODES.get(exc.status, "http_error")
            response = error_response(exc.status, code, exc.reason)
        except ConnectionResetError:
            # the client went away mid-request (a car that gave up on its upgrade): nothing can
            # reach it and nothing failed here — counted as 499 (nginx's "client closed
            # request"), not as a 500 of ours
            log.info("client gone", extra={"fields": {"path": request.path}})
            response = error_response(CLIENT_GONE, "client_gone", "the client closed the request")
        except Exception:  # the one place a bug becomes a 500, logged with its request id
            log.exception("unhandled error", extra={"fields": {"path": request.path}})
            response = error_response(500, "internal", "internal error")
        if mark.stale_age_s is not None and not response.prepared:
            # answered (or refused) from last known data: say so, with its age
            response = degraded.mark_response(response, stale_age_s=mark.stale_age_s)
        response.headers[REQUEST_ID_HEADER] = rid
        log.info(
            "request",
            extra={
                "fields": {
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                }
            },
        )
        return response
    finally:
        request_id_var.reset(token)


_BODY = web.RequestKey("phonekey_body", bytes)  # the body as read: a second reader gets it too


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The raw JSON request body, read once and bounded: a device proof signs these bytes.

    Kept on the request, so a degraded path that takes over after the store failed (token
    refresh) reads the same bytes."""
    if _BODY in request:
        kept: bytes = request[_BODY]
        return kept
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "body_too_large", f"request body over {max_bytes} bytes")
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send application/json")
    # read(n) returns whatever has arrived, so a body sent in pieces needs a loop
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(max_bytes + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "body_too_large", f"request body over {max_bytes} bytes")
    request[_BODY] = body = b"".join(chunks)
    return body


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_body", "request body must be a JSON object")
    return value


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with the request id; fields come from ``extra={"fields": …}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
