"""The adversary's coverage table, derived from :class:`coord.naming.Names`.

Every public member of ``Names`` (each bucket, stream, consumer, filter and subject it names) is in
:data:`COVERAGE`: either a :class:`Target` (a key space or subjects the adversary writes hostile values
into, with the strategy that makes them) or a :class:`Covered` (a name the adversary reaches through
a target, e.g. a stream through its subjects, a consumer through the subjects it filters, and why).
``tests/adversary/test_coverage.py`` fails when a member of ``Names`` is missing here, so a new
bucket or subject without fuzzing fails CI; docs/adversary.md holds :func:`markdown` of this table
(the same test checks it).
"""

from __future__ import annotations

import base64
import inspect
import time
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from coord.naming import Names
from tests.adversary.hostile import (
    CHILD,
    FAR_FUTURE,
    HONEST,
    HOSTILE_QUEUE,
    LISTENER,
    PARENT,
    PLACEHOLDER,
    QUEUE,
    READER,
    TAG,
    WORKERS,
    Write,
    bodies,
    dumps,
    hostile_ids,
    kv_keys,
    now_iso,
    raw_bodies,
    record_bodies,
    tokens,
)


@dataclass(frozen=True)
class Target:
    """A key space or set of subjects the adversary writes into, and how."""

    name: str
    """Short name (the test id)."""
    members: tuple[str, ...]
    """The ``Names`` members whose names it writes to."""
    writes: str
    """What it writes, for the docs."""
    strategy: st.SearchStrategy[list[Write]]
    """One example: the writes made together."""


@dataclass(frozen=True)
class Covered:
    """A ``Names`` member the adversary reaches through ``by`` (a target's name)."""

    member: str
    by: str
    why: str


def names_members() -> list[str]:
    """Every public bucket-, stream-, consumer-, filter- or subject-producing member of ``Names``."""
    return sorted(
        name
        for name, value in vars(Names).items()
        if not name.startswith("_") and (isinstance(value, property) or inspect.isfunction(value))
    )


def _ghost(token: str) -> str:
    return f"ghost{token}"[:40]


# --- buckets ----------------------------------------------------------------------------------------


@st.composite
def _tasks(draw: st.DrawFn) -> list[Write]:
    key = draw(hostile_ids)
    ghost = _ghost(draw(tokens))
    claim = {
        "worker_id": ghost,
        "claim_id": "c1",
        "token_sha256": "0" * 64,
        "epoch": 1,
        "claimed_at": now_iso(),
        "deadline": now_iso(30),
    }
    base = {
        "task_id": key,
        "queue": QUEUE,
        "status": "pending",
        "spec": {"task_id": key, "queue": QUEUE},
        "attempt": 0,
        "max_attempts": 3,
        "epoch": 0,
        "created_at": now_iso(),
        "updated_at": now_iso(),
    }
    templates = [
        base,
        {**base, "status": "claimed", "attempt": 1, "epoch": 1, "claim": claim},  # claimed by an absent worker
        {**base, "status": "claimed", "attempt": 1, "epoch": 1, "claim": {**claim, "deadline": FAR_FUTURE}},
        {**base, "status": "claimed", "attempt": 1, "epoch": 1, "claim": {**claim, "worker_id": WORKERS[0]}},
        {**base, "status": "claimed", "attempt": 1, "epoch": 1},  # claimed without a claim
        {**base, "claim": claim},  # pending with a claim
        {**base, "status": "succeeded", "claim": claim},
        {**base, "attempt": 7, "max_attempts": 3},
        {**base, "visible_at": FAR_FUTURE},
        {**base, "queue": HOSTILE_QUEUE},
        {**base, "spec": "not a spec"},
    ]
    writes = [Write("kv", key, draw(record_bodies(templates)), bucket="tasks_bucket")]
    if draw(st.booleans()):  # and wake a worker for it, as a parent would
        notice = dumps({"task_id": key, "revision": 0, "epoch": 0})
        writes.append(Write("stream", PLACEHOLDER.notification_subject(QUEUE, key), notice))
    return writes


