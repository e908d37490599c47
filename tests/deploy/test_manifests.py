"""The deployment files in deploy/ checked against the code, since no container engine runs here.

Settings are the loaders' own (``keyserver.config.build``, ``vehicle_agent.config.build``), routes
the app's router, metric names the registries the processes export, fleet flags its parser.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from keycore import SoftwareSigner
from keycore.cose import point_bytes
from keycore.encoding import b64url_encode
from keyserver import config as keyserver_config
from keyserver.app import create_app
from keyserver.config import Config
from lab.cli import build_parser as fleet_parser
from lab.fleet.cli import SECRET_ENV
from tests.deploy.promql_harness import parse_promql, unknown_names
from vehicle_agent import config as agent_config
from vehicle_agent.config import AgentConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "phonekey.json"
DOCKERFILE = DEPLOY / "Dockerfile"

ENV_NAME = re.compile(r"\bPHONEKEY_[A-Z0-9_]+")
KEYSERVER_ENV = keyserver_config.ENV_PREFIX
AGENT_ENV = agent_config.ENV_PREFIX


# ---------------------------------------------------------------------------- loading the files


def deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in suffixes and p.is_file())


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@cache
def k8s_documents() -> tuple[dict[str, Any], ...]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return tuple(docs)


def k8s(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d
        for d in k8s_documents()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def literal(value: object) -> bool:
    """A value compose passes as written: not `${…}` interpolated from the caller's shell."""
    return isinstance(value, str | int | float) and "${" not in str(value)


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_text(service: Mapping[str, Any]) -> str:
    command = service.get("command") or []
    return command if isinstance(command, str) else " ".join(command)


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


# ------------------------------------------------------------------- settings through the loaders


def keyserver_settings(env: Mapping[str, str]) -> Config:
    """The config a keyserver gets from these variables; ConfigError fails the test."""
    values = {
        k[len(KEYSERVER_ENV) :].lower(): v
        for k, v in env.items()
        if k.startswith(KEYSERVER_ENV) and literal(v)
    }
    return keyserver_config.build(values)


def root_key_text(start: str = "") -> str:
    """A root public key as the agent and the fleet take it (base64url x||y), from ``start``."""
    while True:  # one key in 64 begins with a given character
        xy = point_bytes(SoftwareSigner.generate().public_key)
        text = b64url_encode(xy)
        if text.startswith(start):
            return text


def compose_keyservers() -> dict[str, Config]:
    image_env = dockerfile_env()
    return {
        name: keyserver_settings({**image_env, **compose_env(service)})
        for name, service in compose()["services"].items()
        if service.get("command") == ["keyserver", "serve"]
    }


def k8s_keyserver_workload() -> dict[str, Any]:
    """A StatefulSet: each pod's data directory (its outage journal) is its own volume claim."""
    return one(k8s("StatefulSet", "keyserver"))


def k8s_keyserver() -> tuple[dict[str, Any], Config]:
    deployment = k8s_keyserver_workload()
    container = one(deployment["spec"]["template"]["spec"]["containers"])
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(k8s("ConfigMap", source["configMapRef"]["name"]))["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return container, keyserver_settings(env)


@cache
def get_routes() -> frozenset[str]:
    app = create_app(Config())
    return frozenset(
        r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource
    )


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def dashboard_panels() -> Iterator[dict[str, Any]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    return walk(json.loads(DASHBOARD.read_text())["panels"])


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if "expr" in t]


# ====================================================================================== the tests


def test_every_deployment_file_parses() -> None:
    yamls = deploy_files(".yaml", ".yml")
    jsons = deploy_files(".json")
    assert COMPOSE in yamls
    assert DASHBOARD in jsons
    for path in yamls:
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        assert docs, f"{path} is empty"
        assert all(isinstance(doc, dict) for doc in docs), path
    for path in jsons:
        assert isinstance(json.loads(path.read_text()), dict), path


def test_the_promql_reader_finds_names_and_labels() -> None:
    query = parse_promql(
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route!="/x", s=~"5.."}'
        "[$__rate_interval]))) / on (instance) b_total > 1e3 or vector(0) and c offset 5m"
    )
    assert query.metrics == {"a_bucket": {"route", "s"}, "b_total": set(), "c": set()}
    assert query.grouping == {"le", "route", "instance"}
    assert unknown_names("no_such_metric") == ["metric 'no_such_metric'"]
    assert unknown_names('keyserver_requests_total{colour="red"}') == [
        "label 'colour' on keyserver_requests_total"
    ]


