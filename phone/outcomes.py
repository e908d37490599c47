"""What a command came to, in the phone client's words: the ``CommandOutcome`` a person is shown
(which path, whether it ran, whether it may have) and the sentences that say why."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from keycore.roles import Action
from phone.proximity import AtCar
from phone.wallet import WalletEntry

DEGRADED_HEADER = "PK-Degraded"
CommandPath = Literal["cloud", "ble", "none"]

FINAL = ("executed", "failed", "expired")
DONE = {
    Action.UNLOCK: "unlocked", Action.LOCK: "locked", Action.START: "started",
    Action.TRUNK: "opened the trunk", Action.CLIMATE: "turned on the climate",
}  # fmt: skip
CHECK = "it may have succeeded: check the car before trying again"
STAYS_QUEUED = "the command stays queued and runs only if the car connects before it expires"


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What happened to one command, and a sentence for the user saying which path and why."""

    path: CommandPath
    ok: bool
    status: str  # the cloud command's state, or granted / denied / unknown / busy / not_sent
    reason: str
    fell_back: bool = False
    may_have_succeeded: bool = False
    command_id: str | None = None
    code: str | None = None  # the car's reason code on a BLE denial, the keyserver's on a refusal


@dataclass(frozen=True, slots=True)
class Fallback:
    """The cloud cannot do it and has not done it: the BLE path may run."""

    why: str
    queued: Mapping[str, Any] | None = None  # the cloud's queued command, when there is one


def in_doubt(why: str, *, status: str = "unknown", command_id: str | None = None) -> CommandOutcome:
    return CommandOutcome("cloud", False, status, f"{why}: {CHECK}", may_have_succeeded=True,
                          command_id=command_id)  # fmt: skip


def at_car_outcome(near: AtCar, action: Action, entry: WalletEntry | None) -> CommandOutcome:
    """The answer when the Bluetooth path settled it: done, refused, or may have run."""
    if near.kind == "granted":
        until = "" if entry is None else f" with your key valid until {entry.valid_until}"
        return CommandOutcome("ble", True, "granted", f"{DONE[action]} over Bluetooth{until}",
                              code=near.code)  # fmt: skip
    if near.kind == "denied":
        return CommandOutcome("ble", False, "denied", near.why, code=near.code)
    return CommandOutcome("ble", False, "unknown", f"{near.why}: {CHECK}",
                          may_have_succeeded=True)  # fmt: skip


def after_bluetooth(
    near: AtCar, cloud: CommandOutcome | Fallback, entry: WalletEntry | None
) -> CommandOutcome:
    """The answer when Bluetooth sent nothing and the cloud was asked."""
    remote = near.kind == "out_of_range"  # the ordinary remote command: no need to say so
    if isinstance(cloud, CommandOutcome):
        if remote:
            return cloud
        return replace(cloud, reason=f"{near.why}; {cloud.reason}", fell_back=True)
    if cloud.queued is None:
        return CommandOutcome("none", False, "not_sent",
                              f"{near.why}; {cloud.why}, so nothing was sent")  # fmt: skip
    # The cloud holds the command for the car's next connection: it may yet run, so it is never
    # sent over Bluetooth as well; at the car, a new press goes over Bluetooth.
    # The hint is only for a phone that holds a usable key.
    hint = (
        ""
        if entry is None
        else (
            f"; at the car, your phone key works over Bluetooth (valid until {entry.valid_until})"
        )
    )
    return CommandOutcome(
        "cloud", False, "queued",
        f"{cloud.why} and {near.why}; {STAYS_QUEUED}{hint}",
        may_have_succeeded=True, command_id=str(cloud.queued["command_id"]), fell_back=not remote,
    )  # fmt: skip


def when(entry: WalletEntry) -> str:
    return datetime.fromtimestamp(entry.not_before, UTC).strftime("%Y-%m-%d %H:%MZ")


def final(action: Action, view: Mapping[str, Any]) -> CommandOutcome:
    status, detail, command_id = (
        str(view["status"]),
        str(view.get("detail", "")),
        view["command_id"],
    )
    if status == "executed":
        return CommandOutcome("cloud", True, status, f"{DONE[action]} through the cloud",
                              command_id=command_id)  # fmt: skip
    # "failed" may still mean the car moved (its detail says so); an expired command may have
    # run with its result lost on the way back.
    doubt = status == "expired" or detail.startswith("may have moved") or detail == "interrupted"
    reason = f"the command {status} ({detail})" if detail else f"the command {status}"
    return CommandOutcome("cloud", False, status, f"{reason}: {CHECK}" if doubt else reason,
                          may_have_succeeded=doubt, command_id=command_id)  # fmt: skip


def command_view(body: Any) -> Mapping[str, Any] | None:
    """The keyserver's Command object, if ``body`` is one."""
    if not isinstance(body, dict) or not isinstance(body.get("command_id"), str):
        return None
    if body.get("status") not in ("queued", "delivered", *FINAL):
        return None
    return body


def error_code(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None
