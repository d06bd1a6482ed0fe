"""Topologies beyond one cluster, on loopback, for tests: a leaf site and a supercluster.

- :class:`LeafSite`: a hub (one JetStream server, which holds the namespace) and a **leaf node**
  server (a remote site) joined to it through a leafnode remote. The leaf runs no JetStream; both
  ends declare the application account's default JetStream domain as the empty one
  (``default_js_domain``), so every JetStream request of a client at the leaf (``$JS.API.>``, KV
  writes, direct gets) crosses the leaf connection and is answered by the hub: workers at the site
  use the hub's namespace exactly as if connected to the hub (no domain prefix, no other setting).
- :class:`Supercluster`: cluster ``A`` (two routed nodes) and cluster ``B`` (one node) joined by
  **gateways**, JetStream on everywhere, one JetStream domain. The meta group spans all three
  servers; A holds its majority, so A keeps a meta leader when B is cut off.

The link between the sites (the leafnode connection; each gateway connection) runs through a
:class:`RelayProcess` the test owns and can sever; the servers advertise the relay's ports, so
nothing they learn by gossip bypasses it. Every address is loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coord.server import LOOPBACK, NatsServer, free_port
from coord.wire import Spec
from dispatch import Dispatcher

ROOT = Path(__file__).resolve().parent.parent


class RelayProcess:
    """``tests.helpers_relay`` in a process of its own: ``127.0.0.1:listen`` → ``127.0.0.1:target`` for
    each target port; :meth:`cut` severs every link, :meth:`heal` lets them reconnect."""

    def __init__(self, targets: list[int], *, delay: float = 0.0) -> None:
        self.ports = {target: free_port() for target in targets}
        """For each target port, the port the relay listens on."""
        self.delay = delay
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> RelayProcess:
        """Start the relay and wait until every port listens."""
        pairs = [f"{listen}:{target}" for target, listen in self.ports.items()]
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers_relay", "--delay", str(self.delay), *pairs],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")
        return self

    def _expect(self, word: str) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        assert line == word, f"relay said {line!r}, expected {word!r}"

    def _command(self, command: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        self._expect("ok")

    def cut(self) -> None:
        """Close every relayed connection and refuse new ones; returns once that is in effect."""
        self._command("cut")

    def heal(self) -> None:
        """Relay new connections again (the servers reconnect by themselves)."""
        self._command("heal")

    def stop(self) -> None:
        """End the relay process."""
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None


def monitor(server: NatsServer, path: str) -> dict[str, Any]:
    """One JSON page of ``server``'s monitoring port (``varz``, ``leafz``, ``gatewayz``...)."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{server.monitor_port}/{path}", timeout=2) as resp:
        page: dict[str, Any] = json.loads(resp.read())
        return page


