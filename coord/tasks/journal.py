"""A task's journal: its successful transitions, kept inside its record (``TaskRecord.journal``).

Every write of a record appends the entry of the transition it makes, so the journal is written by
the same compare-and-set as the transition: a rejected transition never appears, and nothing (a
crash between two messages, a stream without a leader, a lost publish) can leave a hole. It costs no
message of its own and expires with the record.

An entry's own KV revision is only known once it is written, so the newest entry is stored with
revision 0 and gets its revision filled in by the next write (which knows the revision it replaces);
:func:`journal_of` fills in the newest from the record.

The journal is bounded (part of the size rule, :mod:`coord.tasks.size`): only the newest
:data:`KEPT_HEARTBEATS` heartbeats are kept, and at most :data:`MAX_ENTRIES` entries: the first
:data:`KEPT_FIRST` (``scheduled`` and the first claims) and the latest. Every entry dropped is counted
in ``TaskRecord.journal_dropped``; an entry keeps at most :data:`ENTRY_TEXT` characters of an error
and a progress report only when its JSON is at most :data:`ENTRY_TEXT` bytes.
"""

from __future__ import annotations

import json

from coord.tasks.models import JournalEntry, TaskRecord, Transition, filled

__all__ = ["ENTRY_TEXT", "KEPT_FIRST", "KEPT_HEARTBEATS", "MAX_ENTRIES", "journal_of", "journaled"]

KEPT_HEARTBEATS = 16
"""Heartbeat entries a record keeps (the newest); older ones are dropped as new ones come."""

MAX_ENTRIES = 48
"""Entries a record keeps at most; beyond, the oldest after the first :data:`KEPT_FIRST` are dropped."""

KEPT_FIRST = 4
"""The first entries of a task, always kept (how it started)."""

ENTRY_TEXT = 200
"""Characters of an error, and bytes of a progress report's JSON, an entry keeps."""


def _entry(record: TaskRecord) -> JournalEntry:
    progress = None
    beat = record.transition is Transition.HEARTBEAT and record.progress is not None
    if beat and len(json.dumps(record.progress, separators=(",", ":"))) <= ENTRY_TEXT:
        progress = record.progress
    # The values come from a validated record: no second validation per write.
    return JournalEntry.model_construct(
        revision=0,
        at=record.updated_at,
        transition=record.transition,
        status=record.status,
        attempt=record.attempt,
        epoch=record.epoch,
        worker_id=record.claim.worker_id if record.claim else record.last_worker,
        error=record.error[:ENTRY_TEXT] if record.error else None,
        progress=progress,
    )


def journaled(before: TaskRecord | None, after: TaskRecord) -> TaskRecord:
    """``after`` (the record a transition writes over ``before``) with its journal entry appended.

    ``after`` itself is filled in (:func:`~coord.tasks.models.filled`): it must be the record the
    transition made just now, which nothing else holds yet."""
    kept = [] if before is None else list(before.journal) or [_entry(before)]  # (a record from before journals)
    if before is not None and kept[-1].revision == 0:
        kept[-1] = kept[-1].model_copy(update={"revision": before.revision})
    kept.append(_entry(after))
    before_count = len(kept)
    if after.transition is Transition.HEARTBEAT:
        beats = [i for i, e in enumerate(kept) if e.transition is Transition.HEARTBEAT]
        for i in reversed(beats[:-KEPT_HEARTBEATS]):
            del kept[i]
    if len(kept) > MAX_ENTRIES:
        del kept[KEPT_FIRST : len(kept) - MAX_ENTRIES + KEPT_FIRST]
    dropped = (before.journal_dropped if before is not None else 0) + before_count - len(kept)
    return filled(after, journal=tuple(kept), journal_dropped=dropped)


def journal_of(record: TaskRecord) -> list[JournalEntry]:
    """The journal of ``record`` (read at its revision), oldest first, every entry with its revision.

    A record written before journals lived in records gets one entry: its own transition.
    """
    kept = list(record.journal) or [_entry(record)]
    if kept[-1].revision == 0:
        kept[-1] = kept[-1].model_copy(update={"revision": record.revision})
    return kept
