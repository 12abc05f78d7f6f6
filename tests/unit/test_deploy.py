"""The deploy files are checked offline: each names real commands, settings and metrics, and keeps the drain.

No Docker engine or cluster is needed: the Dockerfile is parsed, compose files are rendered by
`docker compose config` (or `docker-compose config`) when a client is installed, Kubernetes
manifests are validated against the API schemas by kubernetes-validate, systemd units by
`systemd-analyze verify`; every command line and environment is loaded by the settings code the
processes themselves run, so a misspelt variable or flag fails here rather than in production.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from collectors.config import CollectorConfig, load_configs
from gateway.config import GatewayConfig
from shared.config import load
from shared.redis_target import RedisTarget

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
NGINX_TEMPLATE = DEPLOY / "nginx" / "nginx.conf.template"
KUBERNETES_VERSION = "1.30.0"  # the oldest minor version still widely run; newer ones accept these too
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# Values for variables a manifest takes from a Secret, so its settings can be loaded here.
SECRET_STANDINS = {
    "REDIS_URL": "redis://redis:6379/0",
    "DATABASE_URL": "postgresql://fanout@postgres/fanout",
    "GATEWAY_JWT_SECRET": "s" * 32,
    "GATEWAY_ADMIN_TOKEN": "t" * 32,
}
COMPOSE_ENV = {"GATEWAY_JWT_SECRET": "s" * 32}


# The settings each process reads, and its drain deadline.


def env_names(settings: type) -> set[str]:
    return {field.metadata["env"] for field in dataclasses.fields(settings)}


def default_of(settings: type, env: str) -> float:
    (field,) = (field for field in dataclasses.fields(settings) if field.metadata["env"] == env)
    return float(field.default)


PROCESSES: dict[str, tuple[type, str]] = {
    "fanout-gateway": (GatewayConfig, "GATEWAY_SHUTDOWN_TIMEOUT_S"),
    "fanout-collector": (CollectorConfig, "COLLECTOR_SHUTDOWN_TIMEOUT_S"),
}


def drain_deadline(command: str, env: Mapping[str, str]) -> float:
    """How long the process may take to stop on SIGTERM with `env`: its setting, else its default."""
    settings, name = PROCESSES[command]
    return float(env[name]) if name in env else default_of(settings, name)


def load_process(argv: list[str], env: Mapping[str, str]) -> None:
    """Load a process's settings from its command line and environment as it would at start-up."""
    command, args = Path(argv[0]).name, argv[1:]
    settings, _ = PROCESSES[command]
    unknown = set(env) - env_names(settings)
    assert not unknown, f"{command} has no settings {sorted(unknown)}"
    if "REDIS_URL" in env:
        RedisTarget.parse(env["REDIS_URL"])  # as the process will: a single Redis or redis+cluster:// seeds
    if command == "fanout-collector":
        assert load_configs(args, env)
    else:
        load(settings, args, env)


# Metrics: every name the dashboard and the alerts use is one the code exports.


def exported_metrics() -> set[str]:
    """Sample names the gateways and collectors expose, from their metric declarations (prometheus_client's rules)."""
    declared = re.compile(r"\b(?:Loop)?(Counter|Gauge|Histogram)(?:MetricFamily)?\(\s*\"([a-z_:]+)\"", re.S)
    names: set[str] = set()
    for path in [*ROOT.glob("gateway/**/*.py"), *ROOT.glob("collectors/**/*.py")]:
        for kind, name in declared.findall(path.read_text()):
            if kind == "Counter":
                names.add(name.removesuffix("_total") + "_total")
            elif kind == "Histogram":
                names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
            else:
                names.add(name)
    return names


def referenced_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:gateway|collector)_[a-z0-9_]+", expr))


def dashboard_exprs() -> Iterator[str]:
    for path in DASHBOARDS.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                yield target["expr"]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_the_metric_scan_finds_both_processes_metrics() -> None:
    exported = exported_metrics()
    assert {"gateway_connections", "gateway_messages_out_total", "gateway_relay_latency_seconds_bucket"} <= exported
    assert {"collector_seconds_since_message", "collector_sink_dropped_total", "collector_events_total"} <= exported


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    exported = exported_metrics()
    exprs = [*dashboard_exprs(), *(rule["expr"] for rule in alert_rules())]
    used = set().union(*map(referenced_metrics, exprs))
    assert used - exported == set(), "metrics the code does not export"
    # The dashboard shows connections, deliveries, Redis and collector freshness.
    shown = set().union(*map(referenced_metrics, dashboard_exprs()))
    assert {
        "gateway_connections",
        "gateway_messages_out_total",
        "gateway_redis_connected",
        "collector_redis_up",
        "collector_seconds_since_message",
    } <= shown


