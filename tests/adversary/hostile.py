"""Hostile values: what a process with a namespace's credentials can write, as hypothesis strategies.

Everything here is data: a :class:`Write` names where a value goes (a key of a bucket, a subject of a
stream, a core subject) and the bytes and headers it carries. Subjects are built by calling
:class:`coord.naming.Names` on the placeholder namespace :data:`NS`; the fleet puts its own namespace
in place of it and one of its recent honest task ids in place of the token :data:`HONEST` when it
writes, so a falsifying example reads as the subject it wrote.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from hypothesis import strategies as st

from coord.naming import Names

NS = "NS"
"""The placeholder namespace subjects are built with."""

HONEST = "HONEST"
"""A token (in subjects and bodies) the fleet replaces with one of its recent honest task ids."""

PLACEHOLDER = Names(NS)

QUEUE = "q"
"""The honest queue: its workers, its limits, its tasks."""

HOSTILE_QUEUE = "hq"
"""A queue nobody serves: hostile limits and schedules point there."""

WORKERS = ("w0", "w1")
"""Ids of the honest workers."""

PARENT = "parent"
"""Id of the honest dispatcher."""

LISTENER = "lead"
"""The agent whose event listener runs in the fleet."""

CHILD = "kid"
"""The agent that sends the honest events and mail."""

READER = "reader"
"""The agent whose inbox is read in the fleet."""

TAG = "rt"
"""A tag bound to :data:`READER`."""

Kind = Literal["kv", "obj", "stream", "core"]


@dataclass(frozen=True)
class Write:
    """One hostile write: ``kind`` kv (a key of the KV bucket named by ``bucket``), obj (a subject of the
    object store named by ``bucket``: ``M.{name}`` metadata, ``C.{nuid}`` chunks), stream (an acked
    JetStream publish on ``subject``) or core (a plain publish on ``subject``)."""

    kind: Kind
    subject: str
    """The subject (for kv: the key; for obj: the subject after the bucket's prefix) with :data:`NS`
    and :data:`HONEST` placeholders."""
    body: bytes
    bucket: str = ""
    """For kv and obj: the ``Names`` member naming the bucket (e.g. ``tasks_bucket``)."""
    headers: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # short enough to read in a falsifying example
        body = self.body if len(self.body) <= 160 else self.body[:160] + b"...(%d bytes)" % len(self.body)
        where = f"{self.bucket}[{self.subject!r}]" if self.bucket else f"{self.kind} {self.subject!r}"
        extra = f", headers={dict(self.headers)!r}" if self.headers else ""
        return f"Write({where}, {body!r}{extra})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis prints examples with this
        printer.text(repr(self))


def now_iso(delta: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta)).isoformat()


FAR_PAST = "0001-01-01T00:00:00+00:00"
FAR_FUTURE = "9999-12-31T23:59:59+00:00"

SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    -(2**63),
    2**64,
    10**40,
    1e308,
    -1e308,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "x" * 5000,
    FAR_PAST,
    FAR_FUTURE,
    "2026-01-01T00:00:00",  # naive
    "not a time",
    "\ud800",  # a lone surrogate
    "a.b.*.>",
    [],
    {},
    [1, "2", None],
    {"nested": {"deeper": [math.nan]}},
]

scalars = st.sampled_from(SCALARS) | st.integers() | st.floats() | st.text(max_size=20)
"""Wrong types, NaN and infinities, huge and negative numbers, far past and future times, odd text."""

INVALID_UTF8 = [b"\xff\xfe\xfd", b'{"task_id": "\xc3\x28"}', b"\xed\xa0\x80", b"\x80" * 10]

raw_bodies = st.sampled_from([b"", b"null", b"{", b"[]", b"NaN", b"{}" * 3, *INVALID_UTF8]) | st.binary(max_size=64)
"""Bodies that are not JSON, not UTF-8, or JSON of the wrong shape."""

DEEP = b"[" * 100_000 + b"]" * 100_000
"""A JSON document nested deeper than any recursive parser goes."""


def dumps(value: Any) -> bytes:
    """JSON the way a careless or hostile writer makes it: NaN and infinities included."""
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


@st.composite
def bodies(draw: st.DrawFn, templates: list[dict[str, Any]]) -> bytes:
    """A hostile body for a record shaped like one of ``templates``: one field made hostile or
    removed, an unknown field added, the record truncated or oversized, or not a record at all."""
    template = dict(draw(st.sampled_from(templates)))
    how = draw(
        st.sampled_from(["field", "field", "field", "drop", "extra", "truncate", "oversize", "raw", "scalar", "deep"])
    )
    if how == "field":
        name = draw(st.sampled_from(sorted(template)))
        value = template[name]
        if isinstance(value, dict) and value and draw(st.booleans()):  # one level down
            inner = dict(value)
            inner[draw(st.sampled_from(sorted(inner)))] = draw(scalars)
            template[name] = inner
        else:
            template[name] = draw(scalars)
        return dumps(template)
    if how == "drop":
        template.pop(draw(st.sampled_from(sorted(template))))
        return dumps(template)
    if how == "extra":
        template[draw(st.text(min_size=1, max_size=8))] = draw(scalars)
        return dumps(template)
    if how == "truncate":
        whole = dumps(template)
        return whole[: draw(st.integers(0, max(0, len(whole) - 1)))]
    if how == "oversize":
        name = draw(st.sampled_from(sorted(template)))
        size = draw(st.sampled_from([64 * 1024, 900 * 1024, 2 * 1024 * 1024, -50, -400]))
        return padded(template, name, size)
    if how == "raw":
        return draw(raw_bodies)
    if how == "deep":
        return DEEP
    return dumps(draw(scalars))


@st.composite
def record_bodies(draw: st.DrawFn, templates: list[dict[str, Any]], consistent_ok: bool = True) -> bytes:
    """Like :func:`bodies`, but also (when ``consistent_ok``) the valid templates themselves: a
    well-formed record can be the hostile part (a claim nobody holds, a schedule nobody asked for)."""
    if consistent_ok and draw(st.integers(0, 4)) == 0:
        return dumps(draw(st.sampled_from(templates)))
    return draw(bodies(templates))


RECORD_LIMIT = 1024 * 1024 - 1024
"""The largest record corral stores on a server of the default max payload (1 MiB less header room)."""


def padded(template: dict[str, Any], name: str, size: int) -> bytes:
    """``template`` with field ``name`` a string of ``size`` characters, or, for a negative ``size``,
    long enough that the whole record is ``-size`` bytes short of :data:`RECORD_LIMIT` (it fits; a
    claim or a journal entry more does not)."""
    if size < 0:
        bare = len(dumps({**template, name: ""}))
        size = max(0, RECORD_LIMIT + size - bare)
    return dumps({**template, name: "x" * size})


tokens = st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True)
"""Valid id tokens."""

hostile_ids = tokens.map(lambda t: f"h{t}")
"""Ids no honest process uses (honest tasks are ``ok-…``, schedule ticks ``tick-…``)."""

kv_keys = st.from_regex(r"[A-Za-z0-9_=-]{1,12}(\.[A-Za-z0-9_=-]{1,12}){0,3}", fullmatch=True).map(lambda k: f"h{k}")
"""Keys of any shape a KV bucket takes (dotted, odd characters), none an honest one."""
