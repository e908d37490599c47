"""Signed remote commands: the keyserver's order to one car, verified by the car before it acts.

A command is a COSE_Sign1 (typ ``pk.cmd``) by an issuer key over ``{1: id, 2: VIN, 3: action,
4: issued_at, 5: expires_at, 6: issued_ms}`` (6, the milliseconds within ``issued_at``'s second, is
optional: a car orders a command against an in-person action in the same second by it). The car
executes it only if the signature verifies under its trust store, it names this car, it has not
expired by the car's trusted time, and the car has never seen its id (that last check is the car's
durable state, not keycore's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from keycore import cose
from keycore.encoding import as_bytes, as_int, as_map, dumps, loads_strict
from keycore.errors import KeycoreError, Reason
from keycore.roles import Action
from keycore.token import MAX_TIME, check_vin
from keycore.trust import TrustStore, open_signed

TYP_COMMAND = "pk.cmd"
MAX_COMMAND_BYTES = 512
MAX_COMMAND_LIFETIME = 300  # seconds: a remote command is for now, not for later
CMD_ID, CMD_VIN, CMD_ACTION, CMD_ISSUED, CMD_EXPIRES, CMD_ISSUED_MS = 1, 2, 3, 4, 5, 6
_REQUIRED = {CMD_ID, CMD_VIN, CMD_ACTION, CMD_ISSUED, CMD_EXPIRES}
_KEYS = _REQUIRED | {CMD_ISSUED_MS}
_COMMAND_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


class InvalidCommand(KeycoreError):
    message = "invalid remote command"


@dataclass(frozen=True, slots=True)
class RemoteCommand:
    command_id: str
    vin: str
    action: Action
    issued_at: int
    expires_at: int
    issued_ms: int = 0  # 0–999: the milliseconds within issued_at's second

    @property
    def issued(self) -> float:
        """When it was signed, to the millisecond."""
        return self.issued_at + self.issued_ms / 1000


def sign_command(signer: cose.Signer, command: RemoteCommand) -> bytes:
    check_vin(command.vin)
    if not _COMMAND_ID.fullmatch(command.command_id):
        raise ValueError("a command id is 8 to 64 characters of [A-Za-z0-9_-]")
    if not 0 < command.expires_at - command.issued_at <= MAX_COMMAND_LIFETIME:
        raise ValueError(f"a command lives 1 to {MAX_COMMAND_LIFETIME} s")
    if not 0 <= command.issued_ms <= 999:
        raise ValueError("issued_ms is 0 to 999")
    payload = {
        CMD_ID: command.command_id.encode(),
        CMD_VIN: command.vin,
        CMD_ACTION: int(command.action),
        CMD_ISSUED: command.issued_at,
        CMD_EXPIRES: command.expires_at,
        CMD_ISSUED_MS: command.issued_ms,
    }
    return cose.sign1(dumps(payload), typ=TYP_COMMAND, signer=signer)


def read_command(data: bytes, *, vin: str, now: float, trust: TrustStore) -> RemoteCommand:
    """Verify a command for car ``vin`` at trusted time ``now``; raises InvalidCommand with
    malformed, too_large, unknown_key, algorithm_mismatch, bad_signature, wrong_vehicle,
    not_yet_valid (issued after now + 60 s) or expired."""
    err = InvalidCommand
    msg, _ = open_signed(
        data, typ=TYP_COMMAND, max_size=MAX_COMMAND_BYTES, error=err, lookup=trust.lookup, now=now
    )
    body = as_map(loads_strict(msg.payload, err, max_size=MAX_COMMAND_BYTES), err, _KEYS, _REQUIRED)
    raw_id = as_bytes(body[CMD_ID], err, 8, 64)
    try:
        command_id = raw_id.decode("ascii")
    except UnicodeDecodeError:
        raise err(Reason.MALFORMED, "command id") from None
    if not _COMMAND_ID.fullmatch(command_id) or type(body[CMD_VIN]) is not str:
        raise err(Reason.MALFORMED, "command id or VIN")
    issued = as_int(body[CMD_ISSUED], err, 0, MAX_TIME)
    expires = as_int(body[CMD_EXPIRES], err, issued + 1, issued + MAX_COMMAND_LIFETIME)
    issued_ms = as_int(body.get(CMD_ISSUED_MS, 0), err, 0, 999)
    action = Action(as_int(body[CMD_ACTION], err, 0, len(Action) - 1))
    if body[CMD_VIN] != vin:
        raise err(Reason.WRONG_VEHICLE)
    # A small allowance for a car clock that lags the server's; never for an expired command.
    if issued > now + 60:
        raise err(Reason.NOT_YET_VALID)
    if now >= expires:
        raise err(Reason.EXPIRED)
    return RemoteCommand(command_id, vin, action, issued, expires, issued_ms)
