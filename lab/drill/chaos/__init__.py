"""The chaos drills' Chaos Toolkit experiments (``NAME.json``) and the plain functions their Python
provider calls (``actions``, ``probes``), each taking the stack's directory."""

from __future__ import annotations

from pathlib import Path

EXPERIMENTS_DIR = Path(__file__).parent
DRILLS = (
    "redis-down",
    "redis-hang",
    "redis-slow",
    "sentinel-failover",
    "keyserver-crash",
    "cloud-outage",
    "link-partition",
    "traffic-surge",
    "clock-skew",
    "agent-crash",
)


def experiment_path(name: str) -> Path:
    return EXPERIMENTS_DIR / f"{name}.json"
