"""Builders of synthetic event logs for the drill report and timeline tests."""

from __future__ import annotations

from typing import Any

from lab.drill.report import MARK_BASELINE, MARK_END

T0 = 1_800_000_000.0
VIN = "VIN0000000000001"


def unlock(
    t: float, *, ok: bool = True, key: str = "valid", path: str = "cloud", latency_s: float = 0.05
) -> dict[str, Any]:
    return {
        "t": T0 + t,
        "kind": "unlock",
        "phone": "p1",
        "vin": VIN,
        "key": key,
        "path": path,
        "ok": ok,
        "latency_s": latency_s,
        "reason": "ok" if ok else "denied",
    }


def mark(t: float, text: str) -> dict[str, Any]:
    return {"t": T0 + t, "kind": "mark", "text": text}


def fault(t: float, phase: str, name: str = "redis-down") -> dict[str, Any]:
    return {"t": T0 + t, "kind": "fault", "name": name, "phase": phase}


def breaker(
    t: float, state: str, source: str = "keyserver-0", name: str = "redis"
) -> dict[str, Any]:
    return {"t": T0 + t, "kind": "breaker", "source": source, "name": name, "state": state}


def http(t: float, *, ok: int = 0, server_errors: int = 0) -> dict[str, Any]:
    counts = {"2xx": ok, "4xx": 0, "429": 0, "5xx": server_errors}
    return {"t": T0 + t, "kind": "http", "window_s": 1.0, "counts": counts}


def command(
    t: float, command_id: str | None, *, accepted: bool = True, status: str = "executed"
) -> dict[str, Any]:
    return {
        "t": T0 + t,
        "kind": "command",
        "phone": "p1",
        "vin": VIN,
        "action": "lock",
        "command_id": command_id,
        "path": "cloud",
        "status": status,
        "accepted": accepted,
        "latency_s": 0.1,
    }


def actuation(t: float, command_id: str | None) -> dict[str, Any]:
    return {
        "t": T0 + t,
        "kind": "actuation",
        "vin": VIN,
        "command_id": command_id,
        "action": "lock",
        "path": "cloud",
    }


def revocation(t: float, key_id: str, *, accepted: bool = True) -> dict[str, Any]:
    return {
        "t": T0 + t,
        "kind": "revocation",
        "vin": VIN,
        "key_id": key_id,
        "status": 200 if accepted else 503,
        "accepted": accepted,
    }


def reconcile(
    t: float,
    executed: dict[str, int] | None = None,
    revoked: tuple[str, ...] = (),
    commands: dict[str, str] | None = None,
) -> dict[str, Any]:
    car = {"executed": executed or {}, "revoked_keys": list(revoked), "online": True}
    return {"t": T0 + t, "kind": "reconcile", "cars": {VIN: car}, "commands": commands or {}}


def healthy(seconds: int = 10, *, remote: bool = True) -> list[dict[str, Any]]:
    """A drill log where everything went right: a fault at 3–6 s noticed and recovered from;
    a person at the car unlocks over Bluetooth every second, and (``remote``) one far away
    locks through the cloud."""
    commands = range(seconds) if remote else range(0)
    return [
        breaker(0.1, "closed"),
        mark(0.0, MARK_BASELINE),
        *(unlock(k + 0.5, path="ble") for k in range(seconds)),
        *(command(k + 0.5, f"h{k}") for k in commands),
        *(actuation(k + 0.6, f"h{k}") for k in commands),
        fault(3.0, "start"),
        breaker(3.2, "open"),
        fault(6.0, "end"),
        breaker(6.5, "half_open"),
        breaker(7.0, "closed"),
        http(5.0, ok=10),
        mark(float(seconds), MARK_END),
        reconcile(seconds + 1.0),
    ]
