"""Task records as bytes: one encoder (with the size rule) and one decoder (with the error rule)."""

from __future__ import annotations

from pydantic import ValidationError

from coord.errors import InvalidRecord, PayloadTooLarge
from coord.tasks.models import TaskRecord

__all__ = ["HEADER_ROOM", "decode_record", "encode_record"]

HEADER_ROOM = 1024
"""Bytes kept free below the server's max payload for the headers of a record's messages."""


def encode_record(record: TaskRecord, max_payload: int) -> bytes:
    """The bytes stored for ``record``; :class:`PayloadTooLarge` when they would not fit a message."""
    data = record.model_dump_json().encode()
    limit = max_payload - HEADER_ROOM
    if len(data) > limit:
        raise PayloadTooLarge(
            f"task {record.task_id!r}: the record would be {len(data)} bytes; the server accepts at most "
            f"{limit} (max_payload {max_payload} minus header room). Keep spec and result small and put "
            f"large data elsewhere (e.g. an object store) with a reference."
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
    return record.model_copy(update={"revision": revision})