@st.composite
def _presence(draw: st.DrawFn) -> list[Write]:
    key = draw(hostile_ids | kv_keys)
    template = {
        "id": key,
        "role": "worker",
        "host": "elsewhere",
        "pid": 1,
        "started_at": now_iso(),
        "queues": [QUEUE],
        "capacity": 1,
        "inflight": 0,
        "version": "0",
        "instance": "i1",
    }
    return [
        Write(
            "kv", key, draw(record_bodies([template, {**template, "started_at": FAR_FUTURE}])), bucket="presence_bucket"
        )
    ]


@st.composite
def _roster(draw: st.DrawFn) -> list[Write]:
    """The reclaimer's lease (a ghost holder that never renews, with and without a TTL, maybe asked for by a
    phantom) and roster entries."""
    if draw(st.booleans()):
        holder = {"holder": draw(hostile_ids), "instance": "i1", "host": "elsewhere", "pid": 1, "since": now_iso()}
        headers = draw(st.sampled_from([{}, {"Nats-TTL": "3600s"}, {"Nats-TTL": "1s"}]))
        # ...ready, preferred (never asked), or asking itself on behalf of a phantom candidate
        phantom = {"holder": draw(hostile_ids), "instance": "ph", "host": "nowhere", "pid": 2}
        ghosts = [holder, {**holder, "ready": True}, {**holder, "preferred": True}, {**holder, "wanted_by": phantom}]
        return [Write("kv", "leader", draw(record_bodies(ghosts)), "roster_bucket", headers)]
    shape = draw(st.integers(0, 2))
    if shape == 1:
        # A forged departure of an honest worker (a DEL with the keeper's reason header), or its entry
        # rewritten under another id: followers must not lose the worker for good, nor reclaim its work.
        worker = draw(st.sampled_from(WORKERS))
        forged = {"id": draw(hostile_ids), "role": "worker", "host": "elsewhere", "pid": 1, "queues": [QUEUE]}
        deleted = {"KV-Operation": "DEL", "Corral-Left-Reason": draw(st.sampled_from(["expired", "graceful"]))}
        return [
            draw(
                st.sampled_from(
                    [
                        Write("kv", f"agent.{worker}", b"", "roster_bucket", deleted),
                        Write("kv", f"agent.{worker}", dumps(forged), "roster_bucket"),
                    ]
                )
            )
        ]
    key = draw(hostile_ids.map(lambda a: f"agent.{a}") | kv_keys)
    template = {"id": key.removeprefix("agent."), "role": "worker", "host": "elsewhere", "pid": 1, "queues": [QUEUE]}
    return [Write("kv", key, draw(record_bodies([template])), bucket="roster_bucket")]


LIMIT_KEYS = [
    f"slot.{QUEUE}.0",
    f"slot.{QUEUE}.1",
    f"slot.{QUEUE}.00",
    f"slot.{QUEUE}.01",
    f"slot.{QUEUE}.-1",
    f"slot.{QUEUE}.2",
    f"slot.{QUEUE}.99999",
    f"slot.{QUEUE}",
    f"slot.{QUEUE}.0.x",
    f"rate.{QUEUE}",
    f"rate.{QUEUE}.x",
    f"limit.{HOSTILE_QUEUE}",
    f"slot.{HOSTILE_QUEUE}.0",
    f"rate.{HOSTILE_QUEUE}",
]
"""Keys of the limits bucket a worker credential may write (``limit.{queue}`` of a served queue is the
provisioner's), canonical and not."""


