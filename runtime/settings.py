"""The one configuration reader: a TOML file, then environment variables over it; refusals are
one line on stderr and exit code 2.

The keyserver (``PHONEKEY_*``) and the vehicle agent (``PHONEKEY_AGENT_*``) read their settings
here and validate them in their own ``config.build``; a bad file or value stops the command with
one line naming it, never a traceback.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXIT_REFUSED = 2  # argparse's code for a command that cannot run as asked


def read_settings(
    path: Path | None,
    env: Mapping[str, str] | None,
    *,
    prefix: str,
    error: type[Exception],
) -> dict[str, Any]:
    """The settings in the TOML file ``path`` (if given), then every ``prefix``-named variable of
    ``env`` (default: the process environment) over them, its name without the prefix and in
    lower case. An unreadable file raises ``error`` with one line naming it."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values.update(tomllib.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise error(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise error(f"config file {path}: {exc}") from None
    environ = os.environ if env is None else env
    for name, raw in environ.items():
        if name.startswith(prefix):
            values[name[len(prefix) :].lower()] = raw
    return values


def refuse(program: str, error: Exception) -> int:
    """Say why ``program`` cannot run, in one line on stderr; the exit code to return."""
    print(f"{program}: {error}", file=sys.stderr)
    return EXIT_REFUSED
