"""Handlers: what a worker runs for a task.

A handler is an async or sync Python callable ``(Spec, Context) -> Result`` (a sync one runs in a
thread), or a command: the spec goes in as JSON on stdin plus ``CORRAL_*`` env vars; the Result comes
back as JSON (or a ``corral-result/1`` line) on stdout. A command that exits non-zero without a
Result is a failure; one that exits 0 without a Result is a success whose summary is its last line.
When the task is traced, a command also gets the run span's context as ``TRACEPARENT`` /
``TRACESTATE`` / ``BAGGAGE`` (the OpenTelemetry environment-variable carrier), so it can continue the trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from coord import tracing
from coord.errors import HandlerError, InvalidInput
from coord.wire import Result, Spec, parse_result
from workers.context import Context

__all__ = ["CommandHandler", "Handler", "HandlerError", "as_handler", "load_handler"]

MAX_CAPTURE = 1 << 20


class Handler(Protocol):
    """Anything the worker can run: ``await handler(spec, ctx) -> Result``."""

    def __call__(self, spec: Spec, ctx: Context, /) -> Awaitable[Result]: ...


def as_handler(fn: Callable[[Spec, Context], Any]) -> Handler:
    """Wrap a sync or async callable so it can be awaited; a sync one runs in a worker thread.

    The callable may return a :class:`Result`, a dict (validated as one), or None (success).
    """

    async def run(spec: Spec, ctx: Context) -> Result:
        if inspect.iscoroutinefunction(fn):
            value = await fn(spec, ctx)
        else:
            value = await asyncio.to_thread(fn, spec, ctx)
            if inspect.isawaitable(value):
                value = await value
        return _to_result(value)

    return run


def _to_result(value: Any) -> Result:
    if isinstance(value, Result):
        return value
    if value is None:
        return Result.success()
    if isinstance(value, dict):
        return Result.model_validate(value)
    raise HandlerError(f"handler returned {type(value).__name__}; expected a Result, a dict or None")


def load_handler(ref: str) -> Handler:
    """Import ``module:function`` and wrap it with :func:`as_handler`; clear errors otherwise."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInput(f"handler must look like 'module:function', got {ref!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InvalidInput(f"handler {ref!r}: cannot import module {module_name!r}: {err}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)  # type: ignore[assignment]
        if fn is None:
            raise InvalidInput(f"handler {ref!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise InvalidInput(f"handler {ref!r} is not callable")
    return as_handler(fn)


class CommandHandler:
    """Runs ``argv`` once per task: spec JSON on stdin, Result JSON expected on stdout."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None, kill_grace: float = 5.0) -> None:
        if not argv:
            raise InvalidInput("command handler needs a command (after --)")
        self.argv = list(argv)
        self.env = env
        self.kill_grace = kill_grace

    async def __call__(self, spec: Spec, ctx: Context) -> Result:
        env = {**os.environ, **(self.env or {}), **_task_env(spec, ctx)}
        cwd = spec.workspace_dir
        if cwd is not None and not await asyncio.to_thread(Path(cwd).is_dir):
            cwd = None  # a workspace on another host: run in the worker's own directory
        proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            out, err = await proc.communicate(spec.model_dump_json().encode())
        except asyncio.CancelledError:
            await self._terminate(proc)
            raise
        stdout = out[-MAX_CAPTURE:].decode(errors="replace")
        stderr = err[-MAX_CAPTURE:].decode(errors="replace")
        result = parse_result(stdout)
        if result is not None:
            return result
        if proc.returncode != 0:
            tail = (stderr.strip() or stdout.strip()).splitlines()[-5:]
            raise HandlerError(f"command exited with {proc.returncode}: {' | '.join(tail) or 'no output'}")
        lines = stdout.strip().splitlines()
        return Result.success(summary=lines[-1] if lines else "", output={"stdout": stdout[-4096:]})

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.kill_grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


def _task_env(spec: Spec, ctx: Context) -> dict[str, str]:
    env = {
        "CORRAL_TASK_ID": spec.task_id,
        "CORRAL_QUEUE": spec.queue,
        "CORRAL_EPOCH": str(ctx.epoch),
        "CORRAL_ATTEMPT": str(ctx.attempt),
        "CORRAL_WORKER_ID": ctx.worker_id,
    }
    if spec.workspace_dir:
        env["CORRAL_WORKSPACE"] = spec.workspace_dir
    if spec.parent_agent_id:
        env["CORRAL_PARENT_AGENT_ID"] = spec.parent_agent_id
    for key, value in tracing.inject().items():  # empty unless traced
        env[key.upper()] = value
    return env
