"""The one configuration reader (runtime.settings): file, then environment; one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.settings import EXIT_REFUSED, read_settings, refuse


class Refused(Exception):
    pass


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('port = 1\nhost = "a"\n')
    env = {"PK_PORT": "2", "PK_LOG_LEVEL": "debug", "OTHER_PORT": "3"}
    values = read_settings(path, env, prefix="PK_", error=Refused)
    assert values == {"port": "2", "host": "a", "log_level": "debug"}


def test_no_file_is_the_environment_alone() -> None:
    assert read_settings(None, {"PK_A": "1"}, prefix="PK_", error=Refused) == {"a": "1"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "config file not found"),
        (b"port = = 1", "config file .*c.toml: "),
        (b"\xff", "config file .*c.toml: "),
    ],
)
def test_an_unreadable_file_is_one_error_naming_it(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(Refused, match=message) as refused:
        read_settings(path, {}, prefix="PK_", error=Refused)
    assert str(path) in str(refused.value)
    assert "\n" not in str(refused.value).strip()


def test_refuse_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert refuse("prog", Refused("setting 'port': 'x' is not a valid value")) == EXIT_REFUSED == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "prog: setting 'port': 'x' is not a valid value\n"
