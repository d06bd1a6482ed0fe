"""The ``corral`` command line: composes coord, dispatch and workers; no logic of its own."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from coord.connection import DEFAULT_NAMESPACE, DEFAULT_URL, Auth
from coord.errors import InvalidId
from coord.ids import validate_namespace
from corral import __version__
from corral.cli import auth, demo, events, msg, presence, reclaimer, registry, server, submit, tasks, ui, worker
from corral.cli import conformance as conformance_cli
from corral.cli import demo_agents as demo_agents_cli
from corral.cli import mcp as mcp_cli
from corral.cli import provision as provision_cli
from corral.cli import queues as queues_cli
from corral.cli import scheduler as scheduler_cli
from corral.cli import schedules as schedules_cli
from corral.cli import schema as schema_cli
from corral.cli._bounds import REPLICAS, bounded, setting_bound
from corral.cli._common import Options, setting_env, setting_help
from corral.cli._errors import run_cli, usage
from corral.cli._telemetry import (
    DEFAULT_METRICS_HOST,
    MetricsHostOption,
    MetricsPortOption,
    TraceChoice,
    TraceOption,
    setup_telemetry,
)

app = typer.Typer(
    name="corral",
    help="Coordination substrate for fleets of workers and AI agents on NATS JetStream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"corral {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    server_url: Annotated[
        str, typer.Option("--server", "-s", envvar="CORRAL_URL", help="NATS URL(s), comma-separated.")
    ] = DEFAULT_URL,
    namespace: Annotated[
        str,
        typer.Option(
            "--namespace", "-n", envvar="CORRAL_NAMESPACE", help="corral namespace (prefix of buckets/streams)."
        ),
    ] = DEFAULT_NAMESPACE,
    user: Annotated[str | None, typer.Option(envvar="CORRAL_USER", help="NATS user.")] = None,
    password: Annotated[str | None, typer.Option(envvar="CORRAL_PASSWORD", help="NATS password.")] = None,
    token: Annotated[str | None, typer.Option(envvar="CORRAL_TOKEN", help="NATS auth token.")] = None,
    creds: Annotated[str | None, typer.Option(envvar="CORRAL_CREDS", help="NATS .creds file.")] = None,
    nkey: Annotated[str | None, typer.Option(envvar="CORRAL_NKEY", help="NATS nkey seed file.")] = None,
    tls_ca: Annotated[str | None, typer.Option(envvar="CORRAL_TLS_CA", help="CA bundle (enables TLS).")] = None,
    tls_cert: Annotated[str | None, typer.Option(envvar="CORRAL_TLS_CERT", help="Client cert.")] = None,
    tls_key: Annotated[str | None, typer.Option(envvar="CORRAL_TLS_KEY", help="Client key.")] = None,
    inbox_prefix: Annotated[
        str | None,
        typer.Option(
            envvar="CORRAL_INBOX_PREFIX",
            help="Reply-subject prefix of this credential (`corral auth` writes it into each {id}.env).",
        ),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(
            envvar=setting_env("replicas"),
            callback=bounded(REPLICAS),
            help=setting_help(
                "Replicas of the namespace's buckets/streams (3 on a 3-node cluster).", "replicas", env=False
            ),
        ),
    ] = None,
    connect_timeout: Annotated[
        float | None,
        typer.Option(
            envvar=setting_env("connect_timeout"),
            callback=bounded(setting_bound("connect_timeout")),
            help=setting_help(
                "Seconds to keep trying to reach a server that refuses or does not answer (e.g. while it starts).",
                "connect_timeout",
                env=False,
            ),
        ),
    ] = None,
    trace: TraceOption = TraceChoice.env,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = DEFAULT_METRICS_HOST,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Global options shared by every command."""
    try:
        validate_namespace(namespace)
    except InvalidId as err:
        raise usage(str(err).removeprefix("namespace "), "--namespace") from None
    setup_telemetry(
        trace,
        service_name=f"corral-{ctx.invoked_subcommand or 'cli'}",
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    source = ctx.get_parameter_source("server_url")
    ctx.obj = Options(
        server=server_url,
        server_given=source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"),
        namespace=namespace,
        replicas=replicas,
        connect_timeout=connect_timeout,
        auth=Auth(
            user=user,
            password=password,
            token=token,
            creds_file=creds,
            nkeys_seed=nkey,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            inbox_prefix=inbox_prefix,
        ),
    )


# Each command group lives in its own module and registers itself here.
server.register(app)
msg.register(app)
events.register(app)
registry.register(app)
tasks.register(app)
queues_cli.register(app)
presence.register(app)
worker.register(app)
submit.register(app)
reclaimer.register(app)
schedules_cli.register(app)
scheduler_cli.register(app)
demo.register(app)
auth.register(app)
provision_cli.register(app)
schema_cli.register(app)
ui.register(app)
conformance_cli.register(app)
demo_agents_cli.register(app)
mcp_cli.register(app)


def main() -> None:
    """Console-script entry point: run the command, report any error as one line, exit with its code."""
    sys.exit(run_cli(typer.main.get_command(app), sys.argv[1:]))
