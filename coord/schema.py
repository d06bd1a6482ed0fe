"""JSON Schemas of corral's wire, for workers and agents written in other languages.

Each :class:`WireSchema` is one kind of value or message: where it travels (a KV key or a NATS
subject), the JSON Schema of its JSON body (draft 2020-12, generated from the pydantic model in
validation mode: what corral accepts), and for messages the JSON Schema of the NATS headers it
carries. A mail body is opaque bytes, so the mail's schema is that of its headers.
:func:`wire_schemas` lists them all; :meth:`WireSchema.document` is one self-contained document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter

from coord.deadletter import DeadLetter
from coord.events.models import Event
from coord.limits.models import QueueLimits, RateState, SlotHolder
from coord.mailbox.models import H_ACK_TO, H_FROM, H_ID, H_SENT, H_STREAM_TO, H_TAG
from coord.presence.models import _Record as PresenceRecord
from coord.streams import MSG_ID
from coord.tasks.index import INDEX_HEADER
from coord.tasks.models import Notification, ResultNotice, TaskRecord, Transition
from coord.wire import Result, Spec

__all__ = ["DRAFT", "WireSchema", "wire_schemas"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"
"""The JSON Schema dialect of every document."""

_TOKEN = "^[A-Za-z0-9_-]{1,128}$"

_TRACE = {
    "traceparent": {"type": "string", "description": "W3C Trace Context of the sender's span (optional)."},
    "tracestate": {"type": "string", "description": "W3C Trace Context vendor state (optional)."},
    "baggage": {"type": "string", "description": "W3C Baggage (optional)."},
}
"""Headers any corral message may carry: the trace context (coord.tracing)."""

_NOTIFICATION_ID = "{task_id}:{epoch}:{revision}, plus a suffix when re-sent (dedupe id)."


def _headers(required: dict[str, dict[str, Any]], optional: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**required, **optional, **_TRACE},
        "required": sorted(required),
        "additionalProperties": {"type": "string"},
    }


@dataclass(frozen=True)
class WireSchema:
    """One value or message of the protocol: its name, where it travels, its body's and headers' schemas."""

    name: str
    """The name ``corral schema NAME`` takes."""
    description: str
    """What it is, in one sentence."""
    where: str
    """The KV bucket and key, or the NATS subject, it travels on (``{ns}`` is the namespace)."""
    body: dict[str, Any]
    """The JSON Schema of its body."""
    headers: dict[str, Any] | None = None
    """The JSON Schema of its NATS headers (an object of strings): for a message, and for the KV writes
    whose headers a foreign writer must send (task records, presence, limits); None otherwise."""

    def document(self) -> dict[str, Any]:
        """One JSON Schema document: the body's schema, plus ``x-corral-where`` and ``x-corral-headers``."""
        doc: dict[str, Any] = {"$schema": DRAFT, **self.body, "description": self.description}
        doc["x-corral-where"] = self.where
        if self.headers is not None:
            doc["x-corral-headers"] = self.headers
        return doc