def test_alert_rules_are_complete_and_the_same_for_compose_and_kubernetes() -> None:
    for rule in alert_rules():
        assert rule["alert"] and rule["expr"] and rule["for"], rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"], rule
    jobs = {job for rule in alert_rules() for job in re.findall(r'job="([^"]+)"', rule["expr"])}
    assert jobs == {"fanout-gateway", "fanout-collector"}
    (rule_object,) = (doc for doc in kubernetes_docs() if doc["kind"] == "PrometheusRule")
    assert rule_object["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = (line.strip() for line in text.splitlines())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and line[0] != "#"]


def dockerignored(path: str) -> bool:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [pattern.removeprefix("**/") for pattern in patterns if pattern and not pattern.startswith("#")]
    parts = Path(path).parts
    return any(fnmatch.fnmatch(part, pattern) for pattern in patterns for part in parts)


def test_dockerfile_is_multi_stage_non_root_and_installs_the_package() -> None:
    instructions = dockerfile_instructions()
    stages = [args for name, args in instructions if name == "FROM"]
    assert len(stages) >= 2, "a build stage and a runtime stage"
    final = instructions[max(i for i, (name, _) in enumerate(instructions) if name == "FROM") :]
    users = [args for name, args in final if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the runtime stage runs as a non-root user"
    copied: set[str] = set()
    for name, args in instructions:
        if name == "COPY" and "--from=" not in args:
            *sources, _target = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
                assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
                copied.add(source.rstrip("/"))
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {pattern.rstrip("*") for pattern in packages["include"]} <= copied, "every package is copied"
    assert "pyproject.toml" in copied and "README.md" in copied
    (cmd,) = (json.loads(args) for name, args in final if name == "CMD")
    assert cmd[0] in SCRIPTS


# Compose


def compose_cli() -> list[str] | None:
    """`docker compose` when the plugin is there, else `docker-compose`, else None."""
    if shutil.which("docker"):
        found = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if found.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.parametrize("files", [["compose.yaml"], ["compose.yaml", "compose.cluster.yaml"]])
def test_compose_config_renders(files: list[str]) -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed: compose files checked as YAML only")
    args = [arg for name in files for arg in ("-f", name)]
    rendered = subprocess.run(
        [*cli, *args, "config"], cwd=COMPOSE, env=COMPOSE_ENV | {"PATH": "/usr/bin:/bin:/usr/local/bin"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    rendered_services = yaml.safe_load(rendered.stdout)["services"]
    # The other tests read the files with compose_services(): it must merge them as compose does.
    merged = compose_services(files)
    assert {name for name, body in merged.items() if not body.get("profiles")} <= set(rendered_services) <= set(merged)
    for name, body in merged.items():
        if "environment" in body and name in rendered_services:
            assert rendered_services[name]["environment"] == {
                key: interpolated(str(value)) for key, value in body["environment"].items()
            }, name
    missing = subprocess.run([*cli, *args, "config"], cwd=COMPOSE, capture_output=True, text=True, check=False)
    assert missing.returncode != 0 and "GATEWAY_JWT_SECRET" in missing.stderr, "the secret must be given"


def interpolated(value: str) -> str:
    """Compose's `${NAME:-default}` and `${NAME:?error}`, with COMPOSE_ENV as the environment."""

    def one(match: re.Match[str]) -> str:
        name, operator, rest = match.groups()
        assert name in COMPOSE_ENV or operator == ":-", f"{name} is required: {rest}"
        return COMPOSE_ENV.get(name, rest)

    return re.sub(r"\$\{(\w+)(:[-?])([^}]*)\}", one, value)


def compose_services(files: list[str]) -> dict[str, dict[str, Any]]:
    """The services of `files` merged as compose does for what these files use (maps merged, the rest replaced)."""
    merged: dict[str, dict[str, Any]] = {}
    for name in files:
        for service, body in yaml.safe_load((COMPOSE / name).read_text())["services"].items():
            current = merged.setdefault(service, {})
            for key, value in body.items():
                current[key] = {**current.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


@pytest.mark.parametrize("files", [["compose.yaml"], ["compose.yaml", "compose.cluster.yaml"]])
def test_compose_processes_load_their_settings_and_keep_their_drain(files: list[str]) -> None:
    services = compose_services(files)
    ours = {name: body for name, body in services.items() if body.get("command", [""])[0] in PROCESSES}
    assert sum(body["command"][0] == "fanout-gateway" for body in ours.values()) >= 2
    assert {body["command"][1] for body in ours.values() if body["command"][0] == "fanout-collector"} == {
        "binance", "coinbase", "kraken", "bybit", "okx",
    }  # fmt: skip
    for name, body in ours.items():
        env = {key: interpolated(str(value)) for key, value in body["environment"].items()}
        load_process(body["command"], env)
        assert body["restart"] == "unless-stopped", name
        assert body["healthcheck"]["test"], name
        grace = seconds(body.get("stop_grace_period", "10s"))  # Docker's default
        assert grace > drain_deadline(body["command"][0], env), f"{name}: stop_grace_period cuts the drain short"
    if len(files) > 1:
        assert all(body["environment"]["REDIS_URL"].startswith("redis+cluster://") for body in ours.values())
        assert services["redis"]["profiles"], "the single Redis is not started beside the cluster"
        nodes = [name for name in services if name.startswith("redis-node-")]
        assert len(nodes) == 6 and "redis-cluster-init" in services


def test_compose_healthchecks_probe_readiness_and_liveness() -> None:
    services = compose_services(["compose.yaml"])
    probes = {name: " ".join(body["healthcheck"]["test"]) for name, body in services.items() if "healthcheck" in body}
    assert all("/readyz" in probes[name] for name in services if name.startswith("gateway-"))
    assert all("/healthz" in probes[name] for name in services if name.startswith("collector-"))


def test_compose_nginx_fills_the_template_and_prometheus_scrapes_every_process() -> None:
    services = compose_services(["compose.yaml"])
    nginx = services["nginx"]
    placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", NGINX_TEMPLATE.read_text()))
    assert placeholders <= set(nginx["environment"]), "every placeholder of the nginx template is set"
    gateways = sorted(name for name in services if name.startswith("gateway-"))
    upstreams = re.findall(r"server ([\w.-]+):8000", nginx["environment"]["UPSTREAM_SERVERS"])
    assert sorted(upstreams) == gateways
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).resolve().exists(), f"no {source}"
    jobs = {job["job_name"]: job for job in yaml.safe_load((COMPOSE / "prometheus.yml").read_text())["scrape_configs"]}
    targets = {job: {t for config in jobs[job]["static_configs"] for t in config["targets"]} for job in jobs}
    assert targets["fanout-gateway"] == {f"{name}:8000" for name in gateways}
    collectors = {name for name in services if name.startswith("collector-")}
    assert targets["fanout-collector"] == {f"{name}:9300" for name in collectors}
    for name in collectors:  # the admin API answers Prometheus' Host header
        assert services[name]["environment"]["COLLECTOR_ADMIN_HOSTS"] == name


# Kubernetes


def kubernetes_docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = sorted(path.name for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files, "kustomization.yaml lists every manifest"
    return [doc for name in files for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


def kubernetes_object(kind: str, name: str) -> dict[str, Any]:
    (found,) = (doc for doc in kubernetes_docs() if doc["kind"] == kind and doc["metadata"]["name"] == name)
    return found


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    custom = {"ServiceMonitor", "PrometheusRule"}
    docs = kubernetes_docs()
    for doc in docs:
        if doc["kind"] not in custom:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert {doc["kind"] for doc in docs} >= {
        "Deployment", "StatefulSet", "Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceMonitor", "PrometheusRule",
    }  # fmt: skip
    # The custom resources, structurally: each ServiceMonitor selects a Service and names its port.
    services = [doc for doc in docs if doc["kind"] == "Service"]
    for monitor in (doc for doc in docs if doc["kind"] == "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        wanted = monitor["spec"]["selector"]["matchLabels"]
        (service,) = (s for s in services if wanted.items() <= s["metadata"]["labels"].items())
        assert service["metadata"]["name"] == monitor["metadata"]["name"], "the job label the alerts expect"
        ports = {port["name"] for port in service["spec"]["ports"]}
        assert all(
            endpoint["port"] in ports and endpoint["path"] == "/metrics" for endpoint in monitor["spec"]["endpoints"]
        )


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment with Secret values stood in and $(VAR) references expanded."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = SECRET_STANDINS[item["name"]]
        else:
            env[item["name"]] = f"downward-{item['valueFrom']['fieldRef']['fieldPath']}"
    return env


def only_settings(container: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """`env` less the variables that exist only to be referenced by another's $(VAR)."""
    referenced = {name for item in container["env"] for name in re.findall(r"\$\((\w+)\)", item.get("value", ""))}
    return {name: value for name, value in env.items() if name not in referenced}


def test_kubernetes_gateway_probes_drain_and_settings() -> None:
    deployment = kubernetes_object("Deployment", "fanout-gateway")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][0] in SCRIPTS
    env = container_env(container)
    load_process(container["command"], only_settings(container, env))
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = drain_deadline("fanout-gateway", env)
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain, "the kubelet's SIGKILL cuts the drain"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    hpa = kubernetes_object("HorizontalPodAutoscaler", "fanout-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "fanout-gateway"
    metrics = {
        m["resource"]["name"] if m["type"] == "Resource" else m["pods"]["metric"]["name"]
        for m in hpa["spec"]["metrics"]
    }
    assert metrics == {"cpu", "gateway_connections"} and "gateway_connections" in exported_metrics()
    pdb = kubernetes_object("PodDisruptionBudget", "fanout-gateway")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_kubernetes_ingress_keeps_websockets_and_polling_sessions() -> None:
    ingress = kubernetes_object("Ingress", "fanout")
    annotations = ingress["metadata"]["annotations"]
    idle = default_of(GatewayConfig, "GATEWAY_PING_INTERVAL_S") + default_of(GatewayConfig, "GATEWAY_PING_TIMEOUT_S")
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert float(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) > idle, "quiet WebSockets would be cut"
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie", "long-polling needs one node per session"
    backends = {
        path["backend"]["service"]["name"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]
    }
    assert backends == {"fanout-gateway"}
    paths = {path["path"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]}
    assert "/socket.io/" in paths and "/metrics" not in paths


def test_kubernetes_collectors_each_load_their_own_exchange(tmp_path: Path) -> None:
    statefulset = kubernetes_object("StatefulSet", "fanout-collector")
    config_map = kubernetes_object("ConfigMap", "fanout-collectors")
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = container["volumeMounts"]
    config_file = tmp_path / "collectors.toml"
    config_file.write_text(config_map["data"]["collectors.toml"])
    argv = [arg.replace(f"{mount['mountPath']}/collectors.toml", str(config_file)) for arg in container["command"]]
    env = container_env(container)
    exchanges = []
    for ordinal in range(statefulset["spec"]["replicas"]):  # each pod picks the section named after it
        pod_env = only_settings(container, env) | {"COLLECTOR_ID": f"fanout-collector-{ordinal}"}
        load_process(argv, pod_env)
        (config,) = load_configs(argv[1:], pod_env)
        exchanges.append(config.exchange)
        assert config.admin_host == "0.0.0.0"
    assert sorted(exchanges) == ["binance", "bybit", "coinbase", "kraken", "okx"], "one pod per exchange"
    sections = tomllib.loads(config_map["data"]["collectors.toml"])["collectors"]
    assert len(sections) == statefulset["spec"]["replicas"], "a replica for every section, and no more"
    assert pod["terminationGracePeriodSeconds"] > drain_deadline("fanout-collector", env)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert env["COLLECTOR_ADMIN_HOSTS"] == "downward-status.podIP", "Prometheus scrapes by pod IP"


# systemd


def unit_settings(path: Path) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file (every section), each key's values in order."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def env_file(path: Path) -> dict[str, str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


UNITS = {"fanout-gateway@.service": "8001", "fanout-collector@.service": "binance"}


@pytest.mark.parametrize(("unit", "instance"), UNITS.items())
def test_systemd_units_restart_sandbox_and_outlast_the_drain(unit: str, instance: str) -> None:
    settings = unit_settings(SYSTEMD / unit)
    assert settings["Restart"] == ["on-failure"] and settings["StartLimitIntervalSec"] == ["0"]
    for option in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "DynamicUser", "RestrictAddressFamilies"):
        assert option in settings, f"{unit} lacks {option}"
    env: dict[str, str] = {}
    for name in settings["EnvironmentFile"]:
        env |= env_file(SYSTEMD / Path(name.replace("%i", instance)).name)
    (exec_start,) = settings["ExecStart"]
    argv = exec_start.replace("%i", instance).replace("%H", "host").split()
    assert Path(argv[0]).name in SCRIPTS
    load_process(argv, env)
    (stop,) = settings["TimeoutStopSec"]
    assert seconds(stop if stop[-1].isalpha() else stop + "s") > drain_deadline(Path(argv[0]).name, env)


@pytest.mark.parametrize(("unit", "instance"), UNITS.items())
def test_systemd_analyze_verifies_the_units(unit: str, instance: str, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: units checked by parsing only")
    # An instance of the template, with its binary and environment files where this checkout has them.
    bin_dir = Path(shutil.which("fanout-gateway") or ROOT / ".venv" / "bin" / "fanout-gateway").parent
    text = (SYSTEMD / unit).read_text().replace("/opt/fanout/bin", str(bin_dir)).replace("/etc/fanout", str(SYSTEMD))
    instance_unit = tmp_path / unit.replace("@.", f"@{instance}.")
    instance_unit.write_text(text)
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(instance_unit)], capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
