"""Where things live on NATS for one namespace: every bucket, stream, consumer and subject name.

Nothing else in corral spells a subject: services ask :class:`Names` (or, for a bucket's own keys,
:func:`kv_subject_prefix`).
"""

from __future__ import annotations

from dataclasses import dataclass

from coord.ids import validate_id, validate_namespace
from coord.priority import Priority, as_priority

__all__ = [
    "ANONYMOUS_SENDER",
    "DEFAULT_REPLY_PREFIX",
    "JS_API_PREFIX",
    "TAG_TOKEN",
    "Names",
    "consumer_next_subject",
    "direct_get_subject",
    "is_reply_subject",
    "kv_stream_name",
    "kv_subject_prefix",
    "object_stream_name",
    "object_subject_prefix",
    "stream_api_subject",
]

ANONYMOUS_SENDER = "_"
"""Sender token of a mailbox message sent without a sender id."""

TAG_TOKEN = "tag"
"""Token that marks a tag's waiting queue in inbox subjects (``{ns}.inbox.tag.{tag}...``)."""


JS_API_PREFIX = "$JS.API"
"""Prefix of the JetStream API subjects (without a domain)."""


def direct_get_subject(stream: str, api_prefix: str = JS_API_PREFIX) -> str:
    """Subject of a batched direct get from ``stream`` (the request names the subjects in its body)."""
    return f"{api_prefix}.DIRECT.GET.{stream}"


DEFAULT_REPLY_PREFIX = "_INBOX."
"""Prefix of the reply subjects corral hands out (a connection's inbox prefix and a dot)."""


def is_reply_subject(subject: str, prefix: str = DEFAULT_REPLY_PREFIX) -> bool:
    """True if ``subject`` is a reply subject corral could have handed out under ``prefix``.

    That is: it starts with ``prefix`` and has something after it, and it is one literal subject
    (no empty token, no ``*`` or ``>`` token, no whitespace or control characters). Anything else
    (a JetStream API subject, another agent's subject, a wildcard) is not one.
    """
    if not isinstance(subject, str) or not prefix or not subject.startswith(prefix) or len(subject) <= len(prefix):
        return False
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in subject):
        return False
    return all(token and token not in ("*", ">") for token in subject.split("."))


def kv_stream_name(bucket: str) -> str:
    """The stream behind KV bucket ``bucket``."""
    return f"KV_{bucket}"


def kv_subject_prefix(bucket: str) -> str:
    """Prefix of the subjects of ``bucket``'s keys (``$KV.{bucket}.``)."""
    return f"$KV.{bucket}."


def object_stream_name(bucket: str) -> str:
    """The stream behind Object Store bucket ``bucket``."""
    return f"OBJ_{bucket}"


def object_subject_prefix(bucket: str) -> str:
    """Prefix of the subjects of ``bucket``'s chunks and metadata (``$O.{bucket}.``)."""
    return f"$O.{bucket}."


def stream_api_subject(operation: str, stream: str) -> str:
    """The JetStream API subject of ``operation`` (``CREATE``, ``INFO``, ``UPDATE``…) on ``stream``."""
    return f"{JS_API_PREFIX}.STREAM.{operation}.{stream}"


def consumer_next_subject(stream: str, consumer: str, api_prefix: str = JS_API_PREFIX) -> str:
    """Subject of a pull request ("the next messages") to ``consumer`` of ``stream``."""
    return f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"