def test_every_phonekey_variable_is_a_real_setting() -> None:
    keyserver = {f.name for f in fields(Config)}
    agent = {f.name for f in fields(AgentConfig)}
    files = [COMPOSE, DOCKERFILE, *sorted(K8S.glob("*.yaml"))]
    seen = set()
    for path in files:
        for name in ENV_NAME.findall(path.read_text()):
            seen.add(name)
            if name.startswith(AGENT_ENV):
                assert name[len(AGENT_ENV) :].lower() in agent, f"{path.name}: {name}"
            else:
                assert name[len(KEYSERVER_ENV) :].lower() in keyserver, f"{path.name}: {name}"
    assert "PHONEKEY_PROVISIONING_SECRET" in seen


def test_compose_keyservers_load_their_settings_and_face_the_network() -> None:
    keyservers = compose_keyservers()
    assert len(keyservers) >= 2
    services = compose()["services"]
    for name, config in keyservers.items():
        assert config.host in ("0.0.0.0", "::"), f"{name} listens on {config.host} only"
        assert config.redis_sentinels or config.redis_url, f"{name} is not on Redis"
        assert config.key_dir is not None
        mounts = [str(v).split(":") for v in services[name]["volumes"]]
        assert any(m[1] == str(config.key_dir) for m in mounts), f"{name}: key ring not mounted"
        assert services[name]["depends_on"]["keyring-init"]["condition"] == (
            "service_completed_successfully"
        )
        env = compose_env(services[name])
        assert "PHONEKEY_PROVISIONING_SECRET" in env
        published = [str(p).rsplit(":", 1) for p in services[name]["ports"]]
        assert published, name
        assert all(int(container) == config.port for _, container in published), name


def holding(mounts: Mapping[str, Any], path: Path) -> Any:
    """Of ``mounts`` by mount path, the one ``path`` is on (the deepest that contains it)."""
    on = [m for m in mounts if path.is_relative_to(m)]
    assert on, f"{path} is on no mounted volume: the container's own layer dies with it"
    return mounts[max(on, key=len)]


def test_compose_keyservers_keep_their_journal_on_a_named_volume_each() -> None:
    services, declared = compose()["services"], compose()["volumes"]
    volumes = []
    for name, config in compose_keyservers().items():
        mounts = {m[1]: m for m in (str(v).split(":") for v in services[name]["volumes"])}
        source, target, *mode = holding(mounts, config.journal_path)
        assert target == str(config.data_dir), name
        assert source in declared, f"{name}: {source} is not a named volume"
        assert "ro" not in mode, name
        volumes.append(source)
        grace = services[name]["stop_grace_period"]
        assert grace.endswith("s")
        assert float(grace[:-1]) > config.shutdown_grace_s + config.journal_drain_s, name
    assert len(set(volumes)) == len(volumes), "a journal is one process's, never shared"


