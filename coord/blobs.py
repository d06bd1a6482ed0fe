"""Large values (a task's spec or result) kept in the namespace's NATS Object Store bucket ``{ns}_blobs``.

A record that would carry a large value carries a :class:`BlobRef` instead (name, size, SHA-256
digest); :class:`Blobs` writes and reads the bucket. Guarantees:

* :meth:`Blobs.get` returns exactly the bytes the reference names: the size and the digest stored
  in the *record* are checked (not only the object's own metadata, which anyone allowed to write
  the bucket could rewrite), links to other buckets are refused, and a missing, expired or corrupt
  object is an :class:`~coord.errors.InvalidRecord` naming the task and the object.
* Every blob gets a fresh name, so a write never replaces (or purges) another one; a blob is
  referenced only by the compare-and-set that writes its record (a blob written under a claim that
  is stale by then is marked deleted at once, and its chunks expire with the bucket's ``max_age``).
* Blobs expire: the bucket's ``max_age`` is twice the task retention (docs/tasks.md, "Large specs
  and results").

The values are encoded with :func:`value_bytes` (the serializer task records use), so the size a
record would have with a value inline and the blob's size are the same number.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.object_store import ObjectStore
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from coord.errors import InvalidRecord, PayloadTooLarge
from coord.ids import new_id
from coord.naming import object_stream_name, object_subject_prefix

__all__ = ["CHUNK_SIZE", "BlobRef", "Blobs", "blob_digest", "blob_name", "value_bytes"]

log = logging.getLogger("corral.blobs")

CHUNK_SIZE = 256 * 1024
"""Bytes per chunk message of a blob (well below any server's max payload)."""

_DIGEST_PREFIX = "SHA-256="


def value_bytes(value: Any) -> bytes:
    """The JSON of ``value`` exactly as a task record stores it (so sizes agree)."""
    return to_json(value)


def blob_digest(data: bytes) -> str:
    """The digest of ``data`` as NATS object stores write it: ``SHA-256=`` and the URL-safe base64 hash."""
    return _DIGEST_PREFIX + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()


class BlobRef(BaseModel):
    """Where a value too large for its record lives: an object of the namespace's blob bucket."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=300)
    """The object's name in ``{ns}_blobs``."""
    size: int = Field(ge=0)
    """Its length in bytes."""
    digest: str = Field(pattern=r"^SHA-256=[A-Za-z0-9_-]{43}=$")
    """``SHA-256=`` and the URL-safe base64 SHA-256 of its bytes (checked on every read)."""

    @classmethod
    def of(cls, name: str, data: bytes) -> BlobRef:
        """The reference ``data`` stored under ``name`` will have."""
        return cls(name=name, size=len(data), digest=blob_digest(data))


def blob_name(task_id: str, what: str) -> str:
    """A fresh object name for ``task_id``'s ``what`` (``spec`` or ``result``): never reused."""
    return f"{task_id}.{what}.{new_id('b')}"


class Blobs:
    """Reads and writes the blob bucket ``bucket`` (see the module docstring).

    ``max_size`` is the largest blob accepted (:class:`PayloadTooLarge` beyond it); ``patience``
    bounds one read or write (seconds, plus one per MiB).
    """

    def __init__(self, js: JetStreamContext, bucket: str, *, max_size: int, patience: float) -> None:
        self.bucket = bucket
        """The Object Store bucket's name."""
        self.max_size = max_size
        """Largest blob accepted, in bytes."""
        self._js = js
        self._patience = patience
        self._store: ObjectStore | None = None

    async def _opened(self) -> ObjectStore:
        if self._store is None:
            self._store = await self._js.object_store(self.bucket)
        return self._store

    def _within(self, size: int) -> float:
        return self._patience + size / (1 << 20)

    async def put(self, task_id: str, what: str, data: bytes) -> BlobRef:
        """Store ``data`` as a new blob of ``task_id``'s ``what``; its reference (checked against the server's)."""
        return await self.put_as(task_id, what, BlobRef.of(blob_name(task_id, what), data), data)

    async def put_as(self, task_id: str, what: str, ref: BlobRef, data: bytes) -> BlobRef:
        """Store ``data`` under ``ref`` (made by :meth:`BlobRef.of` with a fresh :func:`blob_name`)."""
        if len(data) > self.max_size:
            raise PayloadTooLarge(
                f"task {task_id!r}: {what} is {len(data)} bytes; blobs may be at most {self.max_size} "
                f"(Settings.max_blob_bytes)"
            )
        store = await self._opened()
        meta = js_api.ObjectMeta(name=ref.name, options=js_api.ObjectMetaOptions(max_chunk_size=CHUNK_SIZE))
        info = await asyncio.wait_for(store.put(ref.name, data, meta=meta), self._within(len(data)))
        if info.size != ref.size or info.digest != ref.digest:
            raise InvalidRecord(f"task {task_id!r}: blob {ref.name!r} was stored as {info.size} bytes, {info.digest}")
        return ref

    async def get(self, task_id: str, what: str, ref: BlobRef) -> bytes:
        """The bytes ``ref`` names; :class:`InvalidRecord` naming the task if missing, foreign or corrupt."""
        where = f"task {task_id!r}: its {what} blob {ref.name!r} in bucket {self.bucket!r}"
        if ref.size > self.max_size:
            raise InvalidRecord(f"{where} is {ref.size} bytes, more than blobs may be ({self.max_size})")
        store = await self._opened()
        try:
            info = await store.get_info(ref.name)
        except nats.js.errors.NotFoundError:
            raise InvalidRecord(f"{where} is missing (expired or deleted)") from None
        except nats.js.errors.BadObjectMetaError:
            raise InvalidRecord(f"{where} has unreadable metadata") from None
        if info.is_link() or info.size != ref.size or info.digest != ref.digest:
            raise InvalidRecord(f"{where} is not the one the record names (size {info.size}, {info.digest})")
        try:
            data = await asyncio.wait_for(self._chunks(info.nuid, ref.size), self._within(ref.size))
        except TimeoutError:
            raise InvalidRecord(f"{where} is incomplete (its chunks did not all arrive)") from None
        # hashlib lets go of the GIL: hashing a large blob in a thread keeps the event loop ticking
        if len(data) != ref.size or await asyncio.to_thread(blob_digest, data) != ref.digest:
            raise InvalidRecord(f"{where} is corrupt (read {len(data)} bytes, expected {ref.size} with {ref.digest})")
        return data

    async def _chunks(self, nuid: str | None, size: int) -> bytes:
        """The chunks of object ``nuid`` in order, read with an ordered consumer on the bucket's stream
        (named, so no stream lookup, which roles may not do)."""
        if size == 0:
            return b""
        subject = f"{object_subject_prefix(self.bucket)}C.{nuid}"
        sub = await self._js.subscribe(subject, stream=object_stream_name(self.bucket), ordered_consumer=True)
        data = bytearray()
        try:
            while True:
                msg = await sub.next_msg(timeout=self._patience)
                data += msg.data
                if msg.metadata.num_pending == 0 or len(data) >= size:
                    return bytes(data)
        finally:
            await sub.unsubscribe()

    async def get_value(self, task_id: str, what: str, ref: BlobRef) -> Any:
        """The JSON value ``ref`` names (see :meth:`get`)."""
        data = await self.get(task_id, what, ref)
        try:
            return json.loads(data)
        except ValueError:
            raise InvalidRecord(f"task {task_id!r}: its {what} blob {ref.name!r} is not JSON") from None

    async def discard(self, ref: BlobRef) -> None:
        """Mark a blob no record references deleted (best effort); its chunks expire with the bucket's
        ``max_age``: purging them would need a right no role but the provisioner has."""
        try:
            store = await self._opened()
            info = await store.get_info(ref.name)
            if info.digest != ref.digest:
                return  # not the blob we wrote
            info.deleted, info.size, info.chunks, info.digest, info.mtime = True, 0, 0, "", ""
            # The deletion marker as NATS object stores write it: the object's metadata, rolled up.
            subject = f"{object_subject_prefix(self.bucket)}M.{base64.urlsafe_b64encode(ref.name.encode()).decode()}"
            await self._js.publish(subject, json.dumps(info.as_dict()).encode(), headers={"Nats-Rollup": "sub"})
        except Exception as err:
            log.debug("blob %s: not marked deleted (%s); it expires", ref.name, err or type(err).__name__)
