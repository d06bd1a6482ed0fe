"""What the kit does to and reads from the namespace: submit tasks, wait for records, read raw entries.

Everything is read from the server (the stored records, the raw KV messages with their headers, the
dead letters), never taken from the worker's word.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from nats.errors import Error as NatsError
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from coord.connection import Coord
from coord.ids import new_id
from coord.naming import kv_stream_name, kv_subject_prefix
from coord.tasks import TaskRecord, TaskStatus
from coord.wire import Spec
from corral.conformance.rows import ScenarioFailed

__all__ = ["last_entry", "submit", "wait_for", "wait_record"]

POLL = 0.05
"""Seconds between two reads while waiting for a record to change."""


async def submit(
    coord: Coord, queue: str, *, sleep: float = 0.0, echo: Any = None, lease: float = 2.0, priority: str = "normal"
) -> str:
    """Schedule one kit task (payload ``{"sleep", "echo"}``, lease ``lease`` seconds); its id."""
    task_id = new_id("k")
    payload = {"sleep": sleep, "echo": echo}
    spec = Spec.model_validate(
        {"task_id": task_id, "queue": queue, "payload": payload, "timeout": lease, "priority": priority}
    )
    await coord.tasks.schedule(
        task_id, queue=queue, spec=spec.model_dump(mode="json"), timeout=lease, priority=spec.priority
    )
    return task_id


async def wait_record(
    coord: Coord, task_id: str, ok: Callable[[TaskRecord], bool], *, within: float, what: str
) -> TaskRecord:
    """The task's stored record once ``ok`` holds for it; :class:`ScenarioFailed` naming ``what`` after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    record = await coord.tasks.get(task_id)
    while not ok(record):
        if loop.time() > deadline:
            raise ScenarioFailed(
                f"{what}: not within {within:g} s (task {task_id} is {record.status.value}, attempt {record.attempt})"
            )
        await asyncio.sleep(POLL)
        record = await coord.tasks.get(task_id)
    return record


def claimed(record: TaskRecord) -> bool:
    """True while the task is claimed."""
    return record.status is TaskStatus.CLAIMED


def ended(record: TaskRecord) -> bool:
    """True once the task is terminal."""
    return record.terminal


async def wait_for(check: Callable[[], Any], *, within: float, what: str) -> Any:
    """Await ``check()`` until it returns something truthy (returned); :class:`ScenarioFailed` after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise ScenarioFailed(f"{what}: not within {within:g} s")
        await asyncio.sleep(POLL * 2)


async def last_entry(coord: Coord, bucket: str, key: str) -> RawStreamMsg | None:
    """The raw latest message of ``key`` in KV ``bucket`` (headers included); None if there is none."""
    try:
        return await coord.js.get_last_msg(kv_stream_name(bucket), kv_subject_prefix(bucket) + key)
    except NotFoundError:
        return None
    except NatsError:
        return None


def headers_of(msg: RawStreamMsg) -> dict[str, str]:
    """The message's headers as a plain dict."""
    return dict(msg.headers or {})


def index_matches(header: str, record: TaskRecord) -> str | None:
    """None when a ``Corral-Index`` header describes ``record`` (docs/protocol-spec.md); else what differs."""
    try:
        fields = json.loads(header)
        queue, status, epoch, attempt, worker, claim_id = fields[:6]
    except (ValueError, TypeError):
        return f"Corral-Index {header!r} is not the 9-element JSON array"
    if len(fields) != 9:
        return f"Corral-Index has {len(fields)} elements, not 9"
    want: list[object] = [record.queue, record.status.value, record.epoch, record.attempt]
    want += [record.claim.worker_id, record.claim.claim_id] if record.claim else [None, None]
    if [queue, status, epoch, attempt, worker, claim_id] != want:
        return f"Corral-Index {header} does not describe the record ({want})"
    return None