def test_k8s_keyserver_keeps_its_journal_on_a_volume_claim_that_outlives_the_pod() -> None:
    container, config = k8s_keyserver()
    workload = k8s_keyserver_workload()
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = holding(mounts, config.journal_path)
    assert mount["mountPath"] == str(config.data_dir)
    assert not mount.get("readOnly")
    claims = {c["metadata"]["name"]: c["spec"] for c in workload["spec"]["volumeClaimTemplates"]}
    pod_volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    assert mount["name"] not in pod_volumes, pod_volumes.get(mount["name"])  # e.g. an emptyDir
    assert mount["name"] in claims
    assert claims[mount["name"]]["accessModes"] == ["ReadWriteOnce"]  # one keyserver's journal
    retention = workload["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert retention == {"whenScaled": "Retain", "whenDeleted": "Retain"}
    governing = one(k8s("Service", workload["spec"]["serviceName"]))
    assert governing["spec"]["clusterIP"] == "None"


def _ring_commands(text: str) -> tuple[str, str]:
    """(admin directory, serving directory) from `keyserver keys --dir A init` and `… publish S`."""
    init = re.search(r"keyserver keys --dir (\S+) init", text)
    assert init is not None, "no `keyserver keys --dir … init`"
    admin = init.group(1)
    publish = re.search(rf"keyserver keys --dir {re.escape(admin)} publish (\S+)", text)
    assert publish is not None, f"the ring in {admin} is never published"
    assert publish.group(1).rstrip("/") != admin.rstrip("/")
    return admin.rstrip("/"), publish.group(1).rstrip("/")


def test_compose_keyservers_never_mount_the_root_private_key() -> None:
    """keyring-init makes the ring (root.pem) in an admin volume no keyserver mounts, and
    publishes the serving part to the volume the keyservers read."""
    services = compose()["services"]
    init = services["keyring-init"]
    admin, serving = _ring_commands(command_text(init))
    volume_at = {m.split(":")[1]: m.split(":")[0] for m in map(str, init["volumes"])}
    admin_volume, serving_volume = volume_at[admin], volume_at[serving]
    made = " ".join(args for instruction, args in dockerfile() if instruction == "RUN")
    for path in (admin, serving):  # a named volume takes its owner from the image's directory
        assert path in made.split(), f"the image does not make {path} for user phonekey"
    for name, service in services.items():
        mounted = {m.split(":")[0]: m.split(":")[1:] for m in map(str, service.get("volumes", []))}
        if name != "keyring-init":
            assert admin_volume not in mounted, f"{name} mounts the root private key"
    for name, config in compose_keyservers().items():
        mounted = {m.split(":")[0]: m.split(":")[1:] for m in map(str, services[name]["volumes"])}
        assert mounted[serving_volume] == [str(config.keys_path), "ro"], name


def test_k8s_keyserver_pods_mount_only_the_published_ring() -> None:
    """The Secret the pods mount is made from `keyserver keys publish`'s output, not from the
    admin directory that holds root.pem, and it is mounted whole (a subPath never updates, so a
    published rotation would never reach the pod)."""
    text = (K8S / "keyserver.yaml").read_text()
    _, serving = _ring_commands(text)
    made = re.findall(r"kubectl create secret generic (\S+) --from-file=(\S+)", text)
    assert made
    assert {source.rstrip("/") for _, source in made} == {serving}
    container, config = k8s_keyserver()
    workload = k8s_keyserver_workload()
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    mount = one([m for m in container["volumeMounts"] if m["mountPath"] == str(config.keys_path)])
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    assert volumes[mount["name"]]["secret"]["secretName"] in {name for name, _ in made}
    for volume in volumes.values():
        items = volume.get("secret", {}).get("items", [])
        assert all(item["key"] != "root.pem" for item in items), volume["name"]
    for secret in k8s("Secret"):
        assert "root.pem" not in {**secret.get("data", {}), **secret.get("stringData", {})}


def test_the_image_exposes_and_health_checks_the_keyserver_port() -> None:
    config = keyserver_settings(dockerfile_env())
    instructions = dict(dockerfile())
    assert instructions["FROM"] == "python:3.11-slim"
    assert int(instructions["EXPOSE"]) == config.port
    assert config.host == "0.0.0.0"
    user = instructions["USER"].split(":")[0]
    assert user not in ("root", "0")
    health = instructions["HEALTHCHECK"]
    path = re.search(r"'(/[\w./-]*)'", health)
    assert path is not None
    assert path.group(1) == "/healthz"
    assert path.group(1) in get_routes()
    fallback = re.search(r"os\.environ\.get\('PHONEKEY_PORT', '(\d+)'\)", health)
    assert fallback is not None
    assert int(fallback.group(1)) == config.port
    assert json.loads(instructions["CMD"]) == ["keyserver", "serve"]


def test_the_image_installs_the_keyserver_set_and_only_the_tools_image_the_lab() -> None:
    """The production image is `phonekey[keyserver]` (no plotting, no chaos tooling; the agent's
    set is inside it); a compose service that runs `phonekey` builds the lab extra into an image
    of its own tag, so the two builds never share a name."""
    instructions = dockerfile()
    default = dict(a.split("=", 1) for i, a in instructions if i == "ARG")["EXTRAS"]
    assert default == "keyserver"
    runs = [args for instruction, args in instructions if instruction == "RUN"]
    assert any(re.match(r'pip install "\.\[\$\{EXTRAS\}\]"', run) for run in runs)
    tags: dict[str, str] = {}
    for name, service in compose()["services"].items():
        if "build" not in service:
            continue  # a third-party image
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        extras = service["build"].get("args", {}).get("EXTRAS", default)
        runs_tools = re.search(r"\bphonekey\b", command_text(service).replace("/phonekey", ""))
        assert extras == ("lab" if runs_tools else "keyserver"), name
        assert tags.setdefault(service["image"], extras) == extras, service["image"]
    assert set(tags.values()) == {"keyserver", "lab"}


def test_the_compose_agent_loads_its_settings() -> None:
    service = compose()["services"]["vehicle-agent"]
    env = {k: v for k, v in compose_env(service).items() if literal(v)}
    script = command_text(service)
    # the root key comes from the public volume in the command, not from a literal
    assert "export PHONEKEY_AGENT_ROOT_KEY=" in script
    env["PHONEKEY_AGENT_ROOT_KEY"] = root_key_text()
    values = {k[len(AGENT_ENV) :].lower(): v for k, v in env.items() if k.startswith(AGENT_ENV)}
    config = agent_config.build(values)
    assert config.metrics_port > 0
    assert config.ble is False
    host_port = config.keyserver_url.removeprefix("http://")
    assert host_port in {f"{n}:{c.port}" for n, c in compose_keyservers().items()}


def test_the_compose_fleet_uses_real_flags_and_a_keyserver() -> None:
    service = compose()["services"]["fleet"]
    assert SECRET_ENV in compose_env(service)
    script = command_text(service).split(" -c ", 1)[-1]
    # a key beginning with "-" is the case that needs --root-key=…; argparse takes "-x" for a flag
    script = re.sub(r'"\$\$\(cat [^)]+\)"', root_key_text("-"), script)
    argv = shlex.split(script)
    assert argv[:2] == ["exec", "phonekey"]
    args = fleet_parser().parse_args(argv[2:])
    assert args.command == "fleet"
    assert args.keyserver.removeprefix("http://") in {
        f"{n}:{c.port}" for n, c in compose_keyservers().items()
    }
    assert args.root_key is not None


def _monitor(text: str) -> tuple[str, str, int, int]:
    match = re.search(r"sentinel monitor (\S+) (\S+) (\d+) (\d+)", text)
    assert match is not None, "no `sentinel monitor` found"
    return match.group(1), match.group(2), int(match.group(3)), int(match.group(4))


def test_compose_sentinels_agree_with_the_keyservers() -> None:
    services = compose()["services"]
    sentinels = {n: s for n, s in services.items() if "--sentinel" in command_text(s)}
    assert len(sentinels) >= 3
    for name, service in sentinels.items():
        text = command_text(service)
        master, host, port, quorum = _monitor(text)
        assert 1 <= quorum <= len(sentinels)
        assert quorum > len(sentinels) // 2, "a quorum below a majority splits the brain"
        assert host in services
        assert f"--port {port}" in " ".join(services[host]["command"])
        own_port = re.search(r"--port (\d+)", text)
        assert own_port is not None
        sentinel_port = int(own_port.group(1))
        for config in compose_keyservers().values():
            assert config.redis_service == master
            addresses = keyserver_config.sentinel_addresses(config.redis_sentinels)
            assert (name, sentinel_port) in addresses
            assert len(addresses) == len(sentinels)


def test_k8s_keyserver_probes_ports_and_settings_match_the_app() -> None:
    container, config = k8s_keyserver()
    assert config.host in ("0.0.0.0", "::")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def resolve(port: int | str) -> int:
        return ports[port] if isinstance(port, str) else port

    assert set(ports.values()) == {config.port}
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in [*probes.values(), container["startupProbe"]["httpGet"]]:
        assert probe["path"] in get_routes()
        assert resolve(probe["port"]) == config.port
    deployment = k8s_keyserver_workload()
    pod = deployment["spec"]["template"]
    service = one(k8s("Service", "keyserver"))
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    for port in service["spec"]["ports"]:
        assert resolve(port["targetPort"]) == config.port
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == config.port
    assert annotations["prometheus.io/path"] in get_routes()
    drained = config.shutdown_grace_s + config.journal_drain_s
    assert pod["spec"]["terminationGracePeriodSeconds"] > drained
    secret = one([e for e in container["env"] if e["name"] == "PHONEKEY_PROVISIONING_SECRET"])
    assert "secretKeyRef" in secret["valueFrom"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[str(config.keys_path)]["readOnly"] is True


def test_k8s_scaling_and_disruption_budget_fit_the_deployment() -> None:
    deployment = k8s_keyserver_workload()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["replicas"] >= 2
    hpa = one(k8s("HorizontalPodAutoscaler"))
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", deployment["metadata"]["name"])
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    container = one(deployment["spec"]["template"]["spec"]["containers"])
    assert "cpu" in container["resources"]["requests"], "CPU utilisation needs a CPU request"
    pdb = one(k8s("PodDisruptionBudget", "keyserver"))
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"], "a drain could never evict"
    workloads = [*k8s("Deployment"), *k8s("StatefulSet")]
    for budget in k8s("PodDisruptionBudget"):  # every budget protects some workload
        wanted = budget["spec"]["selector"]["matchLabels"].items()
        assert any(wanted <= w["spec"]["template"]["metadata"]["labels"].items() for w in workloads)


def test_k8s_workloads_run_unprivileged_on_read_only_roots() -> None:
    for workload in [*k8s("Deployment"), *k8s("StatefulSet")]:
        spec = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert "limits" in container["resources"], name


def test_k8s_sentinels_agree_with_the_keyserver() -> None:
    _, config = k8s_keyserver()
    sentinel = one(k8s("StatefulSet", "sentinel"))
    redis = one(k8s("StatefulSet", "redis"))
    scripts = one(k8s("ConfigMap", "redis-scripts"))["data"]
    master, host, port, quorum = _monitor(scripts["sentinel.sh"])
    count = sentinel["spec"]["replicas"]
    assert 1 <= quorum <= count
    assert quorum > count // 2
    assert redis["spec"]["replicas"] >= 2
    # the monitored primary is the one the Sentinels know, or redis-0 on a first start
    assert host == "$PRIMARY"
    first = f'PRIMARY="redis-0.{redis["spec"]["serviceName"]}"'
    assert first in scripts["sentinel.sh"]
    assert first in scripts["redis.sh"]
    container = one(sentinel["spec"]["template"]["spec"]["containers"])
    env = {e["name"]: e["value"] for e in container["env"]}
    if master.startswith("$"):
        master = env[master.lstrip("$")]
    assert master == config.redis_service
    for workload in (sentinel, redis):
        names = {e["value"] for c in workload["spec"]["template"]["spec"]["containers"]
                 for e in c["env"] if e["name"] == "MASTER_NAME"}  # fmt: skip
        assert names == {config.redis_service}
    redis_port = one(one(redis["spec"]["template"]["spec"]["containers"])["ports"])
    assert port == redis_port["containerPort"]
    sentinel_port = one(container["ports"])["containerPort"]
    headless = sentinel["spec"]["serviceName"]
    service = one(k8s("Service", headless))
    assert service["spec"]["clusterIP"] == "None"
    wanted = {(f"sentinel-{i}.{headless}", sentinel_port) for i in range(count)}
    assert set(keyserver_config.sentinel_addresses(config.redis_sentinels)) == wanted
    budget = one(k8s("PodDisruptionBudget", "sentinel"))
    assert budget["spec"]["minAvailable"] >= quorum


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
@pytest.mark.parametrize("script", ["redis.sh", "sentinel.sh"])
def test_k8s_redis_scripts_are_valid_shell(script: str) -> None:
    text = one(k8s("ConfigMap", "redis-scripts"))["data"][script]
    result = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_prometheus_scrapes_the_metrics_path_on_the_configured_ports() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    keyserver = jobs["keyserver"]
    assert keyserver["metrics_path"] in get_routes()
    targets = {t for c in keyserver["static_configs"] for t in c["targets"]}
    assert targets == {f"{n}:{c.port}" for n, c in compose_keyservers().items()}
    agent = compose()["services"]["vehicle-agent"]
    # the agent serves /metrics on loopback: it shares Prometheus's network namespace
    assert agent["network_mode"] == "service:prometheus"
    port = int(compose_env(agent)["PHONEKEY_AGENT_METRICS_PORT"])
    assert jobs["vehicle-agent"]["metrics_path"] == "/metrics"
    assert {t for c in jobs["vehicle-agent"]["static_configs"] for t in c["targets"]} == {
        f"localhost:{port}"
    }
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert any(m.startswith("./prometheus/alerts.yml:") for m in mounts)


def test_the_alerts_the_issue_asks_for_exist() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    wanted = {
        "CircuitBreakerOpen",
        "KeyserverDegradedAnswers",
        "RevocationPropagationLag",
        "CommandExpiryRate",
        "AgentSyncLag",
    }
    assert wanted <= rules.keys()
    assert rules["CircuitBreakerOpen"]["for"] == "1m"
    assert (
        'resilience4j_circuitbreaker_state{state="open"} == 1'
        in rules["CircuitBreakerOpen"]["expr"]
    )
    assert rules["AgentSyncLag"]["expr"].strip() == "phonekey_agent_sync_lag_seconds > 300"
    assert rules["AgentSyncLag"]["for"] == "5m"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_rules_name_only_exported_metrics(rule: dict[str, Any]) -> None:
    assert unknown_names(rule["expr"]) == []


@pytest.mark.parametrize("expr", dashboard_queries())
def test_dashboard_queries_name_only_exported_metrics(expr: str) -> None:
    assert unknown_names(expr) == []


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    uid = one(yaml.safe_load(provisioning.read_text())["datasources"])["uid"]
    panels = list(dashboard_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    queried = [p for p in panels if p["type"] != "row"]
    assert len(queried) >= 10
    for panel in queried:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
    # compose mounts the dashboard where the dashboard provider looks for it
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "phonekey.yaml").read_text()
    )
    path = one(provider["providers"])["options"]["path"]
    mounts = [m.split(":") for m in compose()["services"]["grafana"]["volumes"]]
    assert any(
        src == "./grafana/phonekey.json" and Path(dst).parent == Path(path)
        for src, dst, *_ in mounts
    )


# on PATH, or where `make` puts it: beside the interpreter in .venv/bin
PROMTOOL = shutil.which("promtool") or shutil.which(
    "promtool", path=str(Path(sys.executable).parent)
)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
@pytest.mark.parametrize(("what", "file"), [("rules", "alerts.yml"), ("config", "prometheus.yml")])
def test_promtool_accepts_the_prometheus_files(what: str, file: str) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", what, file],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