@st.composite
def _limits(draw: st.DrawFn) -> list[Write]:
    key = draw(st.sampled_from(LIMIT_KEYS) | kv_keys)
    wall = time.time()
    holder: dict[str, Any] = {"task_id": HONEST, "epoch": 1, "worker_id": _ghost("s"), "at": now_iso()}
    templates: list[dict[str, Any]]
    if key.startswith("rate."):
        templates = [{"tat": wall, "recent": 0.0, "at": wall}, {"tat": wall + 10**9, "recent": 0.0, "at": wall}]
    elif key.startswith("limit."):
        templates = [
            {"queue": HOSTILE_QUEUE, "concurrency": 1, "rate": {"count": 1, "per": "s"}, "updated_at": now_iso()}
        ]
    else:
        templates = [
            holder,
            {**holder, "task_id": draw(hostile_ids)},
            {**holder, "at": now_iso(3600)},  # a holder from the future
            {**holder, "worker_id": WORKERS[0], "epoch": 10**6},
        ]
    return [Write("kv", key, draw(record_bodies(templates)), bucket="limits_bucket")]


@st.composite
def _schedules(draw: st.DrawFn) -> list[Write]:
    key = draw(hostile_ids | kv_keys)
    template = {
        "name": key,
        "cron": "* * * * * *",
        "timezone": "UTC",
        "task": {"queue": HOSTILE_QUEUE, "payload": None, "max_attempts": 1},
        "paused": False,
        "since": now_iso(),
        "updated_at": now_iso(),
        "last_tick": None,
    }
    templates = [
        template,
        {**template, "last_tick": FAR_FUTURE},
        {**template, "since": FAR_FUTURE},
        {**template, "cron": "61 * * * * *"},
        {**template, "timezone": "Mars/Olympus_Mons"},
    ]
    return [Write("kv", key, draw(record_bodies(templates)), bucket="schedules_bucket")]


@st.composite
def _registry(draw: st.DrawFn) -> list[Write]:
    ident = draw(hostile_ids)
    kind = draw(st.sampled_from(["session", "thread", "tag", "other"]))
    templates: list[dict[str, Any]]
    if kind == "session":
        templates = [{"id": ident, "agent_id": _ghost("a"), "status": "active", "started_at": now_iso()}]
    elif kind == "thread":
        templates = [{"thread": ident, "session_id": "hs", "agent_id": _ghost("a"), "reserved_at": now_iso()}]
    else:
        templates = [{"tag": ident, "agent_id": READER, "updated_at": now_iso()}]
    key = f"{kind}.{ident}" if kind != "other" else draw(kv_keys)
    return [Write("kv", key, draw(record_bodies(templates)), bucket="registry_bucket")]


@st.composite
def _blobs(draw: st.DrawFn) -> list[Write]:
    """Objects of the blob store (metadata and chunks, raw) and a pending task whose spec is a blob
    reference to one of them, to nothing, or with the wrong size or digest."""
    name = f"{draw(hostile_ids)}.spec.b1"
    nuid = draw(tokens)
    coded = base64.urlsafe_b64encode(name.encode()).decode()
    meta = {"name": name, "bucket": "B", "nuid": nuid, "size": 5, "chunks": 1, "digest": "SHA-256=" + "A" * 43 + "="}
    writes = [
        Write(
            "obj",
            f"M.{coded}",
            draw(record_bodies([meta, {**meta, "size": 10**12}, {**meta, "chunks": -1}])),
            bucket="blobs_bucket",
        ),
        Write("obj", f"C.{nuid}", draw(raw_bodies | st.just(b"hello")), bucket="blobs_bucket"),
    ]
    key = draw(hostile_ids)
    ref = {"name": draw(st.sampled_from([name, "absent.spec.b0"])), "size": 5, "digest": meta["digest"]}
    task = {
        "task_id": key,
        "queue": QUEUE,
        "status": "pending",
        "spec": None,
        "spec_blob": ref,
        "created_at": now_iso(),
        "updated_at": now_iso(),
    }
    writes.append(
        Write(
            "kv",
            key,
            draw(record_bodies([task, {**task, "spec_blob": {**ref, "size": 10**12}}])),
            bucket="tasks_bucket",
        )
    )
    writes.append(
        Write(
            "stream", PLACEHOLDER.notification_subject(QUEUE, key), dumps({"task_id": key, "revision": 0, "epoch": 0})
        )
    )
    return writes


