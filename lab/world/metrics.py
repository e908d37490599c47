"""The world's own figures: Prometheus metrics (``/metrics``) and the tally of every HTTP answer
its clients got, which becomes one ``http`` event per second.

Every aiohttp session of the world (the phones', the set-up calls', each car's channel) carries
``HttpTally.trace_config()``, so answers are counted in one place whoever made the request: by
class (``2xx``, ``4xx`` without 429, ``429``, ``5xx``, and ``1xx``/``3xx`` when seen — a car's
channel upgrade is a 101) and ``failed`` for a request that got no answer at all (refused, reset,
timed out).
"""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

#: the classes every ``http`` event names, seen or not
HTTP_CLASSES = ("2xx", "4xx", "429", "5xx")
FAILED = "failed"


def answer_class(status: int) -> str:
    return "429" if status == 429 else f"{status // 100}xx"


@dataclass(frozen=True)
class WorldMetrics:
    registry: CollectorRegistry
    unlocks: Counter
    commands: Counter
    actuations: Counter
    revocations: Counter
    http_answers: Counter
    agent_crashes: Counter
    cars_online: Gauge
    warm: Gauge

    @classmethod
    def create(cls) -> WorldMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            unlocks=Counter(
                "world_unlocks",
                "Unlock attempts at the car, by key kind, path and outcome (ok: the car moved)",
                ["key", "path", "outcome"],
                registry=registry,
            ),
            commands=Counter(
                "world_commands",
                "Remote commands from afar, by status and whether the keyserver took them",
                ["status", "accepted"],
                registry=registry,
            ),
            actuations=Counter(
                "world_actuations",
                "Actuator moves of the cars, by path",
                ["path"],
                registry=registry,
            ),
            revocations=Counter(
                "world_revocations",
                "Revocations asked of the keyserver, by whether it took them",
                ["accepted"],
                registry=registry,
            ),
            http_answers=Counter(
                "world_http_answers",
                "HTTP answers the world's clients got, by class (failed: no answer)",
                ["class"],
                registry=registry,
            ),
            agent_crashes=Counter(
                "world_agent_crashes", "Vehicle agents killed by a failpoint", registry=registry
            ),
            cars_online=Gauge(
                "world_cars_online", "Cars whose cloud link is up", registry=registry
            ),
            warm=Gauge(
                "world_warm", "1 once the set-up is done and the work runs", registry=registry
            ),
        )


class HttpTally:
    """Counts answers as they come; ``take()`` hands over the counts since the last take."""

    def __init__(self, metrics: WorldMetrics) -> None:
        self._metrics = metrics
        self._window: Tally[str] = Tally()
        self.total: Tally[str] = Tally()

    def count(self, name: str) -> None:
        self._window[name] += 1
        self.total[name] += 1
        self._metrics.http_answers.labels(name).inc()

    def take(self) -> dict[str, int]:
        counts = dict.fromkeys(HTTP_CLASSES, 0)
        counts.update(self._window)
        self._window = Tally()
        return counts

    def trace_config(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()

        async def answered(
            session: aiohttp.ClientSession,
            context: SimpleNamespace,
            params: aiohttp.TraceRequestEndParams,
        ) -> None:
            self.count(answer_class(params.response.status))

        async def failed(
            session: aiohttp.ClientSession,
            context: SimpleNamespace,
            params: aiohttp.TraceRequestExceptionParams,
        ) -> None:
            self.count(FAILED)

        trace.on_request_end.append(answered)
        trace.on_request_exception.append(failed)
        return trace
