"""Reading a task's journal: the records its successful transitions wrote, from ``{ns}.journal.{task}``.

Each journal message is the exact record bytes a CAS wrote, with the revision in the
``Corral-Revision`` header and ``Nats-Msg-Id`` = ``{task}:{revision}``. Only the store writes them,
and only after the CAS succeeded, so a rejected transition never appears here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import nats.js.errors
from pydantic import ValidationError

from coord.tasks.models import JournalEntry, TaskRecord

if TYPE_CHECKING:
    from coord.connection import Coord

__all__ = ["REVISION_HEADER", "read_journal"]

log = logging.getLogger("corral.tasks")

REVISION_HEADER = "Corral-Revision"
"""Header of a journal message naming the KV revision of the record it carries."""


def _revision(headers: dict[str, str] | None) -> int | None:
    if not headers:
        return None
    raw = headers.get(REVISION_HEADER) or headers.get("Nats-Msg-Id", "").rpartition(":")[2]
    try:
        return int(raw)
    except ValueError:
        return None


async def read_journal(coord: Coord, task_id: str) -> list[JournalEntry]:
    """Every journal entry of ``task_id`` still kept by the events stream, in revision order (one per revision)."""
    stream = coord.names.events_stream
    subject = coord.names.journal_subject(task_id)
    entries: dict[int, JournalEntry] = {}
    seq = 1
    while True:
        try:
            msg = await coord.js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        seq = (msg.seq or seq) + 1
        revision = _revision(msg.headers)
        if revision is None or not msg.data:
            log.warning("journal of %s: message %d has no revision; skipped", task_id, msg.seq)
            continue
        try:
            record = TaskRecord.model_validate_json(msg.data).model_copy(update={"revision": revision})
        except ValidationError as err:
            log.warning("journal of %s: message %d is not a task record (%s); skipped", task_id, msg.seq, err)
            continue
        entries.setdefault(revision, JournalEntry.of(record))
    return [entries[r] for r in sorted(entries)]
