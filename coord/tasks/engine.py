"""The transition engine: the task store's only path to the bucket.

:class:`TransitionEngine` reads records and applies one pure step from
:mod:`coord.tasks.transitions` as one compare-and-set on the revision it started from. A lost race
is retried against the fresh record only while the step still accepts it (bounded, with the
:func:`coord.kv.conflicts` rhythm); side effects follow a successful write only. A step whose record
would not fit a message is, where the caller says so (claims, reclaims, failures), replaced by
:func:`coord.tasks.transitions.unfit` in the same compare-and-set: the task goes ``dead`` with the
reason, cut to fit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from coord.errors import Conflict, InvalidRecord, KeyExists, NotFound, PayloadTooLarge
from coord.kv import Bucket, Entry, conflicts
from coord.tasks import transitions
from coord.tasks.codec import decode_record, encode_record
from coord.tasks.effects import TaskEffects
from coord.tasks.index import INDEX_HEADER, index_header
from coord.tasks.journal import journaled
from coord.tasks.models import TaskRecord, filled
from coord.tasks.observer import Observer
from coord.tasks.size import cut, record_limit

__all__ = ["Step", "TransitionEngine"]

log = logging.getLogger("corral.tasks")

Step = Callable[[TaskRecord], TaskRecord | None]
"""A transition: the current record in, the next one out (None: nothing to write), or a typed error."""


class TransitionEngine:
    """Reads, creates and transitions task records in ``bucket`` (see the module docstring)."""

    def __init__(
        self, bucket: Bucket, effects: TaskEffects, observer: Observer, *, max_cas_attempts: int, retention: float
    ) -> None:
        self.bucket = bucket
        """The tasks bucket."""
        self.effects = effects
        """What follows a successful write."""
        self._observer = observer
        self._attempts = max_cas_attempts
        self._retention = retention
        self.last_revision = 0
        """Highest KV revision written through this engine (an index waits for it: read-your-writes)."""

    # --- encoding and reading --------------------------------------------------------------------
    def encode(self, record: TaskRecord) -> bytes:
        """The bytes stored for ``record`` (:class:`~coord.errors.PayloadTooLarge` if too big)."""
        return encode_record(record, self.bucket.nc.max_payload)

    def decode(self, entry: Entry) -> TaskRecord:
        """The record a value entry holds (:class:`~coord.errors.InvalidRecord` if it is none)."""
        assert entry.value is not None
        return decode_record(entry.value, entry.revision, where=f"{self.bucket.name} key {entry.key!r}")

    def decode_or_skip(self, entry: Entry) -> TaskRecord | None:
        """Like :meth:`decode`, but a value that is not a record is logged and skipped."""
        try:
            return self.decode(entry)
        except InvalidRecord as err:
            log.warning("%s; skipped", err)
            return None

    async def read_or_none(self, task_id: str) -> TaskRecord | None:
        """The current record of ``task_id``, or None when there is none."""
        entry = await self.bucket.get(task_id)
        if entry is None or entry.deleted:
            return None
        return self.decode(entry)

    async def read_many(
        self, task_ids: Sequence[str], *, revisions: Mapping[str, int] | None = None
    ) -> dict[str, TaskRecord]:
        """The stored records of ``task_ids`` that exist and decode, by id, in one batched read.

        A record a replica does not have yet, or has only at a revision older than the one named in
        ``revisions``, is read again from the stream leader (a replica may lag a moment behind). Ids
        without a record (absent, deleted, or not a record: logged) are left out.
        """
        entries = await self.bucket.get_many(task_ids)
        behind = [
            t
            for t in dict.fromkeys(task_ids)
            if (e := entries.get(t)) is None or e.revision < (revisions or {}).get(t, 0)
        ]
        for task_id in behind:
            entry = await self.bucket.get(task_id, leader=True)
            if entry is not None:
                entries[task_id] = entry
        found: dict[str, TaskRecord] = {}
        for task_id, entry in entries.items():
            if not entry.deleted and (record := self.decode_or_skip(entry)) is not None:
                found[task_id] = record
        return found

    async def read(self, task_id: str) -> TaskRecord:
        """The current record of ``task_id``; :class:`NotFound` when there is none."""
        record = await self.read_or_none(task_id)
        if record is None:
            raise NotFound(f"task {task_id!r} does not exist in bucket {self.bucket.name!r}")
        return record

    # --- writing ---------------------------------------------------------------------------------
    async def create(self, record: TaskRecord, data: bytes) -> TaskRecord | None:
        """Write new ``record`` (encoded as ``data``) unless the task exists; None when it does."""
        try:
            revision = await self.bucket.create(record.task_id, data, headers={INDEX_HEADER: index_header(record)})
        except KeyExists:
            return None
        created = record.model_copy(update={"revision": revision})
        self._written(revision)
        await self.effects.after(None, created)
        return created

    async def apply(self, task_id: str, step: Step, first: TaskRecord | None, *, unfit: bool = False) -> TaskRecord:
        """Apply ``step`` to the current record (``first``, or a fresh read) and write it with one CAS.

        On a lost race the record is read again and ``step`` re-validates it (it raises when the
        transition became invalid); :class:`Conflict` after ``max_cas_attempts`` losses. A record
        too large for a message raises :class:`PayloadTooLarge` (nothing written), or with ``unfit``
        is replaced by the task going ``dead`` with that reason (:meth:`unfit_record`).
        """
        current = first if first is not None else await self.read(task_id)
        async for attempt in conflicts(f"task {task_id!r}", self._attempts):
            if attempt:
                current = await self.read(task_id)
            new = step(current)
            if new is None:
                return current
            if new is current:  # journaled() fills in the record a step made; never the one it was given
                new = current.model_copy()
            new = journaled(current, new)
            try:
                data = self.encode(new)
            except PayloadTooLarge as err:
                if not unfit:
                    raise
                new, data = self.unfit_record(current, str(err))
            # A finished record expires after the retention (a retry before then rewrites it without).
            ttl = self._retention if new.terminal else None
            try:
                revision = await self.bucket.update(
                    task_id, data, last=current.revision, ttl=ttl, headers={INDEX_HEADER: index_header(new)}
                )
            except Conflict:
                self._observer.cas_retried(task_id, current.queue, current.revision, attempt + 1)
                continue
            written = filled(new, revision=revision)  # made in this loop: nobody else holds it
            self._written(revision)
            await self.effects.after(current, written)
            return written
        raise AssertionError("unreachable: conflicts() raises when the attempts are spent")

    def unfit_record(self, current: TaskRecord, reason: str) -> tuple[TaskRecord, bytes]:
        """``current`` gone ``dead`` because ``reason`` (a transition's record would not fit), cut to fit:
        the journal first (down to the newest entry, the dropped ones counted), then the reason, and
        last the spec and meta (a definition too large for any record is a foreign writer's)."""
        limit = record_limit(self.bucket.nc.max_payload)
        reason = cut(f"the record cannot be written: {reason}")
        new = journaled(current, transitions.unfit(current, reason=reason, now=datetime.now(UTC)))
        if len(new.model_dump_json()) > limit:
            newest = new.journal[-1].model_copy(update={"error": None})  # the record's error says it
            dropped = new.journal_dropped + len(new.journal) - 1
            new = new.model_copy(update={"journal": (newest,), "journal_dropped": dropped})
        for _ in range(3):  # every character cut removes at least one byte of the record
            over = len(new.model_dump_json()) - limit
            if over <= 0 or not new.error:
                break
            new = new.model_copy(update={"error": cut(new.error, max(0, len(new.error) - over - 1))})
        if len(new.model_dump_json()) > limit:  # the definition alone is too large (a foreign writer's)
            new = new.model_copy(update={"spec": None, "meta": {}, "error": "the record cannot be written: too large"})
        return new, self.encode(new)

    def _written(self, revision: int) -> None:
        if revision > self.last_revision:
            self.last_revision = revision
