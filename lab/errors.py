"""Errors raised by the lab tooling (the `phonekey` command): each message is one line for a
person, and the command line prints it instead of a traceback.

    LabError                base
    ├── ApiCallError        a keyserver call answered with a non-2xx status or not with JSON
    │                       (lab.api)
    ├── BadRequest          the world's control API refused a request before anything changed
    │                       (lab.world.control)
    ├── BenchError          a benchmark could not run (lab.bench.issue)
    ├── ChaosError          a Chaos Toolkit action or probe could not do its work
    │                       (lab.drill.chaos.access)
    ├── DrillError          a drill could not be run: unknown name, bad settings (lab.drill.drill)
    ├── EventError          an event off the schema, or a damaged event-log line (lab.events)
    ├── FaultSpecError      a fault the proxy refuses (lab.proxy.control)
    ├── FleetError          the fleet run could not do what it was asked (lab.fleet.run)
    ├── ProcessError        a server process could not be found or started (lab.processes.base)
    ├── ProxyControlError   the fault proxy's control API could not be reached or refused
    │                       (lab.proxy.control)
    ├── StackError          the staging stack could not do what it was asked (lab.stack.spec)
    ├── StepFailed          a demo step ran but did not do what it should (lab.demo.script)
    ├── WorkerError         a fleet worker process died, timed out or answered out of turn
    │                       (lab.fleet.pool)
    └── WorldError          the world could not be set up, or was given bad input
                            (lab.world.setup)

Most keep the built-in they were before as a second base (``RuntimeError``; ``ValueError`` for
EventError and FaultSpecError), so callers that catch by it still do.
"""

from __future__ import annotations


class LabError(Exception):
    """Base of the lab tooling's errors."""
