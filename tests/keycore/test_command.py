"""Signed remote commands: verified, bound to one car, short-lived; damage refused cleanly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keycore import Action, Reason, SoftwareSigner, cose
from keycore.command import InvalidCommand, RemoteCommand, read_command, sign_command
from keycore.encoding import dumps
from tests.conftest import NOW, OTHER_VIN, VIN, World

COMMAND = RemoteCommand("cmd-0001", VIN, Action.UNLOCK, NOW, NOW + 60)


def reason(world: World, data: bytes, **kwargs: object) -> Reason:
    args: dict[str, object] = {"vin": VIN, "now": NOW + 1, "trust": world.trust}
    args.update(kwargs)
    with pytest.raises(InvalidCommand) as caught:
        read_command(data, **args)  # type: ignore[arg-type]
    return caught.value.reason


def test_round_trip(world: World) -> None:
    data = sign_command(world.issuer, COMMAND)
    assert read_command(data, vin=VIN, now=NOW + 1, trust=world.trust) == COMMAND


def test_refusals(world: World) -> None:
    data = sign_command(world.issuer, COMMAND)
    assert reason(world, data, vin=OTHER_VIN) is Reason.WRONG_VEHICLE
    assert reason(world, data, now=NOW + 60) is Reason.EXPIRED
    assert reason(world, data, now=NOW - 61) is Reason.NOT_YET_VALID
    assert reason(world, sign_command(SoftwareSigner.generate(), COMMAND)) is Reason.UNKNOWN_KEY
    tampered = bytearray(data)
    tampered[-1] ^= 1
    assert reason(world, bytes(tampered)) is Reason.BAD_SIGNATURE
    assert reason(world, b"\xd2" * 600) is Reason.TOO_LARGE


def test_the_millisecond_of_issue_orders_commands_within_a_second(world: World) -> None:
    precise = RemoteCommand("cmd-0002", VIN, Action.UNLOCK, NOW, NOW + 60, issued_ms=750)
    read = read_command(
        sign_command(world.issuer, precise), vin=VIN, now=NOW + 1, trust=world.trust
    )
    assert read == precise
    assert read.issued == NOW + 0.75


def test_a_command_without_milliseconds_reads_as_the_start_of_its_second(world: World) -> None:
    payload = {1: b"cmd-0003", 2: VIN, 3: int(Action.LOCK), 4: NOW, 5: NOW + 60}
    data = cose.sign1(dumps(payload), typ="pk.cmd", signer=world.issuer)
    assert read_command(data, vin=VIN, now=NOW + 1, trust=world.trust).issued == NOW
    for bad in (1000, -1):
        damaged = cose.sign1(dumps({**payload, 6: bad}), typ="pk.cmd", signer=world.issuer)
        assert reason(world, damaged) is Reason.MALFORMED


def test_signing_policy() -> None:
    signer = SoftwareSigner.generate()
    with pytest.raises(ValueError, match="lives"):
        sign_command(signer, RemoteCommand("cmd-0001", VIN, Action.UNLOCK, NOW, NOW + 3600))
    with pytest.raises(ValueError, match="command id"):
        sign_command(signer, RemoteCommand("x", VIN, Action.UNLOCK, NOW, NOW + 60))
    with pytest.raises(ValueError, match="issued_ms"):
        sign_command(signer, RemoteCommand("cmd-0001", VIN, Action.UNLOCK, NOW, NOW + 60, 1000))


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 1000), value=st.integers(0, 255))
def test_any_byte_change_is_refused_or_verifies_to_the_same(
    world: World, position: int, value: int
) -> None:
    data = bytearray(sign_command(world.issuer, COMMAND))
    data[position % len(data)] = value
    try:
        command = read_command(bytes(data), vin=VIN, now=NOW + 1, trust=world.trust)
    except InvalidCommand:
        return
    assert command == COMMAND


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes(world: World, data: bytes) -> None:
    with pytest.raises(InvalidCommand):
        read_command(data, vin=VIN, now=NOW, trust=world.trust)