def wait_until(check: Any, within: float, what: str) -> None:
    """Poll ``check()`` (monitoring pages may fail while a server starts) until true, or fail naming ``what``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what}")


async def one_at_a_time(dispatcher: Dispatcher, queue: str, prefix: str, n: int) -> list[float]:
    """Seconds from submit to result of ``n`` no-op tasks (ids ``{prefix}{i}``) submitted one after the other."""
    took = []
    for i in range(n):
        started = time.monotonic()
        task_id = await dispatcher.submit(Spec(task_id=f"{prefix}{i}", queue=queue, payload={"seconds": 0}))
        await dispatcher.result(task_id, timeout=30)
        took.append(time.monotonic() - started)
    return took


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank (with 20 values, 0.99 is the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class LeafSite:
    """A hub server (JetStream) and a leaf server (no JetStream) joined through ``relay``."""

    hub: NatsServer
    leaf: NatsServer
    relay: RelayProcess

    def linked(self) -> bool:
        """True while the hub sees the leaf connected."""
        return len(monitor(self.hub, "leafz").get("leafs") or []) >= 1

    def wait_linked(self, within: float = 15.0) -> None:
        """Wait until the leaf is connected to the hub."""
        wait_until(self.linked, within, "the leaf node to connect to the hub")


ACCOUNTS = (
    'accounts { APP { jetstream: enabled, users: [ { user: "app", password: "app" } ] } }\n'
    'no_auth_user: "app"\n'
    # nats-server denies JetStream traffic ($JS.API, $KV, $OBJ) across a leafnode connection unless
    # the account's default JetStream domain is declared as the empty one on both ends: then the
    # leaf's clients reach the hub's JetStream as if connected to the hub (no domain prefix).
    'default_js_domain: { APP: "" }\n'
)
"""The application account of both ends of the leaf link (clients without credentials land in it)."""


@contextmanager
def leaf_site(root: Path, *, delay: float = 0.0) -> Iterator[LeafSite]:
    """A started :class:`LeafSite` with its store under ``root``; the leaf retries its remote every second."""
    leaf_port = free_port()
    relay = RelayProcess([leaf_port], delay=delay)
    hub = NatsServer(
        store_dir=root / "hub",
        name="hub",
        config_extra=ACCOUNTS + f'leafnodes {{\n  listen: "{LOOPBACK}:{leaf_port}"\n'
        f'  advertise: "{LOOPBACK}:{relay.ports[leaf_port]}"\n'  # what the leaf learns by gossip: the relay
        '  authorization { users: [ { user: "leaf", password: "leaf", account: APP } ] }\n}',
    )
    leaf = NatsServer(
        store_dir=root / "leaf",
        name="leaf",
        jetstream=False,
        config_extra=ACCOUNTS + "leafnodes {\n  reconnect: 1\n"
        f'  remotes = [ {{ url: "nats-leaf://leaf:leaf@{LOOPBACK}:{relay.ports[leaf_port]}", account: APP }} ]\n}}',
    )
    try:
        hub.start()
        relay.start()
        leaf.start()
        site = LeafSite(hub, leaf, relay)
        site.wait_linked()
        yield site
    finally:
        leaf.stop()
        relay.stop()
        hub.stop()


@dataclass
class Supercluster:
    """Clusters ``A`` (``a`` nodes) and ``B`` (``b`` nodes) joined by gateways through ``relay``."""

    a: list[NatsServer]
    b: list[NatsServer]
    relay: RelayProcess

    @property
    def url_a(self) -> str:
        """Client URLs of cluster A (comma-separated)."""
        return ",".join(n.url for n in self.a)

    @property
    def url_b(self) -> str:
        """Client URLs of cluster B (comma-separated)."""
        return ",".join(n.url for n in self.b)

    def joined(self) -> bool:
        """True while every server has an outbound gateway to the other cluster."""
        for node, other in [*((n, "B") for n in self.a), *((n, "A") for n in self.b)]:
            if other not in (monitor(node, "gatewayz").get("outbound_gateways") or {}):
                return False
        return True

    def wait_joined(self, within: float = 20.0) -> None:
        """Wait until both clusters see each other through their gateways."""
        wait_until(self.joined, within, "the gateways between A and B to connect")


def _cluster(root: Path, name: str, n: int) -> tuple[list[NatsServer], list[int]]:
    """``n`` servers of cluster ``name`` (routed, not yet configured for gateways) and their gateway ports."""
    cluster_ports = [free_port() for _ in range(n)]
    routes = [f"nats://{LOOPBACK}:{p}" for p in cluster_ports]
    nodes = [
        NatsServer(
            store_dir=root / f"{name}{i}",
            name=f"{name}{i}",
            cluster_name=name,
            cluster_port=cluster_ports[i],
            # Every node lists every route, its own included (the server skips the route to itself):
            # the one configuration a cluster's nodes usually share, and what lets a one-node
            # cluster run clustered JetStream (it refuses to without a configured route).
            routes=routes,
        )
        for i in range(n)
    ]
    return nodes, [free_port() for _ in range(n)]


@contextmanager
def supercluster(root: Path, *, a: int = 2, b: int = 1, delay: float = 0.0) -> Iterator[Supercluster]:
    """A started :class:`Supercluster`; every gateway connection crosses the relay (``delay`` each way)."""
    nodes_a, gw_a = _cluster(root, "A", a)
    nodes_b, gw_b = _cluster(root, "B", b)
    relay = RelayProcess(gw_a + gw_b, delay=delay)

    def gateway(name: str, own: int, other: str, other_ports: list[int]) -> str:
        urls = ", ".join(f'"nats://{LOOPBACK}:{relay.ports[p]}"' for p in other_ports)
        return (
            f'gateway {{\n  name: "{name}"\n  listen: "{LOOPBACK}:{own}"\n'
            f'  advertise: "{LOOPBACK}:{relay.ports[own]}"\n  reject_unknown_cluster: true\n'
            f'  gateways: [ {{ name: "{other}", urls: [ {urls} ] }} ]\n}}'
        )

    for node, port in zip(nodes_a, gw_a, strict=True):
        node.config_extra = gateway("A", port, "B", gw_b)
    for node, port in zip(nodes_b, gw_b, strict=True):
        node.config_extra = gateway("B", port, "A", gw_a)
    everyone = nodes_a + nodes_b
    try:
        relay.start()
        for node in everyone:
            node.launch()
        for node in everyone:
            node.wait_ready(60)
        sc = Supercluster(nodes_a, nodes_b, relay)
        sc.wait_joined()
        yield sc
    finally:
        for node in everyone:
            node.stop()
        relay.stop()
