"""A handler for the limits tests, imported by real worker processes: it records when it ran."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from coord.wire import Result, Spec
from workers.context import Context


async def timed(spec: Spec, ctx: Context) -> Result:
    """Sleep ``payload.seconds`` (``payload.first`` on the task's first claim, when given); write the run's
    own start and end times to ``{payload.log}/{task}.{epoch}.json`` when it ends."""
    payload = spec.payload if isinstance(spec.payload, dict) else {}
    start = time.time()
    seconds = payload.get("first", payload.get("seconds", 0)) if ctx.epoch == 1 else payload.get("seconds", 0)
    assert isinstance(seconds, int | float), seconds
    await asyncio.sleep(seconds)
    end = time.time()
    log = payload.get("log")
    if isinstance(log, str):
        record = {"task": spec.task_id, "epoch": ctx.epoch, "worker": ctx.worker_id, "start": start, "end": end}
        Path(log, f"{spec.task_id}.{ctx.epoch}.json").write_text(json.dumps(record))
    return Result.success(summary=f"done by {ctx.worker_id}")
