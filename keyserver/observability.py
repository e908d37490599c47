"""Prometheus metrics for the keyserver (one registry per app) and structured JSON logging."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TextIO, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from keyserver.degraded import DEGRADED_HEADER
from keyserver.errors import StoreUnavailable
from keyserver.http import Handler, JsonLogFormatter
from keyserver.store import Store
from keyserver.store.forwarding import ForwardingStore

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    tokens_issued: Counter
    store_seconds: Histogram
    store_errors: Counter
    cars_connected: Gauge
    channel_frames: Counter
    channel_closes: Counter
    commands: Counter
    command_results: Counter
    degraded_answers: Counter
    hub_notices: Counter
    hub_subscribed: Gauge

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
            cars_connected=Gauge(
                "keyserver_cars_connected", "Cars on the channel now", registry=registry
            ),
            channel_frames=Counter(
                "keyserver_channel_frames",
                "Channel frames, by direction (in: from cars; out; withheld: too large for the "
                "car, never sent) and type",
                ["direction", "type"],
                registry=registry,
            ),
            channel_closes=Counter(
                "keyserver_channel_closes",
                "Channel connections closed by the keyserver, by reason",
                ["reason"],
                registry=registry,
            ),
            commands=Counter(
                "keyserver_commands",
                "Remote command requests, by outcome (created, repeated)",
                ["outcome"],
                registry=registry,
            ),
            command_results=Counter(
                "keyserver_command_results",
                "Command results from cars, by outcome (applied, or a repeat of one already"
                " recorded) and the status the car reported (executed, failed, expired)",
                ["outcome", "status"],
                registry=registry,
            ),
            degraded_answers=Counter(
                "keyserver_degraded_answers",
                "Answers carrying the degraded marker (keyserver.degraded), by reason",
                ["reason"],
                registry=registry,
            ),
            hub_notices=Counter(
                "keyserver_hub_notices",
                "Channel hub notices between instances (keyserver.hub_bridge), by direction"
                " (out, in) and outcome",
                ["direction", "outcome"],
                registry=registry,
            ),
            hub_subscribed=Gauge(
                "keyserver_hub_subscribed",
                "1 while this instance receives the other instances' hub notices (Redis store)",
                registry=registry,
            ),
        )

    def middleware(self) -> Middleware:
        # labelled series by their labels: looking them up again costs more than counting
        counts: dict[tuple[str, str, int], Any] = {}
        latencies: dict[str, Any] = {}
        degraded: dict[str, Any] = {}

        @web.middleware
        async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "unmatched"
            started = time.perf_counter()
            response = await handler(request)
            status = response.status
            count = counts.get((name, request.method, status))
            if count is None:
                outcome = "ok" if status < 400 else "refused" if status < 500 else "error"
                count = self.requests.labels(name, request.method, str(status), outcome)
                counts[name, request.method, status] = count
            count.inc()
            latency = latencies.get(name)
            if latency is None:
                latency = latencies[name] = self.latency.labels(name)
            latency.observe(time.perf_counter() - started)
            # keyserver.degraded marks every degraded answer; counted here, once, as it leaves
            reason = response.headers.get(DEGRADED_HEADER)
            if reason is not None:
                marked = degraded.get(reason)
                if marked is None:
                    marked = degraded[reason] = self.degraded_answers.labels(reason)
                marked.inc()
            return response

        return measure


def configure_logging(level: str) -> None:
    # What the JSON lines never show is not gathered for every record (the logging HOWTO's
    # "Optimization" section): the calling frame, thread and process.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchingStreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class BatchingStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes its lines in batches.

    Every request is logged; one write per line costs more than the logging itself (a system
    call, and a wake-up of whatever reads the pipe, at thousands of lines a second). So a line
    waits at most ``interval`` seconds, or until ``max_bytes`` are waiting; a warning or worse
    goes out at once with everything before it, and ``close`` (``logging.shutdown`` at exit)
    writes what is left. Only a hard kill can lose lines: the last ``interval``'s worth.
    """

    def __init__(
        self, stream: TextIO, *, interval: float = 0.05, max_bytes: int = 64 * 1024
    ) -> None:
        super().__init__(stream)
        self.interval = interval
        self.max_bytes = max_bytes
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._closed = threading.Event()
        self._writer = threading.Thread(target=self._write_periodically, daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        self._pending_bytes += len(line)
        if record.levelno >= logging.WARNING or self._pending_bytes >= self.max_bytes:
            self._write_pending()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._write_pending()

    def close(self) -> None:
        self._closed.set()
        self._writer.join(timeout=1.0)
        self.flush()
        super().close()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        batch, self._pending, self._pending_bytes = "".join(self._pending), [], 0
        try:
            self.stream.write(batch)
            self.stream.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "log write failed"}))

    def _write_periodically(self) -> None:
        while not self._closed.wait(self.interval):
            self.flush()


class MeasuredStore(ForwardingStore):
    """Wraps a Store: the latency of every operation and each failure go to the metrics, by
    operation (``close`` goes straight through).

    ``Conflict`` is an answer, not a failure; only ``StoreUnavailable`` counts as an error.
    """

    def __init__(self, inner: Store, metrics: Metrics) -> None:
        super().__init__(inner)
        self._metrics = metrics
        # each operation's two series: looking them up again costs more than counting
        self._series: dict[str, tuple[Any, Any]] = {}

    async def _through(
        self, operation: str, call: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        series = self._series.get(operation)
        if series is None:
            metrics = self._metrics
            series = self._series[operation] = (
                metrics.store_seconds.labels(operation),
                metrics.store_errors.labels(operation),
            )
        seconds, errors = series
        started = time.perf_counter()
        try:
            return await call(*args, **kwargs)
        except StoreUnavailable:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - started)
