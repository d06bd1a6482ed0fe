"""Handlers used by the end-to-end tests, imported by real worker processes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from coord.wire import Result, Spec
from workers.context import Context


async def sleepy(spec: Spec, ctx: Context) -> Result:
    """Sleep ``payload.seconds``; record each execution as a file ``{marks}/{task}.{epoch}.{worker}``."""
    payload = spec.payload if isinstance(spec.payload, dict) else {}
    marks = payload.get("marks")
    if isinstance(marks, str):
        Path(marks, f"{spec.task_id}.{ctx.epoch}.{ctx.worker_id}.start").touch()
    seconds = payload.get("seconds", 0)
    assert isinstance(seconds, int | float), seconds
    await asyncio.sleep(seconds)
    if isinstance(marks, str):
        Path(marks, f"{spec.task_id}.{ctx.epoch}.{ctx.worker_id}.done").touch()
    return Result.success(
        summary=f"done by {ctx.worker_id}", output={"worker": ctx.worker_id, "epoch": ctx.epoch, "pid": os.getpid()}
    )


def boom(spec: Spec, ctx: Context) -> Result:
    """A sync handler that always raises."""
    raise RuntimeError(f"boom in {spec.task_id}")


def exits(spec: Spec, ctx: Context) -> Result:
    """Dies without a result (as a crashing agent would)."""
    os._exit(3)


async def timed(spec: Spec, ctx: Context) -> Result:
    """Write the wall-clock start time into ``{marks}/{task}.start`` (a file's mtime is only as fine as
    the kernel's coarse clock), then sleep ``payload.seconds``."""
    started = time.time()
    payload = spec.payload if isinstance(spec.payload, dict) else {}
    Path(str(payload["marks"]), f"{spec.task_id}.start").write_text(repr(started))
    seconds = payload.get("seconds", 0)
    assert isinstance(seconds, int | float), seconds
    await asyncio.sleep(seconds)
    return Result.success(summary=f"done by {ctx.worker_id}")


async def large(spec: Spec, ctx: Context) -> Result:
    """Sleep ``payload.seconds``, then return a result with ``payload.mib`` MiB of output, summarising how
    many characters of ``payload.data`` it was given."""
    payload = spec.payload if isinstance(spec.payload, dict) else {}
    data = payload.get("data", "")
    seconds, mib = payload.get("seconds", 0), payload.get("mib", 0)
    assert isinstance(seconds, int | float) and isinstance(mib, int), (seconds, mib)
    await asyncio.sleep(seconds)
    output = "o" * (mib << 20)
    return Result.success(summary=f"given {len(data) if isinstance(data, str) else 0} characters", output=output)
