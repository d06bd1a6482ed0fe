"""``corral mcp``: be one agent of the fleet for an MCP client (stdio, or loopback HTTP with a bearer token)."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from coord.errors import InvalidInput
from corral.cli._bounds import LISTEN_PORT, bounded
from corral.cli._common import Options, fail, options, run
from corral.cli._errors import EXIT_USAGE, check_tokens
from corral.mcp.run import check_loopback, serve

_FLAGS = {"id": "--agent-id", "role": "--role", "tags": "--tag", "parent": "--parent", "harness": "--harness"}


def register(parent: typer.Typer) -> None:
    """Add the ``mcp`` command to ``parent``."""
    parent.command("mcp")(mcp)


def mcp(
    ctx: typer.Context,
    agent_id: Annotated[
        str | None, typer.Option("--agent-id", envvar="CORRAL_AGENT_ID", help="This agent's id (default: generated).")
    ] = None,
    role: Annotated[str, typer.Option(help="Role in the presence value.")] = "agent",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag this agent answers to (repeatable).")] = None,
    harness: Annotated[
        str | None, typer.Option(envvar="CORRAL_HARNESS", help="What the agent runs in (e.g. claude-code).")
    ] = None,
    parent: Annotated[
        str | None, typer.Option(envvar="CORRAL_PARENT", help="Agent id to report lifecycle events to.")
    ] = None,
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP at /mcp instead of stdio.")] = False,
    host: Annotated[str, typer.Option(help="Loopback address for --http.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(callback=bounded(LISTEN_PORT), help="Port for --http.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CORRAL_MCP_TOKEN", help="Bearer token for --http (default: generated, printed to stderr)."
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Announce the agent (and a generated token) as one JSON line on stderr.")
    ] = False,
) -> None:
    """Serve the substrate as MCP tools to one agent: its presence lives as long as this process."""
    check_tokens({"--agent-id": agent_id, "--parent": parent, "--tag": tag})
    try:
        check_loopback(host)
    except InvalidInput as err:
        fail(str(err), EXIT_USAGE)
    session_args = {"agent_id": agent_id, "role": role, "tags": list(tag or []), "harness": harness, "parent": parent}
    served: tuple[str, int, str] | None = None
    generated: str | None = None
    if http:
        if token is None:
            token = generated = secrets.token_urlsafe(24)
        served = (host, port, token)

    def announce(agent: str, where: str) -> None:
        # stdout is the protocol's (stdio): everything a human reads goes to stderr.
        if json_out:
            line = json.dumps({"agent_id": agent, "transport": where, **({"token": generated} if generated else {})})
        else:
            line = f"corral mcp: agent {agent} on {where}" + (f" (bearer token {generated})" if generated else "")
        print(line, file=sys.stderr, flush=True)

    run(_serve(options(ctx), session_args, served, announce), rename=_FLAGS)


async def _serve(
    opts: Options,
    session_args: dict[str, Any],
    http: tuple[str, int, str] | None,
    announce: Callable[[str, str], None],
) -> None:
    async with opts.connect(name=f"corral-mcp-{session_args.get('agent_id') or 'agent'}") as coord:
        await serve(coord, dict(session_args), http=http, announce=announce)
