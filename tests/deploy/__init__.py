"""Deployment assets (NATS configs, compose, Dockerfile, Kubernetes), checked against the real CLI.

Helpers shared by the deploy tests live here: :func:`parse_corral` parses a ``corral`` command
line with the real Typer app, exactly as the console script would, without running it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import typer

ROOT = Path(__file__).resolve().parents[2]
"""The repository root."""


def _cli() -> Any:
    from corral.cli import app

    return typer.main.get_command(app)


def parse_corral(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Parse ``corral ARGS`` with the real CLI; return (command path, extra args after ``--``).

    Raises AssertionError with the CLI's own usage message for an unknown command or option,
    a bad value or a missing required option.
    """
    command = _cli()
    try:
        ctx = command.make_context("corral", list(args))
        path: list[str] = []
        while hasattr(command, "resolve_command"):
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest or (path and rest[0] not in command.commands):
                break  # a group that runs itself (e.g. `worker -q Q -- CMD`)
            name, command, rest = command.resolve_command(ctx, rest)
            ctx = command.make_context(name, rest, parent=ctx)
            path.append(name)
    except typer.Exit as done:
        raise AssertionError(f"`corral {' '.join(args)}` exits while parsing (code {done.exit_code})") from None
    except Exception as err:
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        raise AssertionError(f"`corral {' '.join(args)}` is not a valid command line: {message}") from None
    return path, list(ctx.args)


def _walk(command: Any) -> Iterator[Any]:
    yield command
    for sub in getattr(command, "commands", {}).values():
        yield from _walk(sub)


def cli_envvars() -> set[str]:
    """Every environment variable some ``corral`` option reads."""
    found: set[str] = set()
    for command in _walk(_cli()):
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                found.add(envvar)
            elif envvar:
                found.update(envvar)
    return found
