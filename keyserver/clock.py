"""The keyserver's wall clock, in whole seconds (token times are whole seconds).

A request reads it once (``request_now``: the first read is kept on the request) and passes that
``now`` down to the services and the checks it calls; services that keep time of their own (the
last-known cache, the cutoff a revocation takes after its write) receive a ``Clock`` instead of
reading one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

Clock = Callable[[], int]


def now() -> int:
    """The one wall-clock read of the keyserver's requests (tests replace it)."""
    return int(time.time())


def process_clock() -> int:
    """``now``, looked up at each call: a clock handed to services at start-up still follows a
    test that replaces ``now`` afterwards."""
    return now()


#: The app's clock (``create_app(clock=...)``).
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
_NOW = web.RequestKey("phonekey_now", int)


def request_now(request: web.Request) -> int:
    """The request's ``now``: the app's clock read at the first call, the same value after."""
    kept: int | None = request.get(
        _NOW
    )  # not ``in``: Mapping.__contains__ raises and catches a KeyError
    if kept is not None:
        return kept
    clock = request.app.get(CLOCK, process_clock)
    request[_NOW] = current = clock()
    return current
