"""The console scripts' entry: a part whose extra is not installed says which one, in one line.

Each part installs what it runs (``pip install 'phonekey[keyserver]'``, ``[agent]``, ``[phone]``,
``[lab]``; the plain install is keycore's set only), yet every install carries every package. So
``phonekey`` on a car's computer, or ``keyserver`` after a plain ``pip install .``, would die on
an import traceback. The scripts enter here instead: this module lives in runtime because runtime
is standard library only, so every install can import it (keycore, which does no I/O, cannot hold a
program's entry), and it imports no part until the part is asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass

EXIT_MISSING_EXTRA = 2  # argparse's code for a command that cannot run as asked
# ModuleNotFoundError for one of these is a bug or a broken install, not a missing extra.
OWN_PACKAGES = frozenset(
    {
        "keycore",
        "resilience",
        "runtime",
        "keyserver",
        "vehicle_agent",
        "ble_fallback",
        "phone",
        "lab",
    }
)
# Modules that come with an extra other than the script's own (the radios are optional
# everywhere; ble_fallback.gatt already answers for them where a link is made).
MODULE_EXTRA = {"bleak": "ble", "bless": "ble"}


@dataclass(frozen=True)
class Part:
    script: str
    extra: str
    cli: str  # the module whose main() the script runs
    # The top-level modules the extra brings (tests/test_extras.py holds them to pyproject),
    # looked for before the part is imported: no half-run command that fails at its last step.
    modules: tuple[str, ...]


KEYSERVER = Part(
    "keyserver",
    "keyserver",
    "keyserver.cli",
    ("aiohttp", "redis", "tenacity", "prometheus_client", "pydantic"),
)
AGENT = Part(
    "vehicle-agent", "agent", "vehicle_agent.cli", ("aiohttp", "tenacity", "prometheus_client")
)
LAB = Part("phonekey", "lab", "lab.cli", (*KEYSERVER.modules, "chaoslib", "matplotlib"))


def keyserver() -> int:
    return run(KEYSERVER)


def vehicle_agent() -> int:
    return run(AGENT)


def phonekey() -> int:
    return run(LAB)


def message(part: Part, missing: str) -> str:
    extra = MODULE_EXTRA.get(missing, part.extra)
    return (
        f"{part.script}: {missing} is not installed; {part.script} needs the {extra} extra:"
        f" pip install 'phonekey[{extra}]'"
    )


def run(part: Part) -> int:
    """Run the part's command line, or say in one line (exit 2) which extra it lacks."""
    absent = [name for name in part.modules if importlib.util.find_spec(name) is None]
    if absent:
        print(message(part, absent[0]), file=sys.stderr)
        return EXIT_MISSING_EXTRA
    # Around the whole run as well: a module the list above does not name (a dependency's
    # own dependency, say) still gets the one line rather than a traceback.
    try:
        code: int = importlib.import_module(part.cli).main()
    except ModuleNotFoundError as error:
        missing = (error.name or "").partition(".")[0]
        if not missing or missing in OWN_PACKAGES:
            raise
        print(message(part, missing), file=sys.stderr)
        return EXIT_MISSING_EXTRA
    return code
