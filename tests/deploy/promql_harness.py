"""What the processes export to Prometheus, and the names a PromQL expression uses: the
deployment tests check every alert rule and dashboard query against it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from types import SimpleNamespace

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from keyserver.app import METRICS, create_app
from keyserver.config import Config
from resilience.breaker_metrics import BreakerCollector
from vehicle_agent.channel import LinkState
from vehicle_agent.daemon import metrics_registry

# Named by rules and panels before the code exports them. An entry counts only while the metric
# (or the label) is missing from the code: once it lands, the real one is checked instead.
PENDING_METRICS: dict[str, frozenset[str]] = {}
PENDING_LABELS: dict[str, frozenset[str]] = {}
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series
SYNTHETIC = {"up": TARGET_LABELS}  # series Prometheus makes itself


# ------------------------------------------------------------------------------ exported metrics

_EXPOSED = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "untyped": ("",),
}


def _collectors(registry: CollectorRegistry) -> Iterable[Collector]:
    return list(registry._collector_to_names)  # no public way to list a registry's collectors


def exposed(registry: CollectorRegistry) -> dict[str, frozenset[str]]:
    """Sample name → label names, for everything the registry would expose."""
    names: dict[str, frozenset[str]] = {}
    for collector in _collectors(registry):
        describe = getattr(collector, "describe", None)
        families = describe() if describe is not None else collector.collect()
        wrapper_labels = getattr(collector, "_labelnames", None)  # Counter, Gauge, Histogram
        for family in families:
            labels = frozenset(wrapper_labels or getattr(family, "_labelnames", ()))
            for suffix in _EXPOSED[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                names[family.name + suffix] = labels | extra
    return names


@cache
def exported_metrics() -> dict[str, frozenset[str]]:
    keyserver = create_app(Config())[METRICS].registry
    # The agent's collector reads its car at registration: a stand-in with the attributes it reads.
    vehicle = SimpleNamespace(
        revocations=SimpleNamespace(sequence=0),
        trust=SimpleNamespace(sequence=0),
        state=SimpleNamespace(outbox_depth=lambda: 0),
        clock=SimpleNamespace(reset=False),
        on_decision=None,
    )
    link = SimpleNamespace(
        state=LinkState.OFFLINE, stats=SimpleNamespace(sync_lag=lambda now: 0.0), breaker=None
    )
    agent = metrics_registry(vehicle, link)  # type: ignore[arg-type]
    breakers = CollectorRegistry()  # the keyserver registers its store breaker when Redis opens
    breakers.register(BreakerCollector([]))
    names = {**SYNTHETIC}
    for registry in (keyserver, agent, breakers):
        names.update(exposed(registry))
    return names


# ------------------------------------------------------------------------------------ PromQL names

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "inf", "nan"}


@dataclass
class Query:
    metrics: dict[str, set[str]] = field(default_factory=dict)  # name → labels its matchers use
    grouping: set[str] = field(default_factory=set)  # by (…), without (…), on (…), …


def parse_promql(expr: str) -> Query:
    """The metric names and label names a PromQL expression uses (functions and keywords aside)."""
    query = Query()
    text = _STRING.sub('""', expr)
    for match in _GROUPING.finditer(text):
        query.grouping |= {label.strip() for label in match.group(1).split(",") if label.strip()}
    text = _GROUPING.sub(" ", text)

    def selector(match: re.Match[str]) -> str:
        name = match.group(1) or ""  # "" (a selector without a name) fails the metric check
        query.metrics.setdefault(name, set()).update(_MATCHER.findall(match.group(2)))
        return " "

    text = _SELECTOR.sub(selector, text)
    text = _OFFSET.sub(" ", _RANGE.sub(" ", text))
    for name in _IDENT.findall(text):
        if name.lower() not in _KEYWORDS:
            query.metrics.setdefault(name, set())
    return query


def unknown_names(expr: str) -> list[str]:
    """What in ``expr`` the code does not export: metric names, and labels they do not carry."""
    exported = exported_metrics()
    query = parse_promql(expr)
    problems = []
    available = set(TARGET_LABELS)
    for name, labels in query.metrics.items():
        if name in exported:
            known = exported[name] | PENDING_LABELS.get(name, frozenset())
        elif name in PENDING_METRICS:
            known = PENDING_METRICS[name]
        else:
            problems.append(f"metric {name or '{…}'!r}")
            continue
        known |= TARGET_LABELS
        available |= known
        problems += [f"label {label!r} on {name}" for label in sorted(labels - known)]
    problems += [f"grouping label {label!r}" for label in sorted(query.grouping - available)]
    return problems
