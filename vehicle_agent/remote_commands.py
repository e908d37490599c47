"""Remote commands on the car, at most once: what the cloud link (vehicle_agent.channel) hands over
as it receives them, run one at a time, and their results until the keyserver acknowledges them.

A command is verified (signature, VIN, expiry by trusted time); its id is recorded durably
(``AgentState.begin_command``) BEFORE the actuator moves, and an id ever seen is never run again.
A command issued before the car's last in-person (BLE) action, for another action, is refused
(``SUPERSEDED``). Outcomes are durable; refusals and repeats are kept in memory only (the command
expires anyway) until acknowledged.
"""

from __future__ import annotations

from keycore import Reason
from keycore.channel import MAX_DETAIL_CHARS, MAX_RESULTS, CommandPush, CommandResult
from keycore.command import InvalidCommand, read_command
from vehicle_agent.actuator import ActuatorError
from vehicle_agent.link_stats import LinkStats
from vehicle_agent.vehicle import Vehicle

#: a remote command issued before the car's last in-person (BLE) action is refused with this
SUPERSEDED = "superseded: a phone acted on the car in person after this command was sent"


class RemoteCommands:
    """The car's remote commands and their unreported results (module doc); counts in ``stats``."""

    def __init__(self, vehicle: Vehicle, stats: LinkStats) -> None:
        self.vehicle = vehicle
        self.stats = stats
        self._executing: str | None = None
        # results kept in memory only: refusals (the command expires anyway) and repeats
        self._volatile: dict[str, CommandResult] = {}

    async def run(self, frame: CommandPush) -> None:
        """Verify and run one command pushed by the keyserver, at most once."""
        try:
            await self._execute(frame)
        finally:
            self._executing = None

    async def _execute(self, frame: CommandPush) -> None:
        vehicle, state = self.vehicle, self.vehicle.state
        now = vehicle.now()
        try:
            if vehicle.clock.reset:  # expiry cannot be judged on a lower bound of the time
                raise InvalidCommand(Reason.UNTRUSTED_TIME)
            command = read_command(frame.document, vin=vehicle.vin, now=now, trust=vehicle.trust)
        except InvalidCommand as error:
            reason = error.reason.value
            if not self._repeat_outcome(frame.command_id):
                status = "expired" if error.reason is Reason.EXPIRED else "failed"
                self._volatile[frame.command_id] = CommandResult(frame.command_id, status, reason)
            self.stats.commands_refused += 1
            self._audit(frame.command_id, "refused", reason)
            return
        action = command.action.name.lower()
        # the user acted in person after it was sent, differently: it must not run now. The same
        # action (a cloud unlock racing another phone's Bluetooth unlock) leaves the car as the
        # user wants it, so it runs; times compare to the millisecond.
        if (
            command.issued <= state.local_action_at()
            and state.local_action() != action
            and not self._repeat_outcome(command.command_id)
        ):
            self._volatile[command.command_id] = CommandResult(
                command.command_id, "failed", SUPERSEDED
            )
            self.stats.commands_refused += 1
            self._audit(command.command_id, "refused", SUPERSEDED)
            return
        if not state.begin_command(command.command_id, action, at=now):
            self.stats.commands_replayed += 1
            self._repeat_outcome(command.command_id)
            self._audit(command.command_id, "refused", Reason.REPLAYED.value)
            return
        self._executing = command.command_id
        try:
            await vehicle.actuator.perform(command.action)
            status, detail = "executed", ""
        except ActuatorError as error:
            moved = "may have moved: " if error.may_have_moved else ""
            status, detail = "failed", f"{moved}{error}"[:MAX_DETAIL_CHARS]
        state.finish_command(command.command_id, status, detail, at=vehicle.now())
        if status == "executed":
            self.stats.commands_executed += 1
        self._audit(command.command_id, status, action)

    def _repeat_outcome(self, command_id: str) -> bool:
        """Report again the outcome of a command seen before (the keyserver sent it again, so it
        may have lost the result); False if the car has never seen it."""
        record = self.vehicle.state.command(command_id)
        if record is None:
            return False
        if record.command_id != self._executing:
            status, detail = record.status, record.detail
            if status == "executing":  # left so by a crash: it may have moved, never run again
                status, detail = "failed", "interrupted"
            self._volatile[command_id] = CommandResult(command_id, status, detail)
        return True

    def _audit(self, command_id: str, outcome: str, detail: str) -> None:
        self.vehicle.state.add_audit(
            {"kind": "command", "path": "cloud", "command_id": command_id, "outcome": outcome,
             "detail": detail, "at": round(self.vehicle.now(), 3)}
        )  # fmt: skip

    def unreported(self) -> tuple[list[CommandResult], list[CommandResult]]:
        """The next results to report, at most ``MAX_RESULTS``: (the durable outcomes, the
        in-memory refusals and repeats)."""
        durable = [
            CommandResult(r.command_id, r.status, r.detail[:MAX_DETAIL_CHARS])
            for r in self.vehicle.state.unreported_commands()
            if r.command_id != self._executing  # not "interrupted": it is running right now
        ][:MAX_RESULTS]
        known = {r.command_id for r in durable}
        refusals = [r for r in self._volatile.values() if r.command_id not in known]
        return durable, refusals[: MAX_RESULTS - len(durable)]

    def acknowledged(self, durable: list[str], refusals: list[str]) -> None:
        """The keyserver has these results: never reported again."""
        self.vehicle.state.mark_reported(durable)
        for command_id in refusals:
            self._volatile.pop(command_id, None)
