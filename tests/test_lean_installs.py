"""Each part's extra installed for real, each in a fresh virtual environment: the car's computer
gets no Redis client, no numpy, no matplotlib, no chaoslib; the keyserver no plotting or chaos
package; the plain install neither. Marked slow: it builds the wheel and runs four pip installs
(~30 s here, from the machine's package index). tests/test_extras.py checks the declarations
in the default run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.extras import OWN_PACKAGES
from tests.test_extras import DENIED, ROOT, name_of

pytestmark = pytest.mark.slow

# What the brief names for the car: none of these may even be importable there.
NOT_ON_THE_CAR = ("numpy", "matplotlib", "chaoslib", "redis")
NO_LAB = ("numpy", "matplotlib", "chaoslib", "PIL")
# The wheel is built from what the image copies (deploy/Dockerfile), not from the work tree,
# so no build/ or egg-info lands in the checkout.
SOURCES = ("pyproject.toml", "README.md", *sorted(OWN_PACKAGES))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, tree / name)
    out = tmp_path_factory.mktemp("wheel")
    pip(sys.executable, "wheel", "--no-deps", "--wheel-dir", str(out), str(tree))
    (built,) = out.glob("phonekey-*.whl")
    return built


@pytest.fixture(scope="module")
def install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A fresh environment with `phonekey[extra]` (or the plain install for "base"), made once."""
    made: dict[str, Path] = {}

    def make(extra: str) -> Path:
        if extra not in made:
            where = tmp_path_factory.mktemp(f"venv-{extra}")
            venv.create(where, with_pip=False)  # pip runs from outside: no pip in the set
            spec = f"phonekey @ {wheel.as_uri()}" if extra == "base" else (
                f"phonekey[{extra}] @ {wheel.as_uri()}"
            )  # fmt: skip
            pip(sys.executable, "--python", str(where / "bin" / "python"), "install", spec)
            made[extra] = where
        return made[extra]

    return make


def pip(python: str, *args: str) -> None:
    done = subprocess.run(
        [python, "-m", "pip", "--quiet", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def run(where: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A program of the environment, from a neutral directory and without PYTHONPATH, so that
    nothing of the work tree can be imported by accident."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [str(where / "bin" / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        check=False,
        cwd=where,
        env=env,
    )


def probe(where: Path, modules: tuple[str, ...], absent: tuple[str, ...]) -> dict[str, object]:
    """Import ``modules`` in the environment (-I: isolated); say which distributions it holds
    and which of ``absent`` could be imported."""
    code = (
        "import importlib, importlib.metadata as m, importlib.util as u, json, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(json.dumps({'distributions': sorted(d.metadata['Name'] for d in m.distributions()),"
        f" 'importable': [n for n in {list(absent)!r} if u.find_spec(n) is not None]}}))"
    )
    done = run(where, "python", "-I", "-c", code)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def distributions(result: dict[str, object]) -> set[str]:
    names = result["distributions"]
    assert isinstance(names, list)
    return {name_of(n) for n in names}


def test_the_car_runs_without_redis_numpy_matplotlib_or_chaoslib(
    install: Callable[[str], Path],
) -> None:
    where = install("agent")
    result = probe(
        where, ("vehicle_agent", "vehicle_agent.cli", "vehicle_agent.daemon"), NOT_ON_THE_CAR
    )
    assert result["importable"] == []
    assert distributions(result) & DENIED["agent"] == set()
    helped = run(where, "vehicle-agent", "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: vehicle-agent")
    tools = run(where, "phonekey", "--help")  # the lab is not there, and it says so in one line
    assert tools.returncode == 2
    assert tools.stdout == ""
    assert tools.stderr.count("\n") == 1
    assert "pip install 'phonekey[lab]'" in tools.stderr


def test_the_keyserver_set_has_no_plotting_or_chaos(install: Callable[[str], Path]) -> None:
    where = install("keyserver")
    result = probe(where, ("keyserver", "keyserver.cli", "keyserver.app"), NO_LAB)
    assert result["importable"] == []
    assert distributions(result) & DENIED["keyserver"] == set()
    helped = run(where, "keyserver", "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: keyserver")


def test_the_phone_client_runs_on_its_own_set(install: Callable[[str], Path]) -> None:
    where = install("phone")
    # resilience's breaker, throttle and waiting are standard library only: the phone's set has
    # no prometheus-client (only resilience.breaker_metrics needs it, on the keyserver and car)
    modules = ("phone.client", "ble_fallback.phone", "phone.wallet", "resilience.breaker")
    result = probe(where, modules, (*NOT_ON_THE_CAR, "prometheus_client"))
    assert result["importable"] == []
    assert distributions(result) & DENIED["phone"] == set()


def test_the_plain_install_is_keycore_alone(install: Callable[[str], Path]) -> None:
    where = install("base")
    result = probe(where, ("keycore",), (*NO_LAB, "redis", "aiohttp"))
    assert result["importable"] == []
    assert distributions(result) & DENIED["base"] == set()
    agent = run(where, "vehicle-agent", "--help")
    assert agent.returncode == 2
    assert agent.stderr.count("\n") == 1
    assert "pip install 'phonekey[agent]'" in agent.stderr