@dataclass(frozen=True)
class Names:
    """Names of every bucket, stream and subject of one corral namespace."""

    namespace: str
    """The validated namespace; prefixes everything below."""

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)

    # --- buckets and streams -------------------------------------------------------------
    @property
    def presence_bucket(self) -> str:
        """KV bucket of live agents (per-key TTL, expiry markers)."""
        return f"{self.namespace}_presence"

    @property
    def tasks_bucket(self) -> str:
        """KV bucket of task records: the single source of truth."""
        return f"{self.namespace}_tasks"

    @property
    def registry_bucket(self) -> str:
        """KV bucket of sessions, thread reservations and tag bindings."""
        return f"{self.namespace}_registry"

    @property
    def schedules_bucket(self) -> str:
        """KV bucket of recurring schedules: one key per schedule (definition and last submitted tick)."""
        return f"{self.namespace}_schedules"

    @property
    def limits_bucket(self) -> str:
        """KV bucket of per-queue fleet-wide limits: each queue's limit, its concurrency slots, its rate state."""
        return f"{self.namespace}_limits"

    @property
    def roster_bucket(self) -> str:
        """KV bucket of the active reclaimer's lease (key ``leader``, see :mod:`coord.lease`) and the roster of
        present agents it keeps (docs/scale.md)."""
        return f"{self.namespace}_roster"

    @property
    def blobs_bucket(self) -> str:
        """Object Store bucket of task specs and results too large for their record (docs/tasks.md)."""
        return f"{self.namespace}_blobs"

    @property
    def dispatch_stream(self) -> str:
        """Work-queue stream of "task T at revision R is ready" notifications."""
        return f"{self.namespace}_dispatch"

    @property
    def events_stream(self) -> str:
        """Limits stream of lifecycle events and dead letters."""
        return f"{self.namespace}_events"

    @property
    def inbox_stream(self) -> str:
        """Stream of agent mailboxes (one message per subject: keyed messages replace older ones)."""
        return f"{self.namespace}_inbox"

    # --- dispatch ------------------------------------------------------------------------
    @property
    def dispatch_subjects(self) -> str:
        """Every notification subject of the namespace."""
        return f"{self.namespace}.dispatch.>"

    def notification_subject(self, queue: str, task_id: str, priority: Priority | str = Priority.NORMAL) -> str:
        """Subject of the notification of ``task_id`` on ``queue`` (one subject per task, so the stream
        itself says whether a task's notification is still queued). Normal priority has no level
        token (``{ns}.dispatch.{queue}.{task}``); the other levels add one after the task id, so the
        task id keeps its token position (see :meth:`notified_task`)."""
        subject = f"{self.namespace}.dispatch.{validate_id(queue, 'queue')}.{validate_id(task_id, 'task_id')}"
        level = as_priority(priority)
        return subject if level is Priority.NORMAL else f"{subject}.{level.value}"

    def notified_task(self, subject: str) -> str | None:
        """The task id a notification subject names (any level), or None if it is not one."""
        tokens = subject.split(".")
        if len(tokens) in (4, 5) and tokens[0] == self.namespace and tokens[1] == "dispatch":
            return tokens[3]
        return None

    def queue_filter(self, queue: str, priority: Priority | str = Priority.NORMAL) -> str:
        """Subjects of every notification on ``queue`` at ``priority`` (what that level's consumer takes)."""
        subjects = f"{self.namespace}.dispatch.{validate_id(queue, 'queue')}.*"
        level = as_priority(priority)
        return subjects if level is Priority.NORMAL else f"{subjects}.{level.value}"

    def queue_consumer(self, queue: str, priority: Priority | str = Priority.NORMAL) -> str:
        """Durable pull consumer shared by the workers of ``queue`` for ``priority``: ``q-{queue}`` for
        normal, ``q{level}-{queue}`` (``qhigh-``, ``qlow-``) for the others. No queue name can make one
        level's name equal another's: the second character is ``-`` only for normal."""
        level = as_priority(priority)
        prefix = "q" if level is Priority.NORMAL else f"q{level.value}"
        return f"{prefix}-{validate_id(queue, 'queue')}"

    def control_subject(self, worker: str) -> str:
        """Core-NATS subject where a worker hears that one of its claims was taken away (cancel, reclaim)."""
        return f"{self.namespace}.control.{validate_id(worker, 'worker')}"

    def results_subject(self, parent: str) -> str:
        """Core-NATS subject where results are pushed to the submitting parent."""
        return f"{self.namespace}.results.{validate_id(parent, 'parent')}"

    # --- events stream -------------------------------------------------------------------
    @property
    def events_subjects(self) -> list[str]:
        """Every subject of the events stream.

        ``{ns}.journal.>`` is retired (journals now live in the task records); it stays so that a
        stream provisioned by an earlier version still matches. Nothing publishes there.
        """
        ns = self.namespace
        return [f"{ns}.events.>", f"{ns}.journal.>", f"{ns}.deadletter.>"]

    def event_subject(self, to: str, sender: str, kind: str) -> str:
        """Subject of a lifecycle event from ``sender`` to ``to``."""
        return f"{self.namespace}.events.{validate_id(to, 'to')}.{validate_id(sender, 'from')}.{kind}"

    def events_filter(self, to: str | None = None) -> str:
        """Subjects of the events sent to ``to`` (to anyone when None)."""
        if to is None:
            return f"{self.namespace}.events.>"
        return f"{self.namespace}.events.{validate_id(to, 'agent')}.>"

    def events_consumer(self, agent: str) -> str:
        """Durable consumer holding the position of ``agent``'s event listener."""
        return f"events-{validate_id(agent, 'agent')}"

    def deadletter_subject(self, source: str) -> str:
        """Subject where malformed messages from ``source`` (e.g. ``dispatch``) are recorded."""
        return f"{self.namespace}.deadletter.{validate_id(source, 'source')}"

    def deadletter_filter(self, source: str | None = None) -> str:
        """Subjects of the dead letters from ``source`` (from every source when None)."""
        return f"{self.namespace}.deadletter.{'*' if source is None else validate_id(source, 'source')}"

    # --- mailboxes -----------------------------------------------------------------------
    @property
    def inbox_subjects(self) -> str:
        """Every subject of the inbox stream."""
        return f"{self.namespace}.inbox.>"

    # Every mailbox subject names its sender (ANONYMOUS when none is given), so NATS permissions can
    # bind it to the sender's credential: {ns}.inbox.{agent}.{m|k}.{from}.{id|key}, and
    # {ns}.inbox.tag.{tag}.{m|k}.{from}.{id|key} for messages waiting for a tag.
    def inbox_message_subject(self, agent: str, sender: str | None, message_id: str) -> str:
        """Subject of one unkeyed mailbox message from ``sender`` to ``agent``."""
        return f"{self._inbox(agent)}.m.{_sender(sender)}.{validate_id(message_id, 'id')}"

    def inbox_keyed_subject(self, agent: str, sender: str | None, key: str) -> str:
        """Subject of a keyed mailbox message (the latest from this sender under ``key`` wins)."""
        return f"{self._inbox(agent)}.k.{_sender(sender)}.{validate_id(key, 'key')}"

    def inbox_filter(self, agent: str) -> str:
        """Subjects of every message in ``agent``'s inbox."""
        return f"{self._inbox(agent)}.*.*.*"

    def tag_message_subject(self, tag: str, sender: str | None, message_id: str) -> str:
        """Subject of an unkeyed message from ``sender`` waiting for whoever binds ``tag``."""
        return f"{self._tag_queue(tag)}.m.{_sender(sender)}.{validate_id(message_id, 'id')}"

    def tag_keyed_subject(self, tag: str, sender: str | None, key: str) -> str:
        """Subject of a keyed message from ``sender`` waiting for whoever binds ``tag``."""
        return f"{self._tag_queue(tag)}.k.{_sender(sender)}.{validate_id(key, 'key')}"

    def tag_filter(self, tag: str) -> str:
        """Subjects of every message waiting for ``tag``."""
        return f"{self._tag_queue(tag)}.*.*.*"

    def _inbox(self, agent: str) -> str:
        return f"{self.namespace}.inbox.{validate_id(agent, 'agent')}"

    def _tag_queue(self, tag: str) -> str:
        return f"{self.namespace}.inbox.{TAG_TOKEN}.{validate_id(tag, 'tag')}"


def _sender(sender: str | None) -> str:
    return ANONYMOUS_SENDER if sender is None else validate_id(sender, "sender")
