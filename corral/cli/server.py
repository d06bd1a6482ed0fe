"""``corral server``: run an embedded nats-server (one node or a cluster) in the foreground."""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Annotated

import typer

from coord.server import DURABLE_SYNC, LOOPBACK, NatsCluster, NatsServer
from corral.cli._bounds import CLUSTER, PORT, bounded
from corral.cli._common import console, fail, print_json
from corral.cli._errors import EXIT_USAGE


def register(app: typer.Typer) -> None:
    """Add the ``server`` command to ``app``."""
    app.command("server")(server)


def server(
    port: Annotated[
        int | None, typer.Option(callback=bounded(PORT), help="Client port (default or 0: a free one).")
    ] = None,
    store: Annotated[str | None, typer.Option(help="JetStream store dir (default: a temp dir).")] = None,
    cluster: Annotated[int, typer.Option(help="Run N routed nodes instead of one.", callback=bounded(CLUSTER))] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print the URL(s) as JSON.")] = False,
    no_sync: Annotated[
        bool,
        typer.Option(
            "--no-sync",
            help="Acknowledge writes before they reach the disk (JetStream flushes every 2 min): faster, "
            "but a machine crash loses acknowledged tasks. Default: flush before every acknowledgement.",
        ),
    ] = False,
) -> None:
    """Run an embedded NATS server with JetStream until interrupted; print its URL.

    Writes are flushed to disk before they are acknowledged (``sync_interval: always``) unless
    ``--no-sync``; the server is killed with this process, so a restart finds its port free.
    """
    if cluster > 1 and port is not None:
        fail("--port applies to a single node; a --cluster picks free ports", EXIT_USAGE)
    if store is not None:
        _check_store(store)
    if port:
        _check_port(port)
    sync = None if no_sync else DURABLE_SYNC
    stop = threading.Event()  # caught before the URL is printed: a SIGTERM right after it stops cleanly
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node: NatsServer | NatsCluster
    if cluster > 1:
        node = NatsCluster(cluster, store_root=store, sync_interval=sync, die_with_parent=True)
    else:
        node = NatsServer(port=port, store_dir=store, sync_interval=sync, die_with_parent=True)
    try:
        node.start()
    except OSError as err:
        fail(f"could not start nats-server: {err}")
    url = node.url
    nodes = node.nodes if isinstance(node, NatsCluster) else [node]
    monitoring = [f"http://{n.host}:{n.monitor_port}" for n in nodes]
    if json_out:
        print_json(
            {
                "url": url,
                "monitoring": monitoring,
                "store": str(node.store_root if isinstance(node, NatsCluster) else node.store_dir),
            }
        )
    else:
        console.print(f"NATS ready at [bold]{url}[/]  (export CORRAL_URL={url})", highlight=False)
        console.print(f"monitoring at {', '.join(monitoring)}  (/varz, /jsz, /healthz)", highlight=False)
    stop.wait()
    node.stop()


def _check_store(store: str) -> None:
    """Fail naming --store unless the directory exists (or can be made) and is writable."""
    path = Path(store)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"cannot create the directory {store}: {err.strerror or err}", field="--store")
    if not os.access(path, os.W_OK | os.X_OK):
        fail(f"the directory {store} is not writable", field="--store")


def _check_port(port: int) -> None:
    """Fail naming --port when the port is already taken on the loopback address the server listens on.

    The probe binds as nats-server does, with SO_REUSEADDR: connections of a server that just stopped
    linger in TIME_WAIT for a minute and do not keep a new server from listening.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as err:
            why = "is already in use" if err.errno == errno.EADDRINUSE else f"cannot be used: {err.strerror or err}"
            fail(f"{LOOPBACK}:{port} {why}", field="--port")
