"""Shared plumbing of the CLI: global connection options, running coroutines, output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from coord.connection import Auth, Coord, connect
from coord.errors import CorralError, InvalidInput
from coord.presence.timing import check_timing
from coord.settings import DEFAULT_TEXT, Settings
from corral.cli._errors import EXIT_FAILURE, CliError, check_setting, from_validation, usage

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
"""stderr; lines are never wrapped (a log or a pipe gets each message on one line)."""


@dataclass
class Options:
    """What the global options say: where NATS is, the namespace, credentials."""

    server: str
    namespace: str
    auth: Auth = field(default_factory=Auth)
    server_given: bool = False
    """True when --server or CORRAL_URL was given (rather than the default URL)."""
    replicas: int | None = None
    """Replicas of the namespace's buckets and streams (3 on a 3-node cluster); None: the settings' value."""
    connect_timeout: float | None = None
    """Seconds to keep trying to reach the server (``--connect-timeout``); None: the settings' value."""

    def connect(self, *, name: str | None = None) -> AbstractAsyncContextManager[Coord]:
        """``coord.connect`` with these options (tunables from :meth:`Settings.load`, i.e. ``CORRAL_*``).

        While it connects for longer than half a second, a terminal on stderr shows how long it has
        been trying and for how long it will (nothing is printed to a pipe or a log).
        """
        opening = connect(
            self.server,
            namespace=self.namespace,
            auth=self.auth,
            replicas=self.replicas,
            name=name,
            connect_timeout=self.connect_timeout,
        )
        return _connected(opening, self.server, self.connect_timeout)


@asynccontextmanager
async def _connected(opening: Awaitable[Coord], url: str, timeout: float | None) -> AsyncIterator[Coord]:
    """``opening`` awaited (with progress on a terminal), then the connection, closed at the end."""
    progress = asyncio.create_task(_progress(url, timeout)) if err_console.is_terminal else None
    try:
        coord = await opening
    finally:
        if progress is not None:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
    try:
        yield coord
    finally:
        await coord.close()


async def _progress(url: str, timeout: float | None) -> None:
    """A spinner on stderr naming the server and the time spent, from half a second on (until cancelled)."""
    if timeout is None:
        with contextlib.suppress(Exception):  # invalid settings are reported by connect itself
            timeout = Settings.load().connect_timeout
    limit = f" of {timeout:g}s (--connect-timeout)" if timeout is not None else ""
    started = time.monotonic()
    await asyncio.sleep(0.5)
    with err_console.status(f"connecting to NATS at {url} ...") as status:
        while True:
            status.update(f"connecting to NATS at {url}: {time.monotonic() - started:.0f}s{limit}")
            await asyncio.sleep(0.5)


def options(ctx: typer.Context) -> Options:
    """The global options of this invocation."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Options)
    return obj


def setting_default(name: str) -> Any:
    """The default of the :class:`~coord.settings.Settings` field ``name`` (its one definition)."""
    return DEFAULT_TEXT.get(name, Settings.model_fields[name].default)


def setting_env(name: str) -> str:
    """The environment variable that sets the :class:`~coord.settings.Settings` field ``name``."""
    return f"{Settings.model_config.get('env_prefix', '')}{name}".upper()


def setting_help(text: str, name: str, *, env: bool = True) -> str:
    """``text`` followed by the default of the settings field ``name`` (and the variable that overrides it).

    For an option that defaults to ``None`` so that the settings (and ``CORRAL_*``) supply the value;
    ``env=False`` when the option declares the variable itself (typer then names it).
    """
    source = f", or ${setting_env(name)}" if env else ""
    return f"{text.removesuffix('.')} (default: {setting_default(name)}{source})."


def fail(message: str, code: int = EXIT_FAILURE, field: str | None = None) -> NoReturn:
    """Stop the command: ``message`` is reported as one line (``field``: the flag at fault) and it exits ``code``."""
    raise CliError(message, code=code, field=field)


def invalid(err: ValidationError, rename: Mapping[str, str] | None = None) -> NoReturn:
    """Stop with ``err`` as one usage error (exit 2): ``flag: rule``, fields named as in ``rename`` (their flags)."""
    raise from_validation(err, rename) from None


def run(coro: Coroutine[Any, Any, T], rename: Mapping[str, str] | None = None) -> T:
    """Run ``coro``; corral's errors and invalid input become a :class:`CliError`, Ctrl-C exit 130.

    Invalid input (``InvalidInput``, a pydantic ``ValidationError``) is a usage error (exit 2);
    ``rename`` names the fields of a ``ValidationError`` as the command's flags. Any other
    :class:`~coord.errors.CorralError` is a failure (exit 1).
    """
    try:
        return asyncio.run(coro)
    except CliError:
        raise
    except InvalidInput as err:
        raise usage(str(err)) from None
    except CorralError as err:
        raise CliError(str(err)) from None
    except ValidationError as err:
        invalid(err, rename)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def check_presence_flags(opts: Options, interval: float | None, ttl: float | None) -> None:
    """Raise a usage error naming the flag unless ``--interval`` and ``--ttl`` make a working heartbeat.

    Each is checked against its settings rule, then both together (a flag not given takes the
    settings' value), all before anything connects.
    """
    check_setting("--ttl", "presence_ttl", ttl)
    check_setting("--interval", "presence_interval", interval)
    if interval is None and ttl is None:
        return
    base = Settings.load(**({} if opts.replicas is None else {"replicas": opts.replicas}))
    try:
        check_timing(
            base.presence_interval if interval is None else interval, base.presence_ttl if ttl is None else ttl
        )
    except InvalidInput as err:
        raise usage(str(err), field="--interval" if interval is not None else "--ttl") from None


def print_json(data: Any) -> None:
    """Write ``data`` as one JSON document (one line) to stdout."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


_E = TypeVar("_E")


def until_signalled(events: asyncio.Queue[_E]) -> AsyncIterator[_E]:
    """Each item of ``events`` as it comes, until SIGINT or SIGTERM (then the iteration just ends).

    The signals are caught from this call on, before the first item is asked for.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return _until(events, stop)


async def _until(events: asyncio.Queue[_E], stop: asyncio.Event) -> AsyncIterator[_E]:
    while not stop.is_set():
        getter = asyncio.ensure_future(events.get())
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if getter not in done:
            getter.cancel()
            return
        yield getter.result()