def _model(model: type[BaseModel] | Any, title: str, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = TypeAdapter(model).json_schema(mode="validation")
    schema["title"] = title
    for name in drop:  # fields that are not stored (e.g. the KV revision, read from the entry)
        schema.get("properties", {}).pop(name, None)
    return schema


def _task_record() -> dict[str, Any]:
    return _model(TaskRecord, "TaskRecord", drop=("revision",))


_CAS = {
    "Nats-Expected-Last-Subject-Sequence": {
        "type": "string",
        "pattern": "^[0-9]+$",
        "description": "The revision this write replaces (0: the key must not exist); every write is a CAS.",
    }
}
"""The header of every KV write corral makes (docs/protocol-spec.md, "Compare-and-set")."""

_TASK_WRITE = _headers(
    {
        **_CAS,
        INDEX_HEADER: {
            "type": "string",
            "description": "JSON array [queue, status, epoch, attempt, worker_id|null, claim_id|null, "
            "deadline_ms|null, visible_at_ms|null, updated_at_ms] of the record written (Unix ms).",
        },
    },
    {"Nats-TTL": {"type": "string", "description": "On a finished record only: the retention, e.g. 604800s."}},
)
"""Headers of every write to the tasks bucket."""

_PRESENCE_WRITE = _headers(
    {**_CAS, "Nats-TTL": {"type": "string", "description": "The presence TTL in whole seconds, e.g. 3s."}},
    {"KV-Operation": {"type": "string", "enum": ["DEL"], "description": "Only on a graceful leave (empty body)."}},
)
"""Headers of every write to the presence bucket."""

_CONTROL: dict[str, Any] = {
    "title": "Control",
    "type": "object",
    "properties": {
        "task_id": {"type": "string", "pattern": _TOKEN, "description": "The task whose claim ended elsewhere."},
        "claim_id": {"type": "string", "description": "The claim that ended."},
        "transition": {
            "type": "string",
            "enum": [t.value for t in Transition],
            "description": "What ended it (cancelled, reclaimed, ...).",
        },
    },
    "required": ["task_id", "claim_id", "transition"],
}
"""The control hint (coord/tasks/effects.py writes it with json.dumps; there is no model)."""


def wire_schemas() -> list[WireSchema]:
    """Every schema of the protocol, in the order a task meets them, then events, mail, presence,
    the control hint, dead letters and queue limits."""
    notification = _model(Notification, "Notification")
    push = _model(ResultNotice, "ResultNotice")
    for schema in (notification, push):  # an inlined record is a stored record: no revision either
        schema.get("$defs", {}).get("TaskRecord", {}).get("properties", {}).pop("revision", None)
    return [
        WireSchema(
            "spec",
            "What a task is: the Spec a parent stores as the task record's `spec`; a worker runs it.",
            "KV {ns}_tasks, key {task_id}, field `spec` of the TaskRecord",
            _model(Spec, "Spec"),
        ),
        WireSchema(
            "result",
            "How a task ended, as its worker reports it (stored as the record's `result`).",
            "KV {ns}_tasks, key {task_id}, field `result` of the TaskRecord",
            _model(Result, "Result"),
        ),
        WireSchema(
            "task-record",
            "One task as stored: the single source of truth, its journal included.",
            "KV {ns}_tasks, key {task_id}",
            _task_record(),
            _TASK_WRITE,
        ),
        WireSchema(
            "notification",
            "A wake-up hint that a task is pending on a queue: a worker claims from the stored record.",
            "JetStream {ns}_dispatch, subject {ns}.dispatch.{queue}.{task_id}",
            notification,
            _headers({MSG_ID: {"type": "string", "description": _NOTIFICATION_ID}}, {}),
        ),
        WireSchema(
            "result-push",
            "A hint to a parent that one of its tasks ended: the parent reads the stored record.",
            "core NATS, subject {ns}.results.{parent}",
            push,
            _headers({}, {}),
        ),
        WireSchema(
            "event",
            "A lifecycle event from a child agent to its parent (one of five kinds, by `kind`).",
            "JetStream {ns}_events, subject {ns}.events.{to}.{sender}.{kind}",
            _model(Event, "Event"),
            _headers({MSG_ID: {"type": "string", "description": "{to}:{event id} (dedupe id)."}}, {}),
        ),
        WireSchema(
            "mail",
            "A mailbox message; its body is opaque bytes, so this is the schema of its headers.",
            "JetStream {ns}_inbox, subject {ns}.inbox.{agent}.(m|k).{sender|_}.{id|key} "
            "or {ns}.inbox.tag.{tag}.(m|k).{sender|_}.{id|key}",
            {
                **_headers(
                    {
                        H_ID: {"type": "string", "pattern": _TOKEN, "description": "The message id."},
                        H_SENT: {"type": "string", "format": "date-time", "description": "Send time (UTC)."},
                        MSG_ID: {"type": "string", "description": "Dedupe id (the message id)."},
                    },
                    {
                        H_FROM: {"type": "string", "pattern": _TOKEN, "description": "The sender, if it said."},
                        H_TAG: {"type": "string", "pattern": _TOKEN, "description": "The tag it was sent to."},
                        H_ACK_TO: {"type": "string", "description": "Where the recipient acknowledges to."},
                        H_STREAM_TO: {"type": "string", "description": "Where a streamed reply goes."},
                        "Nats-TTL": {"type": "string", "description": "The message's time to live, if any."},
                    },
                ),
                "title": "Mail headers",
            },
        ),
        WireSchema(
            "presence",
            "An agent's presence: who it is, what it takes, and the instance that wrote it.",
            "KV {ns}_presence, key {agent id}",
            _model(PresenceRecord, "Presence"),
            _PRESENCE_WRITE,
        ),
        WireSchema(
            "control",
            "A hint to a worker that one of its claims ended elsewhere: it checks the record, then stops the run.",
            "core NATS, subject {ns}.control.{worker_id}",
            _CONTROL,
            _headers({}, {}),
        ),
        WireSchema(
            "dead-letter",
            "A message or result nobody could process (source late-result: a result refused as stale).",
            "JetStream {ns}_events, subject {ns}.deadletter.{source}",
            _model(DeadLetter, "DeadLetter"),
            _headers({}, {}),
        ),
        WireSchema(
            "queue-limits",
            "A queue's fleet-wide limits (no key: no limit); a worker follows them before each claim.",
            "KV {ns}_limits, key limit.{queue}",
            _model(QueueLimits, "QueueLimits"),
            _headers(_CAS, {}),
        ),
        WireSchema(
            "limit-slot",
            "A concurrency slot held by a running claim (a tombstone while free).",
            "KV {ns}_limits, key slot.{queue}.{i} (0 <= i < concurrency)",
            _model(SlotHolder, "SlotHolder"),
            _headers(_CAS, {}),
        ),
        WireSchema(
            "limit-rate",
            "A queue's rate state (GCRA), advanced by compare-and-set before a claim.",
            "KV {ns}_limits, key rate.{queue}",
            _model(RateState, "RateState"),
            _headers(_CAS, {}),
        ),
    ]
