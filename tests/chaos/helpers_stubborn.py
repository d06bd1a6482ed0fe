"""A handler that does not stop when told, for the chaos tests (imported by real worker processes).

Run by ``corral worker --handler tests.chaos.helpers_stubborn:stubborn``. It sleeps
``payload.seconds``; when the runtime stops it (a cancel: the worker failed closed, or the claim
was taken) it marks ``{marks}/{task}.{epoch}.{worker}.stopped`` and sleeps on, then returns its
result anyway: the late result a cut-off worker's uncooperative handler produces, which the store
must refuse.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from coord.wire import Result, Spec
from workers.context import Context


async def stubborn(spec: Spec, ctx: Context) -> Result:
    """Sleep ``payload.seconds`` whatever happens; mark start, stop request and end under ``payload.marks``."""
    payload = spec.payload if isinstance(spec.payload, dict) else {}
    marks = payload.get("marks")
    run = f"{spec.task_id}.{ctx.epoch}.{ctx.worker_id}"

    def mark(what: str) -> None:
        if isinstance(marks, str):
            Path(marks, f"{run}.{what}").touch()

    mark("start")
    seconds = payload.get("seconds", 0)
    assert isinstance(seconds, int | float), seconds
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            await asyncio.sleep(left)
        except asyncio.CancelledError:
            mark("stopped")  # told to stop; this handler does not
    mark("done")
    return Result.success(summary=f"done by {ctx.worker_id}", output={"worker": ctx.worker_id, "epoch": ctx.epoch})
