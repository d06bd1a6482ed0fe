"""``corral provision``: create or update a namespace's buckets and streams (or, with ``--check``, verify them).

The one command that needs stream-admin rights; every other role only checks that the streams exist
(and creates the missing ones where its credentials allow, see docs/cli.md).
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from coord.connection import connect
from coord.errors import InvalidInput
from coord.ids import validate_id
from coord.provision import Provision, StreamState, StreamStatus, queue_consumers
from coord.settings import Settings
from corral.cli._bounds import MAX_BYTES, REPLICAS, bounded
from corral.cli._common import Options, console, fail, options, print_json, run, setting_help


def register(app: typer.Typer) -> None:
    """Add ``provision`` to ``app``."""
    app.command("provision")(provision)


async def _provision(
    opts: Options, namespace: str, settings: Settings, mode: Provision, queues: list[str]
) -> list[StreamStatus]:
    async with connect(
        opts.server,
        namespace=namespace,
        auth=opts.auth,
        settings=settings,
        provision=mode,
        name="corral-provision",
        connect_timeout=opts.connect_timeout,
    ) as coord:
        statuses = list(coord.streams)
        for queue in queues:
            apply = mode is Provision.APPLY
            statuses += await queue_consumers(coord.nc, coord.js, coord.names, queue, apply=apply)
        return statuses


def provision(
    ctx: typer.Context,
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Namespace to provision (default: the global --namespace)."),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(
            callback=bounded(REPLICAS),
            help="Replicas of every bucket and stream (default: the global --replicas, or $CORRAL_REPLICAS).",
        ),
    ] = None,
    max_bytes: Annotated[
        int | None,
        typer.Option(
            callback=bounded(MAX_BYTES),
            help=setting_help("Size limit of each bucket and stream, in bytes.", "max_bytes"),
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only verify: exit 1 when a stream is missing or differs.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help='Print {"namespace", "streams": [{"stream", "state", "differences"}]}.')
    ] = False,
    queue: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            "-q",
            help="Also create the durable consumers of this queue's priority levels, or set them back to "
            "corral's configuration (repeatable). Workers may not create them; a parent creates them on its "
            "first submit to the queue.",
        ),
    ] = None,
) -> None:
    """Create the namespace's buckets and streams, or bring existing ones to corral's configuration.

    Each stream is reported as created, updated (fields that only bound growth, e.g. --max-bytes)
    or unchanged; a difference in a fixed field (subjects, retention, replicas, ...) is an error
    naming the stream and is never changed. With --check nothing is written.
    """
    opts = options(ctx)
    ns = namespace or opts.namespace
    try:
        settings = Settings.load().but(replicas=replicas or opts.replicas, max_bytes=max_bytes)
    except InvalidInput as err:
        fail(str(err), code=2)
    mode = Provision.CHECK if check else Provision.APPLY
    queues = list(queue or [])
    for name in queues:
        try:
            validate_id(name, "queue")
        except InvalidInput as err:
            fail(str(err), code=2, field="--queue")
    logging.getLogger("corral.provision").setLevel(logging.ERROR)  # this command reports each stream itself
    statuses = run(_provision(opts, ns, settings, mode, queues))
    if json_out:
        print_json({"namespace": ns, "streams": [s.as_dict() for s in statuses]})
    else:
        for status in statuses:
            detail = f" ({'; '.join(status.differences)})" if status.differences else ""
            console.print(f"{status.state.value:<9} {status.name}{detail}", highlight=False, soft_wrap=True)
    outdated = [s.name for s in statuses if s.state in (StreamState.OUTDATED, StreamState.MISSING)]
    if outdated:
        fail(f"{', '.join(outdated)} of namespace {ns!r} differ from corral's configuration; run corral provision")