# --- subjects ---------------------------------------------------------------------------------------


def _under(pattern: str, tails: st.SearchStrategy[list[str]]) -> st.SearchStrategy[str]:
    """Subjects under ``pattern`` (a ``prefix.>`` subject of Names), non-canonical ones included."""
    assert pattern.endswith(".>"), pattern
    return tails.map(lambda tail: ".".join([pattern[:-2], *tail]))


@st.composite
def _dispatch(draw: st.DrawFn) -> list[Write]:
    task = draw(hostile_ids | st.just(HONEST))
    canonical = st.sampled_from(["normal", "high", "low"]).map(
        lambda level: PLACEHOLDER.notification_subject(QUEUE, task, level)
    )
    odd = _under(
        PLACEHOLDER.dispatch_subjects,
        st.sampled_from([[QUEUE], [QUEUE, task, "x"], [QUEUE, task, "high", "x"], [HOSTILE_QUEUE, task], ["x"]]),
    )
    subject = draw(canonical | odd)
    template = {"task_id": task, "revision": 1, "epoch": 0, "visible_at": None}
    templates = [template, {**template, "visible_at": FAR_FUTURE}, {**template, "revision": 10**12, "epoch": 10**12}]
    return [Write("stream", subject, draw(record_bodies(templates)))]


@st.composite
def _results(draw: st.DrawFn) -> list[Write]:
    subject = PLACEHOLDER.results_subject(draw(st.just(PARENT) | hostile_ids))
    fake = {"task_id": HONEST, "queue": QUEUE, "status": "succeeded", "created_at": now_iso(), "updated_at": now_iso()}
    template = {"task_id": HONEST, "status": "succeeded", "revision": 1}
    templates = [template, {**template, "record": fake}, {**template, "status": "pending"}]
    return [Write("core", subject, draw(record_bodies(templates)))]


@st.composite
def _control(draw: st.DrawFn) -> list[Write]:
    subject = PLACEHOLDER.control_subject(draw(st.sampled_from(WORKERS) | hostile_ids))
    template = {"task_id": HONEST, "claim_id": "c1", "transition": "reclaimed"}
    return [Write("core", subject, draw(record_bodies([template, {**template, "transition": "cancelled"}])))]


EVENT_KINDS = ["progress", "turn_ended", "errored", "shut_down", "scope_sub_delegated"]


@st.composite
def _events(draw: st.DrawFn) -> list[Write]:
    sender = draw(st.sampled_from([CHILD, LISTENER]) | hostile_ids)
    kind = draw(st.sampled_from(EVENT_KINDS) | tokens)
    canonical = st.just(PLACEHOLDER.event_subject(LISTENER, sender, kind))
    odd = st.sampled_from(PLACEHOLDER.events_subjects).flatmap(
        lambda pattern: _under(pattern, st.lists(tokens, min_size=0, max_size=5))
    )
    subject = draw(canonical | odd)
    base: dict[str, Any] = {"id": f"ev{draw(tokens)}", "agent": CHILD, "at": now_iso(), "kind": kind}
    templates = [
        {**base, "kind": "progress", "message": "m", "fraction": 0.5},
        {**base, "kind": "turn_ended", "turn": 1, "summary": "s"},
        {**base, "kind": "errored", "message": "e"},
        {**base, "kind": "shut_down", "reason": "r"},
        {**base, "kind": "scope_sub_delegated", "sub_agent": draw(hostile_ids), "scope": ["x"]},
        {**base, "kind": "progress", "at": FAR_FUTURE},
    ]
    return [Write("stream", subject, draw(record_bodies(templates)))]


