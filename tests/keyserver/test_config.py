"""Keyserver configuration: TOML, then environment, validated with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from keycore import Role
from keyserver.config import Config, ConfigError, load


def test_defaults_run_on_embedded_sqlite() -> None:
    config = load(None, env={})
    assert config == Config()
    assert config.redis_url is None
    assert config.sqlite_path == Path("var/keyserver.db")
    assert config.keys_path == Path("var/keys")
    assert config.lifetime(Role.GUEST) == 2 * 86_400


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "keyserver.toml"
    path.write_text(
        'port = 9000\nredis_url = "redis://127.0.0.1:7000/0"\n[token_lifetime_s]\nguest = 3600\n'
    )
    config = load(
        path, env={"PHONEKEY_PORT": "9100", "HOME": "/root", "PHONEKEY_LOG_LEVEL": "debug"}
    )
    assert config.port == 9100  # the environment wins
    assert config.redis_url == "redis://127.0.0.1:7000/0"
    assert config.lifetime(Role.GUEST) == 3600
    assert config.lifetime(Role.OWNER) == 7 * 86_400
    assert config.log_level == "debug"


def test_lifetimes_from_the_environment() -> None:
    config = load(None, env={"PHONEKEY_TOKEN_LIFETIME_S": "{ valet = 7200 }"})
    assert config.lifetime(Role.VALET) == 7200


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PHONEKEY_PORT": "eighty"}, "setting 'port': 'eighty' is not a valid value"),
        ({"PHONEKEY_PORT": "70000"}, "setting 'port': 70000 is outside 0…65535"),
        ({"PHONEKEY_NO_SUCH": "1"}, "unknown setting 'no_such'"),
        ({"PHONEKEY_REDIS_URL": "http://x"}, "must start with redis://"),
        ({"PHONEKEY_LOG_LEVEL": "loud"}, "setting 'log_level'"),
        ({"PHONEKEY_TOKEN_LIFETIME_S": "{ guest = 99999999 }"}, "token_lifetime_s.guest"),
        ({"PHONEKEY_TOKEN_LIFETIME_S": "{ king = 60 }"}, "setting 'token_lifetime_s'"),
        ({"PHONEKEY_TOKEN_LIFETIME_S": "[1"}, "setting 'token_lifetime_s'"),
    ],
)
def test_bad_values_give_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, env=env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "missing.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("port = = 1")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load(broken, env={})
    typed = tmp_path / "typed.toml"
    typed.write_text("port = 1.5")
    with pytest.raises(ConfigError, match="setting 'port'"):
        load(typed, env={})
