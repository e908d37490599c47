"""The drills' Chaos Toolkit experiments: each parses, is valid for chaoslib, calls only functions
that exist in lab.drill.chaos.actions / probes with arguments their signatures take, has a steady
state hypothesis and rollbacks that undo its fault; and one runs through chaoslib against a stack
directory whose world is a stand-in HTTP server."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from lab.drill.chaos import DRILLS, EXPERIMENTS_DIR, experiment_path
from lab.drill.drill import CHAOS_SETTINGS, activity_failures, load_experiment
from lab.events import EventLog, read_events
from lab.stack.spec import VARIANTS, ProcessRecord, StackState

PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def activities(experiment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from experiment["steady-state-hypothesis"]["probes"]
    yield from experiment["method"]
    yield from experiment["rollbacks"]


def calls(experiment: dict[str, Any], part: str) -> list[str]:
    return [a["provider"]["func"] for a in experiment[part]]


def test_every_drill_has_its_experiment_and_no_other_is_there() -> None:
    assert sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.json")) == sorted(DRILLS)


@pytest.mark.parametrize("name", DRILLS)
def test_the_experiment_is_valid_for_chaoslib(name: str) -> None:
    from chaoslib.experiment import ensure_experiment_is_valid

    ensure_experiment_is_valid(json.loads(experiment_path(name).read_text()))


@pytest.mark.parametrize("name", DRILLS)
def test_activities_name_existing_functions_with_matching_arguments(name: str) -> None:
    experiment = load_experiment(name)
    for activity in activities(experiment):
        provider = activity["provider"]
        assert provider["type"] == "python"
        assert provider["module"] in ("lab.drill.chaos.actions", "lab.drill.chaos.probes")
        function = getattr(importlib.import_module(provider["module"]), provider["func"])
        assert callable(function), provider["func"]
        inspect.signature(function).bind(**provider["arguments"])  # TypeError if they differ
        assert provider["arguments"]["stack_dir"] == "${stack_dir}"
        if activity["type"] == "probe":
            assert provider["module"] == "lab.drill.chaos.probes"


@pytest.mark.parametrize("name", DRILLS)
def test_every_placeholder_is_configured(name: str) -> None:
    experiment = load_experiment(name)
    text = json.dumps([*activities(experiment)])
    assert set(PLACEHOLDER.findall(text)) <= set(experiment["configuration"])
    assert experiment["configuration"]["variant"] in VARIANTS
    assert {"stack_dir", "fault_seconds", "window_s"} <= set(experiment["configuration"])


@pytest.mark.parametrize("name", DRILLS)
def test_the_steady_state_is_warm_unlocking_and_free_of_5xx(name: str) -> None:
    probes = load_experiment(name)["steady-state-hypothesis"]["probes"]
    tolerances = {p["provider"]["func"]: p["tolerance"] for p in probes}
    assert tolerances == {"world_warm": True, "valid_unlock_rate": [0.999, 1.0], "http_5xx": 0}


@pytest.mark.parametrize("name", DRILLS)
def test_the_method_marks_and_holds_the_fault_and_rollbacks_undo_it(name: str) -> None:
    experiment = load_experiment(name)
    method = experiment["method"]
    funcs = calls(experiment, "method")
    begins, ends = funcs.index("start_fault"), funcs.index("end_fault")
    assert 0 < begins < ends == len(funcs) - 1  # injected first, ended last
    held = [a for a in method if a.get("pauses", {}).get("after") == "${fault_seconds}"]
    assert len(held) == 1
    assert begins <= method.index(held[0]) < ends
    marked = {a["provider"]["arguments"].get("name") for a in method if "fault" in a["name"]}
    assert marked == {name}
    undo = calls(experiment, "rollbacks")
    assert len(undo) >= 2
    assert undo[-1] == "end_fault"
    # each undo in the rollbacks is one the method itself uses to clear the fault
    clearing = set(funcs[begins + 1 : ends])
    assert set(undo[:-1]) <= clearing | {"restart_processes"}


def test_the_faults_are_the_ones_the_drills_are_named_for() -> None:
    injected = {name: calls(load_experiment(name), "method")[0] for name in DRILLS}
    assert injected == {
        "redis-down": "kill_processes",
        "redis-hang": "pause_processes",
        "redis-slow": "set_proxy_faults",
        "sentinel-failover": "kill_redis_primary",
        "keyserver-crash": "kill_processes",
        "cloud-outage": "kill_processes",
        "link-partition": "set_proxy_faults",
        "traffic-surge": "surge",
        "clock-skew": "jump_clocks",
        "agent-crash": "arm_failpoint",
    }


class FakeWorld(BaseHTTPRequestHandler):
    """The world's control API as far as the traffic-surge experiment uses it."""

    requests: ClassVar[list[tuple[str, str, Any]]] = []

    def do_GET(self) -> None:
        self._answer({"warm": True, "cars_online": 1, "phones": 1, "counts": {}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        FakeWorld.requests.append(("POST", self.path, body))
        self._answer({"ok": True})

    def _answer(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stack_dir(tmp_path: Path) -> Iterator[Path]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWorld)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    world = ProcessRecord("world", "world", ["phonekey"], {}, str(tmp_path / "world.log"))
    world.control = f"http://127.0.0.1:{server.server_address[1]}"
    events = tmp_path / "events.jsonl"
    state = StackState("embedded", str(tmp_path), 0.0, "", "", "", str(events), [world])
    state.save()
    with EventLog(events) as log:
        for _ in range(20):
            log.emit(
                "unlock",
                phone="p",
                vin="V",
                key="valid",
                path="cloud",
                ok=True,
                latency_s=0.01,
                reason="ok",
            )
        log.emit("http", window_s=1.0, counts={"2xx": 20, "4xx": 0, "429": 0, "5xx": 0})
    FakeWorld.requests = []
    try:
        yield tmp_path
    finally:
        server.shutdown()
        server.server_close()


def test_the_surge_experiment_runs_through_chaoslib(stack_dir: Path) -> None:
    from chaoslib.experiment import run_experiment

    experiment = load_experiment("traffic-surge")
    experiment["configuration"].update(stack_dir=str(stack_dir), fault_seconds=0.01, window_s=60)
    journal = run_experiment(experiment, settings=CHAOS_SETTINGS)
    assert (journal["status"], journal["deviated"]) == ("completed", False)
    assert activity_failures(journal) == []
    faults = [e for e in read_events(stack_dir / "events.jsonl") if e["kind"] == "fault"]
    assert [(e["name"], e["phase"]) for e in faults] == [
        ("traffic-surge", "start"),
        ("traffic-surge", "end"),
    ]  # the rollback's end_fault found the fault already ended and wrote nothing
    assert FakeWorld.requests == [
        ("POST", "/surge", {"factor": 10, "seconds": 0.01}),
        ("POST", "/surge", {"factor": 1, "seconds": 1}),
        ("POST", "/surge", {"factor": 1, "seconds": 1}),  # the rollback: idempotent
    ]


def test_a_steady_state_without_traffic_fails_the_experiment(stack_dir: Path) -> None:
    from chaoslib.experiment import run_experiment

    (stack_dir / "events.jsonl").write_text("")
    experiment = load_experiment("traffic-surge")
    experiment["configuration"].update(stack_dir=str(stack_dir), fault_seconds=0.01, window_s=5)
    journal = run_experiment(experiment, settings=CHAOS_SETTINGS)
    assert journal["status"] == "failed"
    failures = activity_failures(journal)
    assert failures[0].startswith("steady state before the fault: valid-unlocks-succeed: ")
    assert "no valid-key unlock attempt" in failures[0]
    # the method never ran, the rollbacks did
    assert FakeWorld.requests == [("POST", "/surge", {"factor": 1, "seconds": 1})]
