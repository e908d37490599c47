"""`vehicle-agent provision`: register with a real keyserver app, learn its keys, show a code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from keycore import SoftwareSigner
from keycore.cose import point_bytes
from keycore.encoding import b64url_encode
from keyserver.app import KEYRING, STORE, create_app
from keyserver.config import build as keyserver_config
from tests.conftest import VIN
from vehicle_agent import cli
from vehicle_agent.config import AgentConfig, ConfigError, build
from vehicle_agent.provision import ProvisioningError, pairing_code, provision
from vehicle_agent.state import AgentState

SECRET = "factory-secret-0123456789"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[TestServer]:
    app = create_app(
        keyserver_config({"data_dir": str(tmp_path / "ks"), "provisioning_secret": SECRET})
    )
    async with TestServer(app, host="127.0.0.1") as test_server:
        yield test_server


def agent_config(server: TestServer, tmp_path: Path, **changes: str) -> AgentConfig:
    root = server.app[KEYRING].root_key
    values = {
        "vin": VIN,
        "keyserver_url": str(server.make_url("")),
        "root_key": b64url_encode(point_bytes(root)),
        "state_path": str(tmp_path / "agent" / "agent.db"),
        "provisioning_secret": SECRET,
    }
    values.update(changes)
    return build(values)


async def test_provision_registers_learns_keys_and_shows_a_code(
    server: TestServer, tmp_path: Path
) -> None:
    config = agent_config(server, tmp_path)
    code = await provision(config)
    assert len(code.code) == 8
    assert code.code.isdigit()
    assert code.shown() == f"{code.code[:4]} {code.code[4:]}"
    state = AgentState.open(config.state_path)
    identity = state.identity()
    assert identity.vin == VIN
    trust = state.trust(identity.root)
    assert server.app[KEYRING].ring.active.kid in trust.keys
    vehicle = await server.app[STORE].vehicle(VIN)
    assert vehicle is not None
    assert vehicle.public_key == point_bytes(identity.vehicle_key.public_key)
    state.close()

    again = await pairing_code(config)
    assert again.code.isdigit()
    with pytest.raises(ProvisioningError, match="provisioned already"):
        await provision(config)


async def test_a_server_whose_keys_do_not_verify_under_our_root_is_refused(
    server: TestServer, tmp_path: Path
) -> None:
    stranger = b64url_encode(point_bytes(SoftwareSigner.generate().public_key))
    config = agent_config(server, tmp_path, root_key=stranger)
    with pytest.raises(ProvisioningError, match="does not verify"):
        await provision(config)
    state = AgentState.open(config.state_path)
    with pytest.raises(Exception, match="not provisioned"):
        state.identity()  # nothing was kept


async def test_a_wrong_secret_is_reported(server: TestServer, tmp_path: Path) -> None:
    config = agent_config(server, tmp_path, provisioning_secret="x" * 20)
    with pytest.raises(ProvisioningError, match="registering the car: unauthorized"):
        await provision(config)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"vin": "nope"}, "setting 'vin'"),
        ({"keyserver_url": "ftp://x"}, "setting 'keyserver_url'"),
        ({"root_key": "AAAA"}, "setting 'root_key'"),
        ({"colour": "red"}, "unknown setting 'colour'"),
        ({"ble": "maybe"}, "setting 'ble'"),
        ({"ble_name": "a-name-far-too-long-to-advertise"}, "setting 'ble_name'"),
        ({"ble_name": "tab\there"}, "setting 'ble_name'"),
    ],
)
def test_bad_configuration(values: dict[str, str], message: str) -> None:
    base = {
        "vin": VIN,
        "keyserver_url": "http://127.0.0.1:1",
        "root_key": b64url_encode(point_bytes(SoftwareSigner.generate().public_key)),
    }
    base.update(values)
    with pytest.raises(ConfigError, match=message):
        build(base)


@pytest.mark.parametrize(
    ("values", "ble", "name"),
    [
        ({}, True, f"phonekey-{VIN[-6:]}"),
        ({"ble": "off", "ble_name": "garage"}, False, "garage"),
        ({"ble": False}, False, f"phonekey-{VIN[-6:]}"),  # TOML's own boolean
        ({"ble": "TRUE"}, True, f"phonekey-{VIN[-6:]}"),
    ],
)
def test_ble_settings(values: dict[str, object], ble: bool, name: str) -> None:
    key = b64url_encode(point_bytes(SoftwareSigner.generate().public_key))
    config = build({"vin": VIN, "keyserver_url": "http://127.0.0.1:1", "root_key": key, **values})
    assert (config.ble, config.ble_name) == (ble, name)


def test_cli_reports_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["provision", "--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vehicle-agent: config file not found")
    assert len(err.strip().splitlines()) == 1
