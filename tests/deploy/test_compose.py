"""docker-compose.yml: a 3-node NATS cluster from the tested config, tracing, and a fleet where every
process runs with its own credential and only its role's permissions.

There is no Docker engine on the test machine, so the file is checked structurally with PyYAML
and against the real ``corral`` CLI; ``docker compose config`` also runs wherever a compose
plugin is installed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from coord.authconfig import parse_grant
from coord.naming import Names
from coord.roles import Role, inbox_prefix
from tests.deploy import ROOT, cli_envvars, parse_corral

NATS_CONF = ROOT / "deploy" / "nats" / "nats.conf"
NATS_NODES = ["nats-1", "nats-2", "nats-3"]
WORKERS = ["worker-1", "worker-2", "worker-3"]
RECLAIMERS = ["reclaimer-1", "reclaimer-2"]
CORRAL_SERVICES = [*RECLAIMERS, *WORKERS, "parent"]
"""The long-running fleet (each with its own identity); ``credentials`` and ``provision`` run once."""
ROLE_OF = {**{w: Role.worker for w in WORKERS}, **{r: Role.reclaimer for r in RECLAIMERS}, "parent": Role.parent}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def conf_value(key: str) -> str:
    """A top-level ``key: value`` of the NATS config (first match)."""
    match = re.search(rf"^\s*{key}:\s*(\S+)", NATS_CONF.read_text(), re.M)
    assert match, f"{key} not found in {NATS_CONF}"
    return match.group(1)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host source of a service's volumes (short syntax)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        out[target] = source
    return out


def compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


def test_compose_defines_the_cluster_the_tracing_backend_and_the_fleet(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert set(services) == {*NATS_NODES, "otel-collector", "jaeger", "credentials", "provision", *CORRAL_SERVICES}
    for name, service in services.items():
        assert service.get("image"), f"service {name} has no image"
    for name in [*NATS_NODES, "credentials", "provision", *CORRAL_SERVICES]:
        assert services[name]["image"] == "corral:local"
        assert services[name]["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    assert set(compose["volumes"]) == {"creds", *(f"{node}-data" for node in NATS_NODES)}
    if compose_available():  # the real check where Docker's compose plugin exists
        done = subprocess.run(["docker", "compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_nats_nodes_run_the_tested_config_each_under_its_own_name(services: dict[str, dict[str, Any]]) -> None:
    routes = re.findall(r"nats-route://([\w-]+):(\d+)", NATS_CONF.read_text())
    cluster_listen = re.search(r"listen:\s*\S+:(\d+)", NATS_CONF.read_text().split("cluster {", 1)[1])
    assert cluster_listen, "the cluster block has no listen address"
    cluster_port = cluster_listen.group(1)
    assert sorted(routes) == [(node, cluster_port) for node in NATS_NODES]
    http_port = conf_value("http").split(":")[-1]
    for node in NATS_NODES:
        service = services[node]
        assert service["entrypoint"] == ["nats-server"]
        config_path = service["command"][service["command"].index("--config") + 1]
        assert (ROOT / mounts(service)[config_path]).resolve() == NATS_CONF
        assert mounts(service)["/data"] == f"{node}-data"
        assert service["environment"]["NATS_SERVER_NAME"] == node == service["hostname"]
        assert conf_value("store_dir").startswith("/data/")
        assert f"127.0.0.1:{http_port}/healthz" in " ".join(service["healthcheck"]["test"])
        # the users the config includes are the ones `credentials` wrote into the creds volume
        included = re.search(r"^include\s+(\S+)", NATS_CONF.read_text(), re.M)
        assert included, "the shipped config includes no users"
        users = Path(config_path).parent / included.group(1)
        assert mounts(service)[str(users.parent)] == "creds"
        assert users.name == "auth.conf"
        assert service["depends_on"]["credentials"] == {"condition": "service_completed_successfully"}


def grants(services: dict[str, dict[str, Any]]) -> dict[str, frozenset[Role]]:
    """Identity -> roles, as the ``credentials`` service's `corral auth` command mints them."""
    command = services["credentials"]["command"]
    assert parse_corral(command)[0] == ["auth"]
    assert command[command.index("--out") + 1] == "/creds"
    assert mounts(services["credentials"])["/creds"] == "creds"
    issued = [parse_grant(command[i + 1]) for i, arg in enumerate(command) if arg == "--user"]
    return {g.identity: g.roles for g in issued}


