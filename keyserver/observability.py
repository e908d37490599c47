"""Prometheus metrics for the keyserver (one registry per app) and structured JSON logging."""

from __future__ import annotations

import inspect
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram

from keyserver.errors import StoreUnavailable
from keyserver.http import Handler, JsonLogFormatter


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    tokens_issued: Counter
    store_seconds: Histogram
    store_errors: Counter

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "keyserver_requests",
                "HTTP requests by route, method, status and outcome",
                ["route", "method", "status", "outcome"],
                registry=registry,
            ),
            latency=Histogram(
                "keyserver_request_seconds",
                "HTTP request latency by route",
                ["route"],
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            ),
            tokens_issued=Counter(
                "keyserver_tokens_issued", "Key tokens signed, by role", ["role"], registry=registry
            ),
            store_seconds=Histogram(
                "keyserver_store_seconds",
                "Store operation latency",
                ["operation"],
                registry=registry,
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            ),
            store_errors=Counter(
                "keyserver_store_errors",
                "Store operations that failed",
                ["operation"],
                registry=registry,
            ),
        )

    def middleware(self) -> Middleware:
        @web.middleware
        async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "unmatched"
            started = time.perf_counter()
            response = await handler(request)
            status = response.status
            outcome = "ok" if status < 400 else "refused" if status < 500 else "error"
            self.requests.labels(name, request.method, str(status), outcome).inc()
            self.latency.labels(name).observe(time.perf_counter() - started)
            return response

        return measure


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class MeasuredStore:
    """Wraps a Store: the latency of every operation and each failure go to the metrics.

    ``Conflict`` is an answer, not a failure; only ``StoreUnavailable`` counts as an error.
    """

    def __init__(self, inner: object, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        seconds = self._metrics.store_seconds.labels(name)
        errors = self._metrics.store_errors.labels(name)

        async def measured(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await attribute(*args, **kwargs)
            except StoreUnavailable:
                errors.inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - started)

        return measured