@st.composite
def _deadletters(draw: st.DrawFn) -> list[Write]:
    subject = PLACEHOLDER.deadletter_subject(draw(st.sampled_from(["dispatch", "events", "inbox"]) | tokens))
    template = {"source": "dispatch", "subject": "x", "reason": "r", "data": "d", "at": now_iso()}
    return [Write("stream", subject, draw(record_bodies([template])))]


MAIL_HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "Corral-Id",
            "Corral-From",
            "Corral-Tag",
            "Corral-Key",
            "Corral-Sent-At",
            "Corral-Ack-To",
            "Corral-Stream-To",
            "Corral-Stream",
            "Corral-Seq",
        ]
    ),
    st.sampled_from(
        ["", CHILD, "x" * 2000, FAR_FUTURE, "$JS.API.STREAM.DELETE.NS_inbox", "_INBOX.x", "_INBOX.*", "-1", "1e999"]
    )
    | tokens,
    max_size=4,
)


@st.composite
def _inbox(draw: st.DrawFn) -> list[Write]:
    sender = draw(st.sampled_from([CHILD, None]) | hostile_ids)
    ident = draw(hostile_ids)
    canonical = st.sampled_from(
        [
            PLACEHOLDER.inbox_message_subject(READER, sender, ident),
            PLACEHOLDER.inbox_keyed_subject(READER, sender, ident),
            PLACEHOLDER.tag_message_subject(TAG, sender, ident),
            PLACEHOLDER.tag_keyed_subject(TAG, sender, ident),
            PLACEHOLDER.tag_message_subject(draw(hostile_ids), sender, ident),
        ]
    )
    odd = _under(
        PLACEHOLDER.inbox_subjects,
        st.sampled_from([[READER], [READER, "m"], [READER, "z", "x", "y"], [READER, "m", "a", "b", "c"], ["tag", TAG]]),
    )
    body = draw(raw_bodies | st.text(max_size=50).map(str.encode) | bodies([{"text": "hi", "n": 1}]))
    return [Write("stream", draw(canonical | odd), body, headers=draw(MAIL_HEADERS))]


TARGETS: list[Target] = [
    Target(
        "tasks",
        ("tasks_bucket",),
        "task records under hostile ids on the served queue (valid, inconsistent, malformed), maybe notified",
        _tasks(),
    ),
    Target(
        "presence",
        ("presence_bucket",),
        "agent records under hostile ids and odd keys, without the TTL corral writes",
        _presence(),
    ),
    Target(
        "roster",
        ("roster_bucket",),
        "the reclaimer's lease held by ghosts (no TTL, a TTL of an hour, malformed, asked for by phantoms) and hostile "
        "roster entries",
        _roster(),
    ),
    Target(
        "limits",
        ("limits_bucket",),
        "slot holders (canonical and non-canonical keys, future holders), rate states, hostile queues' limits",
        _limits(),
    ),
    Target(
        "schedules",
        ("schedules_bucket",),
        "schedules under hostile names: valid ones on an unserved queue, bad cron, bad zone, future ticks",
        _schedules(),
    ),
    Target(
        "registry",
        ("registry_bucket",),
        "sessions, thread reservations, tag bindings under hostile ids, and odd keys",
        _registry(),
    ),
    Target(
        "dispatch",
        ("notification_subject", "dispatch_subjects"),
        "notifications for hostile and honest task ids at every level, and subjects no consumer filters",
        _dispatch(),
    ),
    Target(
        "results", ("results_subject",), "result pushes naming honest tasks to the honest parent and others", _results()
    ),
    Target(
        "control",
        ("control_subject",),
        "'your claim ended' hints naming honest tasks to the honest workers",
        _control(),
    ),
    Target(
        "events",
        ("event_subject", "events_subjects"),
        "events to the listening agent from its child, itself and strangers; subjects off the pattern",
        _events(),
    ),
    Target("deadletters", ("deadletter_subject",), "dead letters from known and unknown sources", _deadletters()),
    Target(
        "inbox",
        ("inbox_message_subject", "inbox_keyed_subject", "tag_message_subject", "tag_keyed_subject", "inbox_subjects"),
        "mail to the reading agent and its tag, keyed and not, with hostile headers; subjects off the pattern",
        _inbox(),
    ),
]

