"""Claiming the next task of a queue for an agent: one compare-and-set, woken by the store's own watch.

An agent claims through :meth:`coord.tasks.TaskStore.claim`, the same compare-and-set as every
worker, from the stored record: it walks the queue's pending tasks (most urgent level first, then
oldest), and while none can be claimed it waits on a watch of the tasks bucket — a task becoming
pending wakes it, and a delayed task's start time wakes it too. Nothing is polled. A task another
worker took first is simply passed over.

Cost: the watch replays the task records once per call (no durable consumer is taken from the
workers' queues, whose notifications stay theirs: a worker that later reads one finds the task
claimed and drops it as stale). Fleet-wide queue limits (docs/limits.md) are not applied to claims
made here.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from coord.errors import Conflict, InvalidTransition, NotFound
from coord.priority import LEVELS
from coord.tasks import Claim, TaskRecord, TaskStatus, TaskStore

__all__ = ["claim_next"]

_RANK = {level: i for i, level in enumerate(LEVELS)}


def _claimable(record: TaskRecord, queue: str) -> bool:
    return record.queue == queue and record.status is TaskStatus.PENDING


def _visible_in(record: TaskRecord) -> float:
    if record.visible_at is None:
        return 0.0
    return max(0.0, (record.visible_at - datetime.now(UTC)).total_seconds())


async def _try(store: TaskStore, record: TaskRecord, worker_id: str) -> Claim | None:
    try:
        return await store.claim(record.task_id, worker_id, record=record)
    except (Conflict, InvalidTransition, NotFound):
        return None


async def claim_next(store: TaskStore, queue: str, worker_id: str, *, wait: float) -> Claim | None:
    """Claim the next claimable task of ``queue`` for ``worker_id``, waiting up to ``wait`` s; None if none came."""
    give_up = time.monotonic() + wait
    waiting: dict[str, TaskRecord] = {}
    async with store.watch() as updates:
        snapshot = True
        while True:
            if not snapshot:
                ready = sorted(
                    (r for r in waiting.values() if _visible_in(r) == 0.0),
                    key=lambda r: (_RANK.get(r.priority, 1), r.created_at),
                )
                for record in ready:
                    waiting.pop(record.task_id, None)
                    claim = await _try(store, record, worker_id)
                    if claim is not None:
                        return claim
            left = give_up - time.monotonic()
            if left <= 0:
                return None
            soonest = min((_visible_in(r) for r in waiting.values()), default=left)
            try:
                async with asyncio.timeout(max(0.0, min(left, soonest)) if not snapshot else left):
                    update = await updates.__anext__()
            except TimeoutError:
                continue
            if update is None:
                snapshot = False
            elif _claimable(update, queue):
                waiting[update.task_id] = update
            else:
                waiting.pop(update.task_id, None)
