"""The conformance handler for the Python worker: ``corral worker --handler corral.conformance.handler:handle``.

Every worker under test runs the kit's tasks the same way (docs/any-language.md): the task's
``spec.payload`` is ``{"sleep": seconds, "echo": value}``; the worker sleeps that long (stopping at
once when the claim is taken away) and completes with ``Result.success(output=echo)``.
"""

from __future__ import annotations

import asyncio

from coord.wire import Result, Spec
from workers.context import Context

__all__ = ["handle"]


async def handle(spec: Spec, ctx: Context) -> Result:
    """Sleep ``payload.sleep`` seconds, then succeed with ``payload.echo`` as the output."""
    payload = spec.payload if isinstance(spec.payload, dict) else {}
    seconds = payload.get("sleep", 0)
    if isinstance(seconds, int | float) and seconds > 0:
        await asyncio.sleep(float(seconds))
    return Result.success(output=payload.get("echo"))
