"""The conductor's end of the fleet's worker processes (``lab.fleet.worker``).

Each worker is ``python -m lab.fleet.worker`` with pipes on stdin and stdout (its stderr goes
to a log file in the run's directory). ``ask`` sends one step to every worker and waits, bounded,
for every answer. ``close`` says stop, waits a bounded time, then terminates and kills: no worker
outlives the run, whether it ends normally, fails or is interrupted. Also here: a process's CPU
time from /proc, for the workers, the keyserver and Redis alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from lab.errors import LabError
from lab.fleet.report import ProcessCpu, process_cpu
from lab.fleet.worker import MAX_LINE_BYTES, WorkerConfig
from lab.processes.base import LOOPBACK

STOP_GRACE_S = 15.0  # a worker closes its cars' links in this time, or is terminated
LISTEN_POLL_S = 0.005


class WorkerError(LabError, RuntimeError):
    """A worker failed a step or died; one line for a person."""


@dataclass
class WorkerProcess:
    index: int
    process: asyncio.subprocess.Process
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class WorkerPool:
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    async def start(self, configs: list[WorkerConfig]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index, config in enumerate(configs):
            log = (self.log_dir / f"fleet-worker-{index}.log").open("wb")
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "lab.fleet.worker",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                    limit=MAX_LINE_BYTES,
                )  # fmt: skip
            except BaseException:
                log.close()
                raise
            self.workers.append(WorkerProcess(index, process, log))
            assert process.stdin is not None
            process.stdin.write(json.dumps(asdict(config)).encode() + b"\n")
        await asyncio.gather(*(w.process.stdin.drain() for w in self.workers if w.process.stdin))

    async def ask(self, op: str, *, limit_s: float, **args: Any) -> list[dict[str, Any]]:
        """Step ``op`` on every worker at once; their answers in worker order."""
        request = json.dumps({"op": op, "args": args, "limit_s": limit_s}).encode() + b"\n"
        return list(
            await asyncio.gather(*(self._ask(w, request, op, limit_s) for w in self.workers))
        )

    async def _ask(
        self, worker: WorkerProcess, request: bytes, op: str, limit_s: float
    ) -> dict[str, Any]:
        stdin, stdout = worker.process.stdin, worker.process.stdout
        assert stdin is not None
        assert stdout is not None
        try:
            async with asyncio.timeout(limit_s + 60.0):  # the worker bounds the step itself
                stdin.write(request)
                await stdin.drain()
                line = await stdout.readline()
        except TimeoutError:
            raise WorkerError(f"worker {worker.index} did not answer {op}") from None
        except (ConnectionError, BrokenPipeError):
            line = b""
        if not line:
            raise WorkerError(
                f"worker {worker.index} exited during {op} (its log: {worker.log.name})"
            )
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise WorkerError(f"worker {worker.index}: {answer.get('error', 'failed')}")
        return answer

    async def close(self) -> None:
        async def stop(worker: WorkerProcess) -> None:
            process = worker.process
            if process.stdin is not None:
                with contextlib.suppress(ConnectionError, BrokenPipeError, RuntimeError):
                    process.stdin.write(b'{"op": "stop"}\n')
                    process.stdin.close()
            try:
                async with asyncio.timeout(STOP_GRACE_S):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    async with asyncio.timeout(5.0):
                        await process.wait()
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            worker.log.close()

        await asyncio.gather(*(stop(w) for w in self.workers), return_exceptions=True)
        self.workers.clear()


def cpu_times(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of process ``pid`` so far, from /proc; None where unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / ticks, int(fields[12]) / ticks
    except (ValueError, IndexError, OSError):
        return None


async def first_listen(port: int, limit_s: float) -> float:
    """The monotonic time a loopback ``port`` first accepts a connection (polled every 5 ms)."""
    async with asyncio.timeout(limit_s):
        while True:
            try:
                _, writer = await asyncio.open_connection(LOOPBACK, port)
            except OSError:
                await asyncio.sleep(LISTEN_POLL_S)
                continue
            at = time.monotonic()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return at


def cpu_snapshot(processes: dict[str, int]) -> dict[str, tuple[int, tuple[float, float]]]:
    return {
        name: (pid, times)
        for name, pid in processes.items()
        if (times := cpu_times(pid)) is not None
    }


def cpu_between(
    before: dict[str, tuple[int, tuple[float, float]]],
    after: dict[str, tuple[int, tuple[float, float]]],
    wall_s: float,
) -> list[ProcessCpu]:
    return [
        process_cpu(name, pid, before[name][1] if name in before else (0.0, 0.0), times, wall_s)
        for name, (pid, times) in after.items()
    ]


def load_average() -> str:
    """/proc/loadavg's first three figures (other work on this machine), or ""."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return ""
