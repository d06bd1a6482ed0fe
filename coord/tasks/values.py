"""A task's spec and result, inline in its record or in a blob: the one place that decides which.

A spec or result whose JSON exceeds :func:`coord.tasks.size.inline_limit` is stored in the
namespace's blob bucket (:class:`coord.blobs.Blobs`) and the record carries its reference
(``spec_blob``, ``result_blob``); readers get the value back through :meth:`TaskValues.spec_of`,
:meth:`TaskValues.result_of` or :meth:`TaskValues.resolved` whichever way it was stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

from coord.blobs import BlobRef, Blobs, blob_name, value_bytes
from coord.errors import CorralError, InvalidInput, Unavailable
from coord.tasks.models import TaskRecord
from coord.tasks.size import inline_limit

__all__ = ["TaskValues"]


class TaskValues:
    """Places and fetches specs and results of the records of one tasks bucket (module docstring)."""

    def __init__(self, blobs: Blobs, max_payload: int, *, retention: float) -> None:
        self.blobs = blobs
        """The blob bucket."""
        self.retention = retention
        """How long a finished task's record is kept (the blob bucket keeps blobs twice as long)."""
        self.inline_limit = inline_limit(max_payload)
        """Largest spec or result (bytes of JSON) kept in the record."""

    def place_spec(self, record: TaskRecord, now: datetime) -> tuple[TaskRecord, bytes | None]:
        """``record`` as stored: with a large spec replaced by its blob reference (then also the bytes
        to write with :meth:`write`; nothing is written here). :class:`InvalidInput` for a task with a
        large spec that may start later than ``retention`` after ``now`` (its blob could expire first)."""
        data = value_bytes(record.spec)
        if len(data) <= self.inline_limit:
            return record, None
        if record.visible_at is not None and (record.visible_at - now).total_seconds() > self.retention:
            raise InvalidInput(
                f"spec: task {record.task_id!r} has a spec of {len(data)} bytes, kept in a blob for "
                f"{2 * self.retention:g}s; it may start at most {self.retention:g}s (Settings.task_retention) "
                f"after it is submitted"
            )
        ref = BlobRef.of(blob_name(record.task_id, "spec"), data)
        return record.model_copy(update={"spec": None, "spec_blob": ref}), data

    async def write(self, record: TaskRecord, data: bytes) -> None:
        """Write the spec blob :meth:`place_spec` referenced in ``record``."""
        assert record.spec_blob is not None
        written = await self.blobs.put_as(record.task_id, "spec", record.spec_blob, data)
        assert written == record.spec_blob

    async def place_result(self, task_id: str, result: Any) -> tuple[Any, BlobRef | None]:
        """``result`` as a record stores it: itself, or (None, the blob it was written to) when large."""
        data = value_bytes(result)
        if len(data) <= self.inline_limit:
            return result, None
        ref = await asyncio.to_thread(BlobRef.of, blob_name(task_id, "result"), data)  # hashing lets go of the GIL
        return None, await self.blobs.put_as(task_id, "result", ref, data)

    async def referencing(self, ref: BlobRef | None, write: Awaitable[TaskRecord]) -> TaskRecord:
        """Await ``write`` (a CAS whose record references blob ``ref``); the blob is deleted when the
        write fails for good (stale claim, refused) or writes a record without it (unfit)."""
        try:
            record = await write
        except CorralError as err:
            if ref is not None and not isinstance(err, Unavailable):  # an Unavailable write may have happened
                await self.blobs.discard(ref)
            raise
        if ref is not None and record.result_blob != ref:
            await self.blobs.discard(ref)
        return record

    async def spec_of(self, record: TaskRecord) -> Any:
        """The task's spec (read from its blob when it has one; :class:`InvalidRecord` if unreadable)."""
        if record.spec_blob is None:
            return record.spec
        return await self.blobs.get_value(record.task_id, "spec", record.spec_blob)

    async def result_of(self, record: TaskRecord) -> Any:
        """The task's result (read from its blob when it has one; :class:`InvalidRecord` if unreadable)."""
        if record.result_blob is None:
            return record.result
        return await self.blobs.get_value(record.task_id, "result", record.result_blob)

    async def resolved(self, record: TaskRecord) -> TaskRecord:
        """``record`` with its spec and result in place (the blob references are kept)."""
        if record.spec_blob is None and record.result_blob is None:
            return record
        return record.model_copy(update={"spec": await self.spec_of(record), "result": await self.result_of(record)})