if hasattr(Names, "blobs_bucket"):  # the object store of large specs and results (issue 20, size rule)
    TARGETS.append(
        Target(
            "blobs",
            ("blobs_bucket",),
            "raw object metadata and chunks, and pending tasks whose spec refers to them, to nothing, or wrongly",
            _blobs(),
        )
    )

COVERED: list[Covered] = [
    Covered("dispatch_stream", "dispatch", "its subjects are the dispatch target's"),
    Covered("queue_filter", "dispatch", "the dispatch target writes inside and outside every level's filter"),
    Covered("queue_consumer", "dispatch", "the consumers read what the dispatch target writes"),
    Covered("notified_task", "dispatch", "parses the subjects the dispatch target writes"),
    Covered("events_stream", "events", "its subjects are the events and dead-letter targets'"),
    Covered("events_filter", "events", "the events target writes inside and outside the listener's filter"),
    Covered("events_consumer", "events", "the listener's durable consumer reads what the events target writes"),
    Covered("deadletter_filter", "deadletters", "the dead-letter target writes under it"),
    Covered("inbox_stream", "inbox", "its subjects are the inbox target's"),
    Covered("inbox_filter", "inbox", "the inbox target writes inside and outside the reader's filter"),
    Covered("tag_filter", "inbox", "the inbox target writes to a bound tag's queue"),
]

COVERAGE: dict[str, Target | Covered] = {
    **{member: target for target in TARGETS for member in target.members},
    **{entry.member: entry for entry in COVERED},
}
"""Every member of ``Names`` → how the adversary covers it."""

TARGETS_BY_NAME = {target.name: target for target in TARGETS}


def markdown() -> str:
    """The coverage table as docs/adversary.md shows it."""
    lines = ["| `Names` member | example name | covered by | hostile writes |", "|---|---|---|---|"]
    for member in names_members():
        entry = COVERAGE.get(member)
        if entry is None:
            lines.append(f"| `{member}` | | **not covered** | |")
            continue
        example = _example(member)
        if isinstance(entry, Target):
            lines.append(f"| `{member}` | `{example}` | target `{entry.name}` | {entry.writes} |")
        else:
            lines.append(f"| `{member}` | `{example}` | through target `{entry.by}` | {entry.why} |")
    return "\n".join(lines)


_EXAMPLE_ARGS: dict[str, tuple[Any, ...]] = {
    "notification_subject": (QUEUE, "T"),
    "queue_filter": (QUEUE,),
    "queue_consumer": (QUEUE,),
    "notified_task": ("ns.dispatch.q.T",),
    "control_subject": ("W",),
    "results_subject": ("P",),
    "event_subject": ("TO", "FROM", "KIND"),
    "events_filter": ("TO",),
    "events_consumer": ("AGENT",),
    "deadletter_subject": ("SOURCE",),
    "deadletter_filter": (),
    "inbox_message_subject": ("AGENT", "FROM", "ID"),
    "inbox_keyed_subject": ("AGENT", "FROM", "KEY"),
    "inbox_filter": ("AGENT",),
    "tag_message_subject": ("TAG", "FROM", "ID"),
    "tag_keyed_subject": ("TAG", "FROM", "KEY"),
    "tag_filter": ("TAG",),
}


def _example(member: str) -> str:
    names = Names("ns")
    value = getattr(names, member)
    if callable(value):
        args = _EXAMPLE_ARGS.get(member)
        if args is None:
            return "…"
        value = value(*args)
    return ", ".join(value) if isinstance(value, list) else str(value)
