"""Typed JSON records in a bucket: :class:`RecordStore` (the registry's and the event tree's storage).

Reads go through :class:`coord.kv.Bucket`, so deleted keys, purged keys and server-placed expiry
markers all read as "missing", together with the revision a compare-and-set must name to recreate
them. A value that does not validate as the model reads as missing too (logged), never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from coord.errors import Conflict
from coord.kv import Bucket, conflicts

__all__ = ["MAX_CAS_ATTEMPTS", "RecordStore"]

log = logging.getLogger("corral.records")

MAX_CAS_ATTEMPTS = 32
"""Attempts of a read-modify-write against a key that keeps changing."""

M = TypeVar("M", bound=BaseModel)


def _with_revision(value: M, revision: int) -> M:
    if "revision" in type(value).model_fields:
        return value.model_copy(update={"revision": revision})
    return value


class RecordStore:
    """JSON records (pydantic models) in one bucket, with compare-and-set writes and optional per-key TTL."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        """The bucket the records live in."""

    async def get_raw(self, key: str) -> tuple[bytes | None, int]:
        """``(value, revision)``; value None when the key is missing, deleted or expired.

        The revision is that of the latest message of the key (a tombstone included) or 0.
        """
        entry = await self.bucket.get(key)
        if entry is None:
            return None, 0
        return entry.value, entry.revision

    async def get(self, key: str, model: type[M]) -> tuple[M | None, int]:
        """Read and validate ``key`` as ``model``; a malformed value is logged and reads as missing."""
        data, revision = await self.get_raw(key)
        if data is None:
            return None, revision
        try:
            value = model.model_validate_json(data)
        except ValidationError as err:
            log.warning(
                "%s key %s holds a malformed %s: %s", self.bucket.name, key, model.__name__, err.errors()[0]["msg"]
            )
            return None, revision
        return _with_revision(value, revision), revision

    async def write(
        self,
        key: str,
        value: BaseModel | bytes | None,
        *,
        last: int | None,
        ttl: float | None = None,
        delete: bool = False,
    ) -> int:
        """Write ``value`` (or a delete marker) if the key's last revision is ``last``; return the new one.

        ``last=None`` writes unconditionally; ``last=0`` requires the key never to have existed (use the
        revision from :meth:`get_raw` to recreate a deleted key). ``ttl`` (seconds) makes the server
        remove the entry after that long. Raises :class:`Conflict` when ``last`` is not current.
        """
        if delete:
            return await self.bucket.delete(key, last=last)
        data = value.model_dump_json().encode() if isinstance(value, BaseModel) else (value or b"")
        if last is None:
            return await self.bucket.put(key, data, ttl=ttl)
        return await self.bucket.update(key, data, last=last, ttl=ttl)

    async def update(
        self,
        key: str,
        model: type[M],
        change: Callable[[M | None], M | None],
        *,
        ttl: Callable[[M], float | None] | None = None,
    ) -> M | None:
        """Read-modify-write ``key`` with CAS, retrying on conflict; ``change`` returns None to leave it.

        ``change`` must be a pure function of the current value (it may run several times).
        """
        async for _ in conflicts(f"{self.bucket.name} key {key!r}", MAX_CAS_ATTEMPTS):
            current, revision = await self.get(key, model)
            new = change(current)
            if new is None:
                return current
            try:
                new_revision = await self.write(key, new, last=revision, ttl=ttl(new) if ttl else None)
            except Conflict:
                continue
            return _with_revision(new, new_revision)
        raise AssertionError("unreachable: conflicts() raises when the attempts are spent")

    async def scan(self, prefix: str, model: type[M]) -> list[tuple[str, M]]:
        """Every live ``(key, value)`` under ``prefix`` (e.g. ``"session."``), malformed ones skipped."""
        found: list[tuple[str, M]] = []
        for entry in await self.bucket.scan(prefix):
            try:
                value = model.model_validate_json(entry.value or b"")
            except ValidationError as err:
                log.warning("skipping malformed %s key %s: %s", self.bucket.name, entry.key, err.errors()[0]["msg"])
                continue
            found.append((entry.key, _with_revision(value, entry.revision)))
        return found
