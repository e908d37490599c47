"""The agent's configuration: a TOML file, then ``PHONEKEY_AGENT_*`` environment variables.

    vin = "5YJ3E1EA7KF000001"
    keyserver_url = "http://127.0.0.1:8080"
    root_key = "<base64url of the root's 64-byte P-256 x||y>"   # installed at the factory
    state_path = "var/agent.db"
    provisioning_secret = "…"                                   # only for `provision`

The root key comes from the configuration, never from the server: a car that learned its root
from the network would trust whoever answered first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from keycore.cose import load_point
from keycore.encoding import b64url_decode
from keycore.token import check_vin
from runtime.settings import read_settings
from vehicle_agent.errors import AgentError

ENV_PREFIX = "PHONEKEY_AGENT_"


class ConfigError(AgentError):
    pass


@dataclass(frozen=True)
class AgentConfig:
    vin: str
    keyserver_url: str
    root_key: ec.EllipticCurvePublicKey = field(repr=False)
    state_path: Path = Path("var/agent.db")
    provisioning_secret: str = field(default="", repr=False)
    metrics_port: int = 0  # 0: no metrics endpoint
    ble: bool = True  # serve phones over Bluetooth LE (the `ble` extra and a BLE stack)
    ble_name: str = ""  # advertised name; default "phonekey-" + the VIN's last 6 characters


_REQUIRED = ("vin", "keyserver_url", "root_key")
_KNOWN = {*_REQUIRED, "state_path", "provisioning_secret", "metrics_port", "ble", "ble_name"}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
MAX_BLE_NAME = 20  # fits a BLE advertisement with the service UUID


def load(path: Path | None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read ``path`` (if given), apply the environment, validate; raises ConfigError."""
    return build(read_settings(path, env, prefix=ENV_PREFIX, error=ConfigError))


def build(values: Mapping[str, Any]) -> AgentConfig:
    unknown = set(values) - _KNOWN
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}")
    missing = [name for name in _REQUIRED if not values.get(name)]
    if missing:
        raise ConfigError(f"missing setting {missing[0]!r}")
    vin = str(values["vin"])
    try:
        check_vin(vin)
    except ValueError as exc:
        raise ConfigError(f"setting 'vin': {exc}") from None
    url = str(values["keyserver_url"]).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError("setting 'keyserver_url': must start with http:// or https://")
    try:
        port = int(values.get("metrics_port", 0))
    except (TypeError, ValueError):
        raise ConfigError("setting 'metrics_port': not an integer") from None
    if not 0 <= port <= 65535:
        raise ConfigError("setting 'metrics_port': outside 0…65535")
    ble = values.get("ble", True)
    if isinstance(ble, str) and ble.lower() in (*_TRUE, *_FALSE):
        ble = ble.lower() in _TRUE
    if not isinstance(ble, bool):
        raise ConfigError("setting 'ble': true or false")
    ble_name = str(values.get("ble_name", "")) or f"phonekey-{vin[-6:]}"
    if len(ble_name) > MAX_BLE_NAME or not ble_name.isprintable():
        raise ConfigError(f"setting 'ble_name': at most {MAX_BLE_NAME} printable characters")
    return AgentConfig(
        vin=vin,
        keyserver_url=url,
        root_key=_root_key(str(values["root_key"])),
        state_path=Path(values.get("state_path", "var/agent.db")),
        provisioning_secret=str(values.get("provisioning_secret", "")),
        metrics_port=port,
        ble=ble,
        ble_name=ble_name,
    )


def _root_key(text: str) -> ec.EllipticCurvePublicKey:
    try:
        xy = b64url_decode(text)
        if len(xy) != 64:
            raise ValueError("not 64 bytes")
        return load_point(xy)
    except ValueError:
        raise ConfigError(
            "setting 'root_key': base64url of the root's 64-byte P-256 public key"
        ) from None
