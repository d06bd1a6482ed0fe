"""deploy/nats/nats.conf: valid for nats-server, and a real 3-node cluster that survives losing a node.

The test starts three nats-server processes from the shipped config, changing only what cannot be
shared on one host: listen addresses and route hosts (loopback ports instead of service names)
and the store directory. Everything else, JetStream and cluster settings included, is as shipped;
the users it includes (creds/auth.conf) are written by `corral auth` next to the rendered config,
as compose does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.js.errors import KeyWrongLastSequenceError

import coord
from coord.authconfig import parse_grant, write_auth
from coord.naming import Names
from coord.server import find_server_binary, free_port
from tests.deploy import ROOT

CONF = ROOT / "deploy" / "nats" / "nats.conf"
NODES = ["nats-1", "nats-2", "nats-3"]
NAMESPACE = "deploytest"


@dataclass
class Node:
    """One nats-server process started from a rendered copy of the shipped config."""

    name: str
    client: int
    http: int
    cluster: int
    conf: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "NATS_SERVER_NAME": self.name}

    def monitor(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=2) as resp:
            return json.loads(resp.read())


def render(text: str, node: Node, nodes: dict[str, Node], store: Path) -> str:
    """The shipped config with loopback ports for ``node``; fails if the config changed shape."""
    subs: list[str] = []

    def address(match: re.Match[str]) -> str:
        host, port = match.group(1), int(match.group(2))
        subs.append(f"{host}:{port}")
        own = {4222: node.client, 8222: node.http, 6222: node.cluster}
        return f"127.0.0.1:{own[port] if host == '0.0.0.0' else nodes[host].cluster}"

    rendered = re.sub(r"\b(0\.0\.0\.0|nats-\d):(\d+)\b", address, text)
    assert sorted(subs) == sorted(["0.0.0.0:4222", "0.0.0.0:8222", "0.0.0.0:6222"] + [f"{n}:6222" for n in NODES])
    rendered, n = re.subn(r"store_dir: /data/jetstream", f'store_dir: "{store}"', rendered)
    assert n == 1, "store_dir: /data/jetstream not found in the shipped config"
    return rendered


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, Node]]:
    """Three nodes with rendered configs (not started)."""
    nodes = {name: Node(name, free_port(), free_port(), free_port(), tmp_path / f"{name}.conf") for name in NODES}
    write_auth(tmp_path / "creds", Names(NAMESPACE), [parse_grant("provisioner:admin"), parse_grant("worker:w1")])
    for node in nodes.values():
        node.conf.write_text(render(CONF.read_text(), node, nodes, tmp_path / node.name))
    yield nodes
    for node in nodes.values():
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


def start(nodes: dict[str, Node], timeout: float = 60.0) -> None:
    for node in nodes.values():
        node.proc = subprocess.Popen(
            [find_server_binary(), "-c", str(node.conf)],
            env=node.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout
    for node in nodes.values():
        while True:
            assert node.proc is not None and node.proc.poll() is None, f"{node.name} exited"
            try:
                if node.monitor("/healthz").get("status") == "ok":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{node.name} not healthy within {timeout}s"
            time.sleep(0.1)


def test_shipped_config_passes_nats_server_t_and_needs_its_server_name_and_its_users(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(CONF.read_text())

    def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [find_server_binary(), "-t", "-c", str(conf)], env=env, capture_output=True, text=True, timeout=30
        )

    named = {**os.environ, "NATS_SERVER_NAME": "nats-1"}
    no_users = check(named)
    assert no_users.returncode != 0 and "auth.conf" in no_users.stderr  # no anonymous fallback
    write_auth(tmp_path / "creds", Names(NAMESPACE), [parse_grant("provisioner:admin")])
    ok = check(named)
    assert ok.returncode == 0, ok.stderr
    assert "is valid" in ok.stdout + ok.stderr
    unnamed = check({k: v for k, v in os.environ.items() if k != "NATS_SERVER_NAME"})
    assert unnamed.returncode != 0
    assert "NATS_SERVER_NAME" in unnamed.stderr


def test_rendered_node_configs_pass_nats_server_t(nodes: dict[str, Node]) -> None:
    for node in nodes.values():
        done = subprocess.run(
            [find_server_binary(), "-t", "-c", str(node.conf)], env=node.env(), capture_output=True, timeout=30
        )
        assert done.returncode == 0, done.stderr


async def cas_write(kv: Any, key: str, value: bytes, deadline: float) -> int:
    """Read, then compare-and-set; retried while the cluster elects a leader or a read was stale.

    KV reads are direct gets that any replica may answer, so right after a failover a lagging
    follower can return an older revision: the CAS then refuses it (as it must) and we re-read.
    """
    while True:
        try:
            entry = await kv.get(key)
            return int(await kv.update(key, value, last=entry.revision))
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def publish(js: Any, subject: str, msg_id: str, deadline: float) -> None:
    """Publish with a ``Nats-Msg-Id``, retried while the stream elects a leader (the id dedupes retries)."""
    while True:
        try:
            await js.publish(subject, b"ready", headers={"Nats-Msg-Id": msg_id}, timeout=2)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_three_nodes_from_the_config_run_corral_with_r3_and_survive_losing_one(
    nodes: dict[str, Node], tmp_path: Path
) -> None:
    await asyncio.to_thread(start, nodes)
    for node in nodes.values():
        jsz = node.monitor("/jsz")
        assert jsz["meta_cluster"]["cluster_size"] == 3, jsz["meta_cluster"]
        assert node.monitor("/varz")["cluster"]["name"] == "corral"

    urls = ",".join(node.url for node in nodes.values())
    with pytest.raises(coord.AuthenticationFailed):
        await coord.connect(urls, namespace=NAMESPACE, replicas=3, connect_timeout=5)  # nobody anonymous
    admin = coord.Auth(nkeys_seed=str(tmp_path / "creds" / "admin.nk"))
    async with coord.connect(
        urls, namespace=NAMESPACE, replicas=3, connect_timeout=30, auth=admin, provision="apply"
    ) as conn:
        kv = await conn.kv(conn.names.tasks_bucket)
        info = await conn.js.stream_info(f"KV_{conn.names.tasks_bucket}")
        assert info.config.num_replicas == 3
        assert info.cluster is not None and info.cluster.replicas is not None and len(info.cluster.replicas) == 2

        await kv.create("task-1", b"0")
        for i in range(1, 6):
            await cas_write(kv, "task-1", str(i).encode(), time.monotonic() + 10)
        dispatch = conn.names.notification_subject("q", "t0")
        for i in range(5):
            await publish(conn.js, dispatch, f"before-{i}", time.monotonic() + 10)

        # Kill the node that leads the tasks stream: the hardest one to lose.
        leader = info.cluster.leader
        assert leader in nodes
        victim = nodes[leader].proc
        assert victim is not None
        victim.send_signal(signal.SIGKILL)
        victim.wait()

        deadline = time.monotonic() + 30
        for i in range(6, 16):
            await cas_write(kv, "task-1", str(i).encode(), deadline)
        for i in range(5):
            await publish(conn.js, dispatch, f"after-{i}", deadline)

        entry = await kv.get("task-1")
        assert entry.value == b"15" and entry.revision is not None
        after = await conn.js.stream_info(f"KV_{conn.names.tasks_bucket}")
        assert after.cluster is not None and after.cluster.leader not in (None, leader)
        dispatch_info = await conn.js.stream_info(conn.names.dispatch_stream)
        assert dispatch_info.state.messages == 10  # retried publishes were deduplicated, none lost
        with pytest.raises(KeyWrongLastSequenceError):
            await kv.update("task-1", b"stale", last=entry.revision - 1)  # CAS still fences
