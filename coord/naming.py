"""Where things live on NATS for one namespace: bucket, stream and subject names."""

from __future__ import annotations

from dataclasses import dataclass

from coord.ids import validate_id, validate_namespace

__all__ = ["Names"]


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
    def dispatch_stream(self) -> str:
        """Work-queue stream of "task T at revision R is ready" notifications."""
        return f"{self.namespace}_dispatch"

    @property
    def events_stream(self) -> str:
        """Limits stream of lifecycle events, task journals and dead letters."""
        return f"{self.namespace}_events"

    @property
    def inbox_stream(self) -> str:
        """Stream of agent mailboxes (one message per subject: keyed messages replace older ones)."""
        return f"{self.namespace}_inbox"

    # --- subjects ------------------------------------------------------------------------
    def dispatch_subject(self, queue: str) -> str:
        """Subject of notifications for ``queue``."""
        return f"{self.namespace}.dispatch.{validate_id(queue, 'queue')}"

    def journal_subject(self, task_id: str) -> str:
        """Subject of the per-task journal."""
        return f"{self.namespace}.journal.{validate_id(task_id, 'task_id')}"

    def event_subject(self, to: str, sender: str, kind: str) -> str:
        """Subject of a lifecycle event from ``sender`` to ``to``."""
        return f"{self.namespace}.events.{validate_id(to, 'to')}.{validate_id(sender, 'from')}.{kind}"

    def deadletter_subject(self, source: str) -> str:
        """Subject where malformed messages from ``source`` (e.g. ``dispatch``) are recorded."""
        return f"{self.namespace}.deadletter.{validate_id(source, 'source')}"

    def results_subject(self, parent: str) -> str:
        """Core-NATS subject where results are pushed to the submitting parent."""
        return f"{self.namespace}.results.{validate_id(parent, 'parent')}"

    def inbox_message_subject(self, agent: str, message_id: str) -> str:
        """Subject of one unkeyed mailbox message."""
        return f"{self.namespace}.inbox.{validate_id(agent, 'agent')}.m.{validate_id(message_id, 'id')}"

    def inbox_keyed_subject(self, agent: str, key: str) -> str:
        """Subject of a keyed mailbox message (latest wins)."""
        return f"{self.namespace}.inbox.{validate_id(agent, 'agent')}.k.{validate_id(key, 'key')}"
