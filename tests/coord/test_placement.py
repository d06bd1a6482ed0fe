"""Placement: ``Settings.placement`` (cluster, tags) reaches every stream corral creates, validated first.

The server side (a namespace created from cluster B lands in cluster A) is shown on a real
supercluster in tests/chaos/test_supercluster.py.
"""

from __future__ import annotations

import subprocess

import pytest

import coord
from coord.errors import InvalidInput
from coord.naming import Names
from coord.provision import provision_command, stream_configs
from coord.server import NatsServer
from tests.conftest import PYTHON


def test_without_placement_the_server_chooses() -> None:
    settings = coord.Settings.load()
    assert settings.placement.empty
    assert all(config.placement is None for config in stream_configs(Names("ns"), settings))
    assert provision_command(Names("ns"), settings) == "corral provision --namespace ns"


def test_every_bucket_and_stream_carries_the_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_PLACEMENT__CLUSTER", "east-1")
    monkeypatch.setenv("CORRAL_PLACEMENT__TAGS", '["region:eu", "ssd"]')
    settings = coord.Settings.load()
    configs = stream_configs(Names("ns"), settings)
    assert {c.name for c in configs} >= {"KV_ns_tasks", "KV_ns_presence", "ns_dispatch", "ns_events", "ns_inbox"}
    for config in configs:
        assert config.placement is not None, config.name
        assert (config.placement.cluster, config.placement.tags) == ("east-1", ["region:eu", "ssd"])
    assert provision_command(Names("ns"), settings) == (
        'CORRAL_PLACEMENT__CLUSTER=east-1 CORRAL_PLACEMENT__TAGS=\'["region:eu", "ssd"]\' '
        "corral provision --namespace ns"
    )


def test_tags_alone_leave_the_cluster_open() -> None:
    [config, *_] = stream_configs(Names("ns"), coord.Settings.load(placement={"tags": ["az:1"]}))
    assert config.placement is not None
    assert (config.placement.cluster, config.placement.tags) == (None, ["az:1"])


@pytest.mark.parametrize(
    ("placement", "field"),
    [
        ({"cluster": "a b"}, "placement.cluster"),
        ({"cluster": "a.b"}, "placement.cluster"),
        ({"cluster": ""}, "placement.cluster"),
        ({"cluster": "x" * 65}, "placement.cluster"),
        ({"tags": ["ok", "no spaces"]}, "placement.tags"),
        ({"tags": [f"t{i}" for i in range(17)]}, "placement.tags"),
        ({"zone": "a"}, "placement.zone"),
    ],
)
def test_a_bad_placement_is_one_line_naming_the_field(placement: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        coord.Settings.load(placement=placement)
    message = str(caught.value)
    assert field in message and "\n" not in message, message


def test_a_bad_placement_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_PLACEMENT__CLUSTER", "$JS.API")
    with pytest.raises(InvalidInput, match="CORRAL_PLACEMENT__CLUSTER"):
        coord.Settings.load()


async def test_corral_provision_places_what_it_creates_as_the_environment_says(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    env = {**subprocess_env, "CORRAL_PLACEMENT__CLUSTER": "A", "CORRAL_PLACEMENT__TAGS": '["region:eu"]'}
    argv = [PYTHON, "-m", "corral", "--server", nats_server.url, "--namespace", namespace, "provision", "--json"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    async with coord.connect(nats_server.url, namespace=namespace, provision="check") as conn:
        info = await conn.js.stream_info(f"KV_{conn.names.tasks_bucket}")
    # A server outside any cluster keeps the placement without acting on it (one server holds everything).
    assert info.config.placement is not None
    assert (info.config.placement.cluster, info.config.placement.tags) == ("A", ["region:eu"])


def test_corral_provision_refuses_a_bad_placement_in_one_line(subprocess_env: dict[str, str]) -> None:
    env = {**subprocess_env, "CORRAL_PLACEMENT__CLUSTER": "a.b"}
    argv = [PYTHON, "-m", "corral", "--server", "nats://127.0.0.1:1", "provision"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "CORRAL_PLACEMENT__CLUSTER" in lines[0], done.stderr
