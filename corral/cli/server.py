"""``corral server``: run an embedded nats-server (one node or a cluster) in the foreground."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from coord.server import NatsCluster, NatsServer
from corral.cli._common import console, fail, print_json


def register(app: typer.Typer) -> None:
    """Add the ``server`` command to ``app``."""
    app.command("server")(server)


def server(
    port: Annotated[int | None, typer.Option(help="Client port (default: a free one).")] = None,
    store: Annotated[str | None, typer.Option(help="JetStream store dir (default: a temp dir).")] = None,
    cluster: Annotated[int, typer.Option(help="Run N routed nodes instead of one.", min=1)] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print the URL(s) as JSON.")] = False,
) -> None:
    """Run an embedded NATS server with JetStream until interrupted; print its URL."""
    if cluster > 1 and port is not None:
        fail("--port applies to a single node; a --cluster picks free ports")
    node: NatsServer | NatsCluster
    node = NatsCluster(cluster, store_root=store) if cluster > 1 else NatsServer(port=port, store_dir=store)
    try:
        node.start()
    except Exception as err:
        fail(str(err))
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
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    node.stop()
