"""Keyserver configuration: a TOML file, then ``PHONEKEY_*`` environment variables, validated.

Every setting has a default, so an empty file (or none) runs a single node on the embedded SQLite
store. A bad value stops start-up with one line naming the setting (``ConfigError``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from keycore import ROLE_MAX_LIFETIME, Role
from keyserver.client_address import HEADERS as FORWARDED_HEADERS
from keyserver.client_address import trusted_networks
from keyserver.errors import KeyserverError

ENV_PREFIX = "PHONEKEY_"
DAY = 86_400


class ConfigError(KeyserverError):
    pass


def _default_lifetimes() -> dict[str, int]:
    # How long an issued token lives, per role; refresh-ahead keeps owners days ahead offline.
    return {"owner": 7 * DAY, "driver": 7 * DAY, "guest": 2 * DAY, "valet": DAY, "service": DAY}


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("var")  # SQLite database and keys, unless set apart
    # default <data_dir>/keys, made on first start; set, it must hold a ring (`keyserver keys`)
    key_dir: Path | None = None
    key_poll_s: float = 10.0  # how often the key directory is checked for a published rotation
    redis_url: str | None = None  # set to use Redis; unset means the embedded SQLite store
    redis_prefix: str = "pk:"
    redis_timeout_s: float = 0.5
    # "host:port,host:port": find the Redis master through these Sentinels (not with redis_url)
    redis_sentinels: str = ""
    redis_service: str = "phonekey"  # the master's name in the Sentinels' configuration
    redis_wait_replicas: int = 0  # acknowledge a write once this many replicas have it (WAIT)
    session_ttl_s: int = 12 * 3600
    refresh_ahead_s: int = 3 * DAY
    token_lifetime_s: dict[str, int] = field(default_factory=_default_lifetimes)
    pairing_ttl_s: int = 600
    pairing_attempts: int = 5
    # shared with the factory that provisions cars; empty disables POST /v1/vehicles
    provisioning_secret: str = field(default="", repr=False)
    # rate limits (keyserver.ratelimit): each route declares which of these apply to it
    login_attempts_per_minute: int = 10  # per e-mail address tried and per client address
    # pairings tried per account per minute, across all cars; a fleet operator pairs many cars
    pairing_attempts_per_minute: int = 10
    registrations_per_hour: int = 20  # per client address
    account_writes_per_minute: int = 30  # per account (or car), per route: revoke, share, ...
    # per client address, per route: generous, as many people may share one address (a NAT)
    address_writes_per_minute: int = 600
    rate_limit_entries: int = 100_000  # counts kept in this process (revocations; store outages)
    # where the client address comes from (keyserver.client_address): the peer, unless it is one
    # of these proxies ("10.0.0.0/8, 192.0.2.7"); then the header they write
    trusted_proxies: str = ""
    forwarded_header: str = "x-forwarded-for"  # or "forwarded" (RFC 7239)
    proof_max_skew_s: int = 60
    command_ttl_s: int = 60  # a remote command's life: from issue to the car's last moment to act
    channel_heartbeat_s: float = 30.0  # WebSocket ping interval; a silent car is dropped after it
    # channel upgrades admitted per second (a burst of one second's worth); the cars over it get
    # 429 reconnect_paced and a slot to come back at (keyserver.pacing): a restart's reconnects
    channel_upgrades_per_s: float = 250.0
    max_body_bytes: int = 64 * 1024
    request_deadline_s: float = 5.0  # also the cap on a caller's PK-Deadline-Ms
    # admission control (keyserver.admission): requests inside handlers, open WebSockets aside
    max_in_flight: int = 256  # critical work is refused (429) from here
    shed_sheddable_at: int = 128  # sheddable work is refused (429) from here
    # degraded answers while the store is down (keyserver.degraded, keyserver.lastknown)
    degraded_token_lifetime_s: int = DAY  # a token signed without the store lives at most this
    last_known_entries: int = 100_000  # records kept per process to answer reads from
    last_known_max_age_s: int = DAY  # older last known data is not served
    shutdown_grace_s: float = 10.0
    # at shutdown, after the grace: time to replay the journal into the store, if it answers
    journal_drain_s: float = 5.0
    log_level: str = "info"

    @property
    def keys_path(self) -> Path:
        return self.key_dir if self.key_dir is not None else self.data_dir / "keys"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "keyserver.db"

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "journal.db"

    def lifetime(self, role: Role) -> int:
        return self.token_lifetime_s[role.name.lower()]


_BOUNDS: dict[str, tuple[float, float]] = {
    "port": (0, 65535),
    "redis_timeout_s": (0.01, 30),
    "key_poll_s": (0.01, 3600),
    "redis_wait_replicas": (0, 10),
    "session_ttl_s": (60, 30 * DAY),
    "refresh_ahead_s": (60, 30 * DAY),
    "pairing_ttl_s": (30, DAY),
    "pairing_attempts": (1, 20),
    "login_attempts_per_minute": (1, 10_000),
    "pairing_attempts_per_minute": (1, 100_000),
    "registrations_per_hour": (1, 10_000_000),
    "account_writes_per_minute": (1, 10_000_000),
    "address_writes_per_minute": (1, 10_000_000),
    "rate_limit_entries": (1024, 10_000_000),
    "proof_max_skew_s": (5, 600),
    "command_ttl_s": (5, 300),
    "channel_heartbeat_s": (1, 600),
    "channel_upgrades_per_s": (1, 5_000),
    "max_body_bytes": (1024, 16 * 1024 * 1024),
    "request_deadline_s": (0.05, 120),
    "max_in_flight": (1, 100_000),
    "shed_sheddable_at": (1, 100_000),
    "degraded_token_lifetime_s": (60, 7 * DAY),
    "last_known_entries": (0, 10_000_000),
    "last_known_max_age_s": (0, 7 * DAY),
    "shutdown_grace_s": (0, 300),
    "journal_drain_s": (0, 300),
}
_LOG_LEVELS = {"debug", "info", "warning", "error"}
_SECRETS = {"provisioning_secret"}  # never echoed in an error message
MIN_SECRET_CHARS = 16


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (if given), apply the environment, validate; raises ConfigError."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values.update(tomllib.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    environ = os.environ if env is None else env
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX):
            values[name[len(ENV_PREFIX) :].lower()] = raw
    return build(values)


def build(values: Mapping[str, Any]) -> Config:
    known = {f.name: f for f in fields(Config)}
    config = Config()
    for name, raw in values.items():
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}")
        config = replace(config, **{name: _convert(name, raw, getattr(config, name))})
    _validate(config)
    return config


def _convert(name: str, raw: Any, default: Any) -> Any:
    try:
        if name == "token_lifetime_s":
            return _lifetimes(raw)
        if name in ("key_dir", "data_dir"):
            return Path(raw)
        if name == "redis_url":
            return str(raw) or None
        if isinstance(default, bool):
            raise TypeError
        if isinstance(default, int):
            if isinstance(raw, bool | float):
                raise TypeError
            return int(raw)
        if isinstance(default, float):
            if isinstance(raw, bool):
                raise TypeError
            return float(raw)
        if not isinstance(raw, str):
            raise TypeError
        return raw
    except (TypeError, ValueError):
        shown = "the value" if name in _SECRETS else repr(raw)
        raise ConfigError(f"setting {name!r}: {shown} is not a valid value") from None


def _lifetimes(raw: Any) -> dict[str, int]:
    table = raw if isinstance(raw, Mapping) else tomllib.loads(f"t = {raw}")["t"]
    lifetimes = _default_lifetimes()
    for role, seconds in table.items():
        if role not in lifetimes or type(seconds) is not int:
            raise ValueError(role)
        lifetimes[role] = seconds
    return lifetimes


def sentinel_addresses(value: str) -> list[tuple[str, int]]:
    """``redis_sentinels`` ("host:port,host:port") as addresses; raises ConfigError."""
    addresses = []
    for item in value.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"setting 'redis_sentinels': {item.strip()!r} is not host:port")
        addresses.append((host, int(port)))
    return addresses


def _validate(config: Config) -> None:
    for name, (lo, hi) in _BOUNDS.items():
        value = getattr(config, name)
        if not lo <= value <= hi:
            raise ConfigError(f"setting {name!r}: {value} is outside {lo}…{hi}")
    for role in Role:
        seconds = config.lifetime(role)
        if not 60 <= seconds <= ROLE_MAX_LIFETIME[role]:
            raise ConfigError(
                f"token_lifetime_s.{role.name.lower()}: {seconds} is outside"
                f" 60…{ROLE_MAX_LIFETIME[role]}"
            )
    if config.redis_url is not None and not config.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError("setting 'redis_url': must start with redis://, rediss:// or unix://")
    if config.redis_sentinels:
        if config.redis_url is not None:
            raise ConfigError("settings 'redis_url' and 'redis_sentinels': set one, not both")
        sentinel_addresses(config.redis_sentinels)
        if not config.redis_service.strip() or not config.redis_service.isprintable():
            raise ConfigError("setting 'redis_service': a Sentinel master name is needed")
    if config.provisioning_secret and len(config.provisioning_secret) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"setting 'provisioning_secret': empty (provisioning disabled) or at least"
            f" {MIN_SECRET_CHARS} characters"
        )
    if config.shed_sheddable_at > config.max_in_flight:
        raise ConfigError("setting 'shed_sheddable_at': must not exceed 'max_in_flight'")
    try:
        trusted_networks(config.trusted_proxies)
    except ValueError as error:
        raise ConfigError(f"setting 'trusted_proxies': {error}") from None
    if config.forwarded_header not in FORWARDED_HEADERS:
        raise ConfigError(
            f"setting 'forwarded_header': one of {', '.join(sorted(FORWARDED_HEADERS))}"
        )
    if config.log_level not in _LOG_LEVELS:
        raise ConfigError(f"setting 'log_level': one of {', '.join(sorted(_LOG_LEVELS))}")
