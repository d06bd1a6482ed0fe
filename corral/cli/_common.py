"""Shared plumbing of the CLI: global connection options, running coroutines, output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from coord.connection import Auth, connect
from coord.errors import CorralError

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)


@dataclass
class Options:
    """What the global options say: where NATS is, the namespace, credentials."""

    server: str
    namespace: str
    auth: Auth = field(default_factory=Auth)
    server_given: bool = False
    """True when --server or CORRAL_URL was given (rather than the default URL)."""
    replicas: int = 1
    """Replicas of the namespace's buckets and streams (3 on a 3-node cluster)."""

    def connect(self, **kwargs: Any) -> Any:
        """``coord.connect`` with these options."""
        kwargs.setdefault("replicas", self.replicas)
        return connect(self.server, namespace=self.namespace, auth=self.auth, **kwargs)


def options(ctx: typer.Context) -> Options:
    """The global options of this invocation."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Options)
    return obj


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as an error and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; turn corral's errors into a one-line message and Ctrl-C into exit 130."""
    try:
        return asyncio.run(coro)
    except (CorralError, ValueError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def print_json(data: Any) -> None:
    """Write ``data`` as one JSON document (one line) to stdout."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()
