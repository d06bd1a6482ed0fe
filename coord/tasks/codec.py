"""Task records as bytes: one encoder (with the size rule) and one decoder (with the error rule)."""

from __future__ import annotations

from pydantic import ValidationError

from coord.errors import InvalidRecord, PayloadTooLarge
from coord.tasks.models import TaskRecord, filled
from coord.tasks.size import HEADER_ROOM, record_limit

__all__ = ["decode_record", "encode_record"]


def encode_record(record: TaskRecord, max_payload: int) -> bytes:
    """The bytes stored for ``record``; :class:`PayloadTooLarge` when they would not fit a message."""
    data = record.model_dump_json().encode()
    limit = record_limit(max_payload)
    if len(data) > limit:
        raise PayloadTooLarge(
            f"task {record.task_id!r}: the record would be {len(data)} bytes; the server accepts at most "
            f"{limit} (max_payload {max_payload} minus {HEADER_ROOM} for headers)"
        )
    return data


def decode_record(data: bytes, revision: int, *, where: str) -> TaskRecord:
    """The record stored as ``data`` at ``revision``; :class:`InvalidRecord` naming ``where`` if it is not one."""
    try:
        record = TaskRecord.model_validate_json(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "value"
        raise InvalidRecord(
            f"{where} at revision {revision} is not a task record ({err.error_count()} problems, first: "
            f"{field}: {first['msg']})"
        ) from None
    return filled(record, revision=revision)  # validated just now: nobody else holds it
