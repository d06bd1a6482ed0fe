"""Handlers for benchmarks (imported by worker processes; bench/ is put on PYTHONPATH)."""

from __future__ import annotations

import asyncio

from coord.wire import Result, Spec
from workers.context import Context

_OK = Result.success()


async def noop(spec: Spec, ctx: Context) -> Result:
    """Do nothing, successfully."""
    return _OK


async def hold(spec: Spec, ctx: Context) -> Result:
    """Sleep for a long time (a task to kill the worker under)."""
    await asyncio.sleep(600)
    return _OK
