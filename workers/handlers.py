"""Handlers: what a worker runs for a task.

A handler is an async or sync Python callable ``(Spec, Context) -> Result`` (a sync one runs in a
thread, so blocking or CPU-heavy work never stalls the worker's event loop), or a command: the spec
goes in as JSON on stdin plus ``CORRAL_*`` env vars; the Result comes back as JSON (or a
``corral-result/1`` line) on stdout. A command that exits non-zero without a Result is a failure;
one that exits 0 without a Result is a success whose summary is its last line.

Stopping: a Python thread cannot be interrupted, so a sync handler that is cancelled is told so
(``ctx.cancelled``) and then waited for; the claim is written only after it returned. A command
gets SIGTERM, then SIGKILL after ``kill_grace``; it also dies with its worker (on Linux, the parent-
death signal), so a killed worker leaves no command running beside the re-run elsewhere. That
signal reaches the command itself, not processes it starts: a command that forks long-running
children should make them die with it too (``exec`` the real program, or give them a parent-death
signal, e.g. ``setpriv --pdeathsig KILL``).
When the task is traced, a command also gets the run span's context as ``TRACEPARENT`` /
``TRACESTATE`` / ``BAGGAGE`` (the OpenTelemetry environment-variable carrier), so it can continue the trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import importlib
import inspect
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from coord import tracing
from coord.errors import HandlerError, InvalidInput
from coord.validation import WAIT, check_number
from coord.wire import Result, Spec, parse_result
from workers.context import Context

__all__ = ["CommandHandler", "Handler", "HandlerError", "as_handler", "load_handler"]

log = logging.getLogger("corral.worker")

MAX_CAPTURE = 1 << 20
"""Bytes of a command's stdout and of its stderr kept (the last ones), however much it prints."""


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
            value = await _in_thread(fn, spec, ctx)
            if inspect.isawaitable(value):
                value = await value
        return _to_result(value)

    return run


async def _in_thread(fn: Callable[[Spec, Context], Any], spec: Spec, ctx: Context) -> Any:
    """Run ``fn`` in a thread; if cancelled meanwhile, wait for the thread before passing the cancel on."""
    call = contextvars.copy_context().run
    future = asyncio.get_running_loop().run_in_executor(None, call, fn, spec, ctx)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        ctx.cancelled.set()
        log.warning("task %s: waiting for its sync handler to return (a thread cannot be interrupted)", ctx.task_id)
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(future)
        raise


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


CREDENTIAL_ENV = (
    "CORRAL_PASSWORD",
    "CORRAL_TOKEN",
    "CORRAL_CREDS",
    "CORRAL_NKEY",
    "CORRAL_TLS_KEY",
    "CORRAL_USER",
    "CORRAL_INBOX_PREFIX",
)
"""The worker's own NATS credentials: never passed on to a command (it talks over stdin/stdout only)."""


def _without_credentials(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in CREDENTIAL_ENV}


class CommandHandler:
    """Runs ``argv`` once per task: spec JSON on stdin, Result JSON expected on stdout."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None, kill_grace: float = 5.0) -> None:
        if not argv:
            raise InvalidInput("command handler needs a command (after --)")
        check_number("kill_grace", kill_grace, WAIT)
        self.argv = list(argv)
        self.env = env
        self.kill_grace = kill_grace

    async def __call__(self, spec: Spec, ctx: Context) -> Result:
        env = {**_without_credentials(os.environ), **(self.env or {}), **_task_env(spec, ctx)}
        cwd = spec.workspace_dir
        if cwd is not None and not await asyncio.to_thread(Path(cwd).is_dir):
            raise HandlerError(f"workspace_dir {cwd!r} does not exist on host {socket.gethostname()!r}")
        proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid()),
        )
        try:
            out, err = await self._communicate(proc, spec.model_dump_json().encode())
        except asyncio.CancelledError:
            await self._terminate(proc)
            raise
        stdout = out.decode(errors="replace")
        stderr = err.decode(errors="replace")
        result = parse_result(stdout)
        if result is not None:
            return result
        if proc.returncode != 0:
            tail = (stderr.strip() or stdout.strip()).splitlines()[-5:]
            raise HandlerError(f"command exited with {proc.returncode}: {' | '.join(tail) or 'no output'}")
        lines = stdout.strip().splitlines()
        return Result.success(summary=lines[-1] if lines else "", output={"stdout": stdout[-4096:]})

    @staticmethod
    async def _communicate(proc: asyncio.subprocess.Process, stdin: bytes) -> tuple[bytes, bytes]:
        """Feed ``stdin`` and collect the last :data:`MAX_CAPTURE` bytes of each output as it streams."""
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

        async def feed(pipe: asyncio.StreamWriter) -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                pipe.write(stdin)
                await pipe.drain()
            pipe.close()

        async def tail(pipe: asyncio.StreamReader) -> bytes:
            kept = bytearray()
            while chunk := await pipe.read(1 << 16):
                kept += chunk
                if len(kept) > MAX_CAPTURE:
                    del kept[: len(kept) - MAX_CAPTURE]
            return bytes(kept)

        _, out, err = await asyncio.gather(feed(proc.stdin), tail(proc.stdout), tail(proc.stderr))
        await proc.wait()
        return out, err

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.kill_grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


def _die_with(worker_pid: int) -> Callable[[], None]:
    """A pre-exec hook: ask Linux to SIGKILL the child when the worker dies (no-op elsewhere)."""

    def hook() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            return
        if os.getppid() != worker_pid:  # the worker died before the request took effect
            os._exit(1)

    return hook


_PR_SET_PDEATHSIG = 1


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
