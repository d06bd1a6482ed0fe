"""The one size rule of task records: the limit, the worst case of a record, and the check at submit.

A task record is one KV message, so it must fit the server's ``max_payload`` less :data:`HEADER_ROOM`.
Every part of a record that grows after submit is bounded here or in :mod:`coord.tasks.journal`:

* the claim, deadlines and counters (fixed-width fields; ids at most ``MAX_ID_LENGTH``);
* ``error``: at most :data:`MAX_ERROR_CHARS` characters (six bytes each when JSON-escaped);
* ``result`` and ``progress``: a result whose JSON exceeds :func:`inline_limit` goes to a blob
  (:mod:`coord.blobs`), progress beyond :data:`MAX_PROGRESS_BYTES` is refused;
* the journal: at most ``MAX_ENTRIES`` entries of bounded size, a count of the dropped ones;
* ``meta``: :data:`META_GROWTH` bytes a reclaim may add (trace context).

:func:`worst_case` builds the record a task could have at its largest (claimed, every bound
reached) and :func:`check_fits` refuses at submit a task whose worst case would not fit, naming
the field and the sizes. So a task that is accepted can always be claimed, reclaimed, failed and
completed. (A record that does not fit anyway, e.g. one written by a foreign writer, ends ``dead``
with the reason: :func:`coord.tasks.transitions.unfit`.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

from coord.blobs import BlobRef, value_bytes
from coord.errors import PayloadTooLarge
from coord.ids import MAX_ID_LENGTH
from coord.tasks.journal import ENTRY_TEXT, MAX_ENTRIES
from coord.tasks.models import ClaimInfo, JournalEntry, TaskRecord, TaskStatus, Transition

__all__ = [
    "HEADER_ROOM",
    "INLINE_MAX",
    "MAX_ERROR_CHARS",
    "MAX_PROGRESS_BYTES",
    "META_GROWTH",
    "check_fits",
    "cut",
    "inline_limit",
    "record_limit",
    "worst_case",
    "worst_size",
]

HEADER_ROOM = 1024
"""Bytes kept free below the server's max payload for the headers of a record's messages."""

INLINE_MAX = 64 * 1024
"""Largest spec or result (bytes of JSON) kept inside the record; larger ones go to a blob."""

MAX_ERROR_CHARS = 4096
"""``error`` texts are cut to this many characters."""

MAX_PROGRESS_BYTES = 4096
"""Largest progress report (bytes of JSON) a heartbeat may record."""

META_GROWTH = 1024
"""Bytes of ``meta`` a reclaim may add (the reclaim span's trace context)."""

_BIG = 10**20 - 1
"""A counter or revision at its widest (20 digits)."""
_WIDEST_TIME = datetime(2999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
_ESCAPED = "\x00"
"""A character at its widest in JSON (``\\u0000``: six bytes)."""


def record_limit(max_payload: int) -> int:
    """Bytes a stored record may have on a server with ``max_payload``."""
    return max_payload - HEADER_ROOM


def inline_limit(max_payload: int) -> int:
    """Largest spec or result (bytes of JSON) kept inline on a server with ``max_payload``."""
    return max(0, min(INLINE_MAX, record_limit(max_payload) // 8))


def cut(text: str, chars: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to at most ``chars`` characters (marked with an ellipsis when cut)."""
    if len(text) <= chars:
        return text
    return text[: chars - 1] + "…" if chars > 0 else ""


def worst_case(record: TaskRecord, max_payload: int) -> TaskRecord:
    """``record`` at its largest: claimed, with every bounded field at its bound (see the module docstring)."""
    worker = "w" * MAX_ID_LENGTH
    entry = JournalEntry(
        revision=_BIG,
        at=_WIDEST_TIME,
        transition=Transition.HEARTBEAT,
        status=TaskStatus.CANCELLED,
        attempt=_BIG,
        epoch=_BIG,
        worker_id=worker,
        error=_ESCAPED * ENTRY_TEXT,
        progress="x" * (ENTRY_TEXT - 2),
    )
    claim = ClaimInfo(
        worker_id=worker,
        claim_id="c" * MAX_ID_LENGTH,
        token_sha256="0" * 64,
        epoch=_BIG,
        claimed_at=_WIDEST_TIME,
        deadline=_WIDEST_TIME,
    )
    ref = BlobRef(name="n" * 300, size=_BIG, digest="SHA-256=" + "A" * 43 + "=")
    inline = inline_limit(max_payload)
    return record.model_copy(
        update={  # the keys of _GROWN
            "status": TaskStatus.CANCELLED,
            "attempt": _BIG,
            "epoch": _BIG,
            "claim": claim,
            "result": "x" * max(0, inline - 2),
            "result_blob": ref,
            "progress": "x" * (MAX_PROGRESS_BYTES - 2),
            "error": _ESCAPED * MAX_ERROR_CHARS,
            "updated_at": _WIDEST_TIME,
            "visible_at": _WIDEST_TIME,
            "transition": Transition.HEARTBEAT,
            "last_worker": worker,
            "journal": (entry,) * MAX_ENTRIES,
            "journal_dropped": _BIG,
            "meta": _grown_meta(record),
        }
    )


_GROWN: set[str] = {
    "status", "attempt", "epoch", "claim", "result", "result_blob", "progress", "error", "updated_at",
    "visible_at", "transition", "last_worker", "journal", "journal_dropped", "meta",
}  # fmt: skip
"""The fields :func:`worst_case` sets: all but ``meta`` to the same value for every record."""


def _grown_meta(record: TaskRecord) -> dict[str, object]:
    return {**record.meta, "_": "x" * META_GROWTH}


def _meta_part(record: TaskRecord) -> int:
    """Bytes of ``{"meta":...}`` with the meta a reclaim may grow ``record``'s to."""
    return len(record.model_copy(update={"meta": _grown_meta(record)}).model_dump_json(include={"meta"}))


@cache
def _fixed_part(max_payload: int) -> int:
    """Bytes the worst case's fixed fields add (the same for every record: computed once)."""
    worst = len(worst_case(_PROBE, max_payload).model_dump_json())
    return worst - len(_PROBE.model_dump_json(exclude=_GROWN)) - _meta_part(_PROBE)


_PROBE = TaskRecord(
    task_id="probe",
    queue="probe",
    status=TaskStatus.PENDING,
    spec="",
    created_at=_WIDEST_TIME,
    updated_at=_WIDEST_TIME,
)


def worst_size(record: TaskRecord, max_payload: int) -> int:
    """``len(worst_case(record, max_payload).model_dump_json())``, without building it.

    The fields :func:`worst_case` sets hold the same values for every record (but ``meta``, which
    only grows by a constant), so their bytes are counted once per ``max_payload``; what remains is
    the record's own fields, one small serialization instead of the whole worst case per submit."""
    return len(record.model_dump_json(exclude=_GROWN)) + _meta_part(record) + _fixed_part(max_payload)


def check_fits(record: TaskRecord, max_payload: int) -> None:
    """Raise :class:`PayloadTooLarge` unless ``record`` (a new task) fits at its worst case, naming
    the field that takes most room and the sizes."""
    limit = record_limit(max_payload)
    worst = worst_size(record, max_payload)
    if worst <= limit:
        return
    sizes = {"spec": len(value_bytes(record.spec)), "meta": len(value_bytes(record.meta))}
    field = max(sizes, key=lambda k: sizes[k])
    raise PayloadTooLarge(
        f"task {record.task_id!r}: {field} is {sizes[field]} bytes, which makes the record {worst} bytes at its "
        f"worst (claimed, journal at its {MAX_ENTRIES} entries, an error of {MAX_ERROR_CHARS} characters, result "
        f"and progress at their bounds); the server accepts {limit} (max_payload {max_payload} minus "
        f"{HEADER_ROOM} for headers)"
    )
