"""The fault proxy's control API, both ends: the JSON it takes (``parse_faults``) and gives
(``describe``), and ``ProxyControl``, the synchronous client drills call from plain functions.

``PUT /faults`` replaces the whole set of faults with the body's (a key left out is off):

    latency_ms      added to each chunk in each direction (a request and its answer: twice)
    jitter_ms       up to this much more per chunk, uniformly random; order is kept
    black_hole      true: connections are accepted and read, nothing is forwarded or answered
    reset           true: every open and every new connection is closed with a TCP RST
    bandwidth_bps   bits per second, each direction of each connection; null: unlimited

Unknown keys, wrong types and values out of range are refused (400) and change nothing.
``DELETE /faults`` clears them; ``GET /faults`` shows them with the proxy's counters.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict
from typing import Any

from lab.errors import LabError
from lab.proxy.faultproxy import FaultProxy, Faults

MAX_LATENCY_MS = 600_000.0  # ten minutes: longer is a black hole, say so
MAX_BANDWIDTH_BPS = 1e12
MAX_BODY_BYTES = 4096
_NUMBERS = {"latency_ms": MAX_LATENCY_MS, "jitter_ms": MAX_LATENCY_MS}
_FLAGS = ("black_hole", "reset")
KEYS = frozenset({*_NUMBERS, *_FLAGS, "bandwidth_bps"})


class FaultSpecError(LabError, ValueError):
    """A control request the proxy refuses; the message is one line for a person."""


class ProxyControlError(LabError, RuntimeError):
    """The control API could not be reached or refused the request; one line for a person."""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def parse_faults(body: Any) -> Faults:
    """The faults a ``PUT /faults`` body asks for; raises FaultSpecError."""
    if not isinstance(body, dict):
        raise FaultSpecError("the body must be a JSON object")
    unknown = sorted(set(body) - KEYS)
    if unknown:
        raise FaultSpecError(f"unknown keys: {', '.join(map(str, unknown))}")
    for key, limit in _NUMBERS.items():
        value = body.get(key, 0)
        if not _number(value) or not 0 <= value <= limit:
            raise FaultSpecError(f"{key}: a number of milliseconds in 0…{limit:g}")
    for key in _FLAGS:
        if not isinstance(body.get(key, False), bool):
            raise FaultSpecError(f"{key}: true or false")
    bandwidth = body.get("bandwidth_bps")
    if bandwidth is not None and (
        not _number(bandwidth) or not 8 <= bandwidth <= MAX_BANDWIDTH_BPS
    ):
        raise FaultSpecError(f"bandwidth_bps: null or bits per second in 8…{MAX_BANDWIDTH_BPS:g}")
    latency_s = body.get("latency_ms", 0) / 1000
    return Faults(
        latency_up_s=latency_s,
        latency_down_s=latency_s,
        black_hole=body.get("black_hole", False),
        reset=body.get("reset", False),
        bytes_per_s=None if bandwidth is None else bandwidth / 8,
        jitter_s=body.get("jitter_ms", 0) / 1000,
    )


def apply(proxy: FaultProxy, faults: Faults) -> None:
    proxy.set(
        latency_up_s=faults.latency_up_s,
        latency_down_s=faults.latency_down_s,
        black_hole=faults.black_hole,
        reset=faults.reset,
        bytes_per_s=faults.bytes_per_s,
        jitter_s=faults.jitter_s,
    )


def describe(proxy: FaultProxy) -> dict[str, Any]:
    """``GET /faults``: the faults in force (in the body's terms) and the proxy's counters."""
    faults = proxy.faults
    stats = asdict(proxy.stats)
    stats["connections"] = proxy.connections  # open now
    for target in stats["targets"]:
        target["target"] = f"{target.pop('host')}:{target.pop('port')}"
    return {
        "faults": {
            "latency_ms": max(faults.latency_up_s, faults.latency_down_s) * 1000,
            "jitter_ms": faults.jitter_s * 1000,
            "black_hole": faults.black_hole,
            "reset": faults.reset,
            "bandwidth_bps": None if faults.bytes_per_s is None else faults.bytes_per_s * 8,
        },
        "stats": stats,
        "port": proxy.port,
    }


class ProxyControl:
    """``ProxyControl("http://127.0.0.1:C").set(latency_ms=200)``, ``.clear()``, ``.get()``.

    Each call is one request with a bounded timeout; each returns the proxy's answer (the
    ``GET /faults`` JSON). Errors are ``ProxyControlError``.
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        if not url.startswith("http://127.0.0.1:"):
            raise ValueError("a proxy's control API is on http://127.0.0.1:PORT")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def get(self) -> dict[str, Any]:
        return self._request("GET")

    def set(
        self,
        *,
        latency_ms: float = 0,
        jitter_ms: float = 0,
        black_hole: bool = False,
        reset: bool = False,
        bandwidth_bps: float | None = None,
    ) -> dict[str, Any]:
        """Replace the proxy's faults with these (what is not given is off)."""
        body = {
            "latency_ms": latency_ms,
            "jitter_ms": jitter_ms,
            "black_hole": black_hole,
            "reset": reset,
            "bandwidth_bps": bandwidth_bps,
        }
        return self._request("PUT", body)

    def clear(self) -> dict[str, Any]:
        return self._request("DELETE")

    def _request(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 — http://127.0.0.1 only (checked above)
            f"{self.url}/faults",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                result: dict[str, Any] = json.loads(answer.read())
                return result
        except urllib.error.HTTPError as error:
            with error:  # it holds the answer's socket
                detail = error.read()[:200].decode(errors="replace")
            raise ProxyControlError(f"{method} {self.url}/faults: {error.code} {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise ProxyControlError(f"{method} {self.url}/faults: {error}") from None
