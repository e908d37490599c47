"""Each part installs what it runs: the extras in pyproject.toml against what each part must not
carry, the Makefile's install against all of them, and the console scripts' one-line answer
when an extra is missing (runtime/extras.py). tests/test_lean_installs.py installs them for real."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path
from types import ModuleType

import pytest

import resilience
from runtime import extras
from runtime.extras import AGENT, KEYSERVER, LAB, Part

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

PLOTTING = frozenset({"matplotlib", "numpy", "pillow", "contourpy", "kiwisolver", "fonttools"})
CHAOS = frozenset({"chaostoolkit-lib", "chaostoolkit", "logzero"})
REDIS = frozenset({"redis", "hiredis"})
TESTING = frozenset({"pytest", "schemathesis", "hypothesis", "ruff", "mypy", "pyyaml"})
RADIO = frozenset({"bleak", "bless"})
# What each part must never pull in; "base" is the plain `pip install .`.
DENIED = {
    "base": PLOTTING | CHAOS | REDIS | TESTING | RADIO | {"aiohttp", "tenacity"},
    "keyserver": PLOTTING | CHAOS | TESTING | RADIO,
    "agent": PLOTTING | CHAOS | REDIS | TESTING,
    "phone": PLOTTING | CHAOS | REDIS | TESTING,
}


def name_of(requirement: str) -> str:
    """The PEP 503 name of a requirement string ("redis[hiredis]>=5" → "redis")."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def declared(extra: str) -> set[str]:
    """The names an extra declares, its own `phonekey[...]` references expanded, plus the base."""
    requirements = PROJECT["dependencies"] if extra == "base" else [
        *PROJECT["dependencies"],
        *PROJECT["optional-dependencies"][extra],
    ]  # fmt: skip
    names: set[str] = set()
    for requirement in requirements:
        if name_of(requirement) == "phonekey":
            inner = re.search(r"\[([^\]]+)\]", requirement)
            assert inner is not None, requirement
            for other in inner.group(1).split(","):
                names |= declared(other.strip())
        else:
            names.add(name_of(requirement))
    return names


@pytest.mark.parametrize("part", sorted(DENIED))
def test_no_part_declares_what_it_must_not_carry(part: str) -> None:
    assert declared(part) & DENIED[part] == set()


def test_the_base_is_keycore_s_set() -> None:
    assert declared("base") == {"cryptography", "cbor2"}


def test_the_lab_and_the_tests_carry_every_part() -> None:
    parts = {"keyserver", "agent", "phone"}
    assert declared("lab") >= set().union(*(declared(p) for p in parts)) | {
        "matplotlib",
        "chaostoolkit-lib",
    }
    assert declared("dev") >= declared("lab") | {"pytest", "mypy"}


def test_the_keyserver_image_can_run_the_agent() -> None:
    """compose runs `vehicle-agent` in the keyserver's image (deploy/compose.yaml)."""
    assert declared("agent") <= declared("keyserver")


def test_make_installs_every_extra() -> None:
    """`make demo` and `make test` install everything the extras name."""
    spec = re.search(r"pip install --quiet -e '\.\[([^\]]+)\]'", (ROOT / "Makefile").read_text())
    assert spec is not None
    installed = set().union(*(declared(extra) for extra in spec.group(1).split(",")))
    assert installed == set().union(*(declared(e) for e in PROJECT["optional-dependencies"]))


def test_the_console_scripts_enter_through_the_extras_check() -> None:
    assert PROJECT["scripts"] == {
        "keyserver": "runtime.extras:keyserver",
        "vehicle-agent": "runtime.extras:vehicle_agent",
        "phonekey": "runtime.extras:phonekey",
    }


@pytest.mark.parametrize("part", [KEYSERVER, AGENT, LAB], ids=lambda p: p.extra)
def test_each_script_looks_for_the_modules_of_its_extra(part: Part) -> None:
    """The modules the launcher looks for are the ones the extra's own packages provide (the
    installed distributions say which module comes from which package)."""
    provided: dict[str, set[str]] = {}
    for module, distributions in packages_distributions().items():
        for distribution in distributions:
            provided.setdefault(name_of(distribution), set()).add(module)
    brought = declared(part.extra) - declared("base")
    assert {m for d in brought for m in provided[d]} >= set(part.modules)
    for distribution in brought:
        assert provided[distribution] & set(part.modules), f"{distribution} is not looked for"


def _fake_cli(monkeypatch: pytest.MonkeyPatch, raised: BaseException | None) -> Part:
    module = ModuleType("fake_cli")

    def main() -> int:
        if raised is not None:
            raise raised
        return 7

    module.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_cli", module)
    return Part("phonekey", "lab", "fake_cli", ("sys",))


def test_a_missing_extra_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    part = Part("phonekey", "lab", "lab.cli", ("sys", "no_such_module_in_phonekey"))
    assert extras.run(part) == extras.EXIT_MISSING_EXTRA
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "phonekey: no_such_module_in_phonekey is not installed; phonekey needs the lab extra:"
        " pip install 'phonekey[lab]'\n"
    )


def test_a_module_missing_mid_run_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = ModuleNotFoundError("No module named 'matplotlib.pyplot'", name="matplotlib.pyplot")
    assert extras.run(_fake_cli(monkeypatch, missing)) == extras.EXIT_MISSING_EXTRA
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "matplotlib is not installed" in err
    assert "pip install 'phonekey[lab]'" in err


def test_a_missing_radio_names_the_ble_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = ModuleNotFoundError("No module named 'bless'", name="bless")
    assert extras.run(_fake_cli(monkeypatch, missing)) == extras.EXIT_MISSING_EXTRA
    assert "pip install 'phonekey[ble]'" in capsys.readouterr().err


def test_a_missing_project_module_is_a_bug_not_an_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = ModuleNotFoundError("No module named 'keyserver.gone'", name="keyserver.gone")
    with pytest.raises(ModuleNotFoundError):
        extras.run(_fake_cli(monkeypatch, missing))


def test_with_its_extra_the_script_runs_the_part(monkeypatch: pytest.MonkeyPatch) -> None:
    assert extras.run(_fake_cli(monkeypatch, None)) == 7


def third_party_imports(module: Path) -> set[str]:
    """The top-level modules ``module`` imports (anywhere in it) that are neither the standard
    library's nor the project's own."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names - sys.stdlib_module_names - extras.OWN_PACKAGES


def test_resilience_needs_prometheus_only_for_the_breaker_metrics() -> None:
    """The phone shares the breaker and the throttle on a set without prometheus-client; the
    breaker's collector is for the keyserver and the car, whose extras carry it."""
    package = Path(resilience.__file__).parent
    needs = {m.stem: third_party_imports(m) for m in package.glob("*.py")}
    assert needs.pop("breaker_metrics") == {"prometheus_client"}
    assert {name: found for name, found in needs.items() if found} == {}
    assert "prometheus-client" in declared("keyserver") & declared("agent")
    assert "prometheus-client" not in declared("phone") | declared("base")