def test_every_corral_process_runs_as_its_own_identity_with_only_its_roles_credential(
    services: dict[str, dict[str, Any]],
) -> None:
    minted = grants(services)
    namespace = services["credentials"]["environment"]["CORRAL_NAMESPACE"]
    for name in CORRAL_SERVICES:
        service = services[name]
        env = service["environment"]
        assert env["CORRAL_NAMESPACE"] == namespace
        assert minted[name] == {ROLE_OF[name]}, f"{name} holds {minted.get(name)}"
        assert env["CORRAL_NKEY"] == f"/creds/{name}.nk"
        assert env["CORRAL_INBOX_PREFIX"] == inbox_prefix(Names(namespace), name)
        assert mounts(service)["/creds"] == "creds"
    for worker in WORKERS:
        command = services[worker]["command"]
        assert command[command.index("--id") + 1] == worker  # its presence key is the one it may write
    assert "--parent parent " in services["parent"]["command"][0]
    provision = services["provision"]
    assert parse_corral(provision["command"])[0] == ["provision"]
    assert minted["admin"] == {Role.provisioner}
    assert provision["environment"]["CORRAL_NKEY"] == "/creds/admin.nk"
    assert all(Role.provisioner not in minted[name] for name in CORRAL_SERVICES)


def test_workers_drain_before_they_are_killed_and_reclaimers_are_redundant(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in WORKERS:
        worker = services[name]
        assert "ports" not in worker
        command = worker["command"]
        grace = float(command[command.index("--grace") + 1])
        assert float(worker["stop_grace_period"].rstrip("s")) > grace
    assert len(RECLAIMERS) >= 2
    for name in CORRAL_SERVICES:
        assert "container_name" not in services[name]


def test_corral_services_run_real_corral_command_lines(services: dict[str, dict[str, Any]]) -> None:
    for name in RECLAIMERS:
        assert parse_corral(services[name]["command"]) == (["reclaimer"], [])
    for name in WORKERS:
        assert parse_corral(services[name]["command"]) == (["worker"], [])
        assert "--queue" in services[name]["command"]

    parent = services["parent"]
    assert parent["entrypoint"] == ["sh", "-c"]
    script = parent["command"][0].replace("$$", "$")  # compose's escape for a literal $
    submits = re.findall(r"^\s*corral (.+?)(?:\s*\|\|.*)?$", script, re.M)
    assert submits, f"the parent runs no corral command: {script!r}"
    for line in submits:
        args = [arg.replace("$i", "1") for arg in shlex.split(line)]
        assert parse_corral(args)[0] == ["submit"]
        assert all(args[args.index("--queue") + 1] in services[w]["command"] for w in WORKERS)


def test_corral_environment_is_read_by_the_cli_and_points_at_the_cluster_and_collector(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    known = cli_envvars()
    client_port = conf_value("listen").split(":")[-1]
    for name in [*CORRAL_SERVICES, "provision"]:
        env = services[name]["environment"]
        unknown = sorted(k for k in env if k.startswith("CORRAL_") and k not in known)
        assert not unknown, f"service {name} sets {unknown}, which no corral option reads"
        urls = [urlsplit(u) for u in env["CORRAL_URL"].split(",")]
        assert sorted((u.hostname, str(u.port)) for u in urls) == [(n, client_port) for n in NATS_NODES]
        assert env["CORRAL_REPLICAS"] == str(len(NATS_NODES))
        endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "otel-collector", 4318)
        assert env["OTEL_SERVICE_NAME"] == f"corral-{name.split('-')[0]}"
        for dependency in ("nats-1", "nats-2", "nats-3"):
            assert services[name]["depends_on"][dependency] == {"condition": "service_healthy"}
        if name != "provision":  # the fleet starts once the namespace exists
            assert services[name]["depends_on"]["provision"] == {"condition": "service_completed_successfully"}


def test_collector_receives_otlp_and_sends_traces_to_jaeger_and_metrics_to_prometheus(
    services: dict[str, dict[str, Any]],
) -> None:
    collector = services["otel-collector"]
    config_path = next(arg.split("=", 1)[1] for arg in collector["command"] if arg.startswith("--config="))
    source = ROOT / mounts(collector)[config_path]
    config = yaml.safe_load(source.read_text())
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["http"]["endpoint"].endswith(":4318") and protocols["grpc"]["endpoint"].endswith(":4317")
    pipelines = config["service"]["pipelines"]
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline[kind]:
                assert component in config[kind], f"{kind[:-1]} {component} is used but not defined"
    (trace_exporter,) = pipelines["traces"]["exporters"]
    assert trace_exporter.split("/")[0] == "otlp_grpc"
    assert config["exporters"][trace_exporter]["endpoint"] == "jaeger:4317"
    assert "--set=receivers.otlp.protocols.grpc.endpoint=0.0.0.0:4317" in services["jaeger"]["command"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    prometheus_port = config["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    assert f"{prometheus_port}:{prometheus_port}" in collector["ports"]


def test_every_path_and_service_the_file_refers_to_exists(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name, service in services.items():
        for target, source in mounts(service).items():
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name} mounts missing {source} at {target}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    assert Path(ROOT / "deploy" / "Dockerfile.dockerignore").is_file()
