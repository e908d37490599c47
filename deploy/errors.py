"""Errors raised by the lab tooling (the `phonekey` command): each message is one line for a
person, and the command line prints it instead of a traceback.

    LabError                base
    ├── ApiCallError        a keyserver call answered with a non-2xx status or not with JSON
    │                       (deploy.api)
    ├── BadRequest          the world's control API refused a request before anything changed
    │                       (deploy.world_control)
    ├── BenchError          a benchmark could not run (deploy.bench_issue)
    ├── ChaosError          a Chaos Toolkit action or probe could not do its work
    │                       (deploy.chaos.access)
    ├── DrillError          a drill could not be run: unknown name, bad settings (deploy.drill)
    ├── EventError          an event off the schema, or a damaged event-log line (deploy.events)
    ├── FaultSpecError      a fault the proxy refuses (deploy.proxy_control)
    ├── FleetError          the fleet run could not do what it was asked (deploy.fleet_run)
    ├── ProcessError        a server process could not be found or started (deploy.processes)
    ├── ProxyControlError   the fault proxy's control API could not be reached or refused
    │                       (deploy.proxy_control)
    ├── StackError          the staging stack could not do what it was asked (deploy.stack_spec)
    ├── StepFailed          a demo step ran but did not do what it should (deploy.demo_script)
    ├── WorkerError         a fleet worker process died, timed out or answered out of turn
    │                       (deploy.fleet_pool)
    └── WorldError          the world could not be set up, or was given bad input
                            (deploy.world_setup)

Most keep the built-in they were before as a second base (``RuntimeError``; ``ValueError`` for
EventError and FaultSpecError), so callers that catch by it still do.
"""

from __future__ import annotations


class LabError(Exception):
    """Base of the lab tooling's errors."""
