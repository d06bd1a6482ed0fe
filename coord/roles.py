"""What each corral role may publish and subscribe to on NATS: :func:`permissions_for`.

A pure table, turned into nats-server ``authorization`` users by ``corral auth`` and checked by the
tests against a real server. The roles (docs/security.md says why each needs what it gets):

- ``provisioner``: the operator; everything (creates, updates and deletes streams; sets queue limits).
- ``parent``: submits tasks and reads their results (a :class:`dispatch.Dispatcher`, with its
  embedded reclaimer): writes task records and notifications, creates the consumers of a queue it
  submits to, hears its own results subject, tells workers that a claim was taken away, gives back
  the concurrency slots of the claims its reclaimer takes back, deletes notifications no worker
  will be given.
- ``worker``: takes work from its queues and reports: pulls from and acknowledges the queues'
  consumers (never creates or updates one), writes task records (claims, heartbeats,
  outcomes), retry notifications and result pushes; its own presence key only; takes
  concurrency slots and reserves start times under its queues' limits (never sets a limit).
- ``reclaimer``: gives up on departed workers' claims: writes task records and
  notifications, publishes on workers' control subjects, gives back their concurrency slots,
  deletes notifications no worker will be given (only these two roles delete dispatch messages).
- ``scheduler``: runs recurring schedules: writes the schedules bucket (definitions and the last
  submitted tick), task records and notifications; hears no results (its tasks have no parent).
- ``observer``: reads everything of the namespace, writes nothing.
- ``agent``: mail, lifecycle events and the session registry, always as itself.

What no non-provisioner may do: create, update, purge or delete a stream, delete a durable
consumer, or write a presence key, event or mail under another agent's name. Some rules are not
expressible as subject permissions (a worker may write any task record of its namespace, not only
the ones it holds); docs/security.md says what protects those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from coord.ids import validate_id
from coord.limits.models import RATE_PREFIX, SLOT_PREFIX
from coord.naming import Names, kv_stream_name, kv_subject_prefix, object_stream_name, object_subject_prefix

__all__ = ["INBOX_ROOT", "Permissions", "Role", "inbox_prefix", "permissions_for"]

INBOX_ROOT = "_INBOX"
"""Root of every reply subject corral hands out (nats-py's default inbox prefix)."""


class Role(StrEnum):
    """The roles a credential can hold (one credential may hold several)."""

    provisioner = "provisioner"
    parent = "parent"
    worker = "worker"
    reclaimer = "reclaimer"
    scheduler = "scheduler"
    observer = "observer"
    agent = "agent"


@dataclass
class Permissions:
    """Subjects a credential may publish to and subscribe to (nats-server semantics: deny wins)."""

    publish_allow: list[str] = field(default_factory=list)
    publish_deny: list[str] = field(default_factory=list)
    subscribe_allow: list[str] = field(default_factory=list)

    def add(self, other: Permissions) -> None:
        """Grant what ``other`` grants as well (denies are kept from both)."""
        for mine, theirs in (
            (self.publish_allow, other.publish_allow),
            (self.publish_deny, other.publish_deny),
            (self.subscribe_allow, other.subscribe_allow),
        ):
            mine.extend(s for s in theirs if s not in mine)

    def as_config(self) -> dict[str, object]:
        """The ``permissions`` block of a nats-server user."""
        publish: dict[str, list[str]] = {"allow": self.publish_allow}
        if self.publish_deny:
            publish["deny"] = self.publish_deny
        return {"publish": publish, "subscribe": {"allow": self.subscribe_allow}}


def inbox_prefix(names: Names, identity: str) -> str:
    """The reply-subject prefix of ``identity``'s connections in the namespace (``_INBOX.{ns}.{id}``).

    Replies (records read, acknowledgements) go only to the connection that asked: each credential
    may subscribe to its own prefix alone.
    """
    return f"{INBOX_ROOT}.{names.namespace}.{validate_id(identity, 'identity')}"


def _kv_buckets(names: Names) -> list[str]:
    return [
        names.presence_bucket,
        names.tasks_bucket,
        names.registry_bucket,
        names.schedules_bucket,
        names.limits_bucket,
        names.roster_bucket,
    ]


def _streams(names: Names) -> list[str]:
    return [
        *(kv_stream_name(b) for b in _kv_buckets(names)),
        object_stream_name(names.blobs_bucket),
        names.dispatch_stream,
        names.events_stream,
        names.inbox_stream,
    ]


def _reader(names: Names, identity: str) -> Permissions:
    """What every role needs to read the namespace: stream info, gets, watches and its own replies."""
    streams = _streams(names)
    kv_streams = [kv_stream_name(b) for b in _kv_buckets(names)] + [object_stream_name(names.blobs_bucket)]
    publish = ["$JS.API.INFO"]
    for stream in streams:
        publish += [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            # ephemeral (ordered) consumers for watches and snapshots (the unnamed form: the server
            # refuses a durable name on it)
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.INFO.{stream}.*",
        ]
        if stream != names.dispatch_stream:
            # the named form creates and UPDATES durables too: never on the dispatch stream, whose
            # durable consumers are the queues' (a worker could re-point one and starve its queue)
            publish.append(f"$JS.API.CONSUMER.CREATE.{stream}.>")
    # Snapshots and blob reads delete their ephemeral consumer when done; these streams hold no durable one.
    publish += [f"$JS.API.CONSUMER.DELETE.{stream}.*" for stream in kv_streams]
    publish += ["$JS.FC.>"]  # flow-control answers of push consumers
    prefix = inbox_prefix(names, identity)
    return Permissions(publish_allow=publish, subscribe_allow=[f"{prefix}.>"])


def _task_writer(names: Names) -> Permissions:
    ns = names.namespace
    return Permissions(
        publish_allow=[
            f"{kv_subject_prefix(names.tasks_bucket)}>",
            # large specs and results (a blob is only used once a record's CAS references it)
            f"{object_subject_prefix(names.blobs_bucket)}>",
            f"{ns}.dispatch.>",
            f"{ns}.deadletter.*",
        ]
    )


def _notification_sweeper(names: Names) -> Permissions:
    """Deletes dispatch messages no worker will be given (the reclaimer's sweep, also inside a parent's
    dispatcher); workers and schedulers never delete a notification."""
    return Permissions(publish_allow=[f"$JS.API.STREAM.MSG.DELETE.{names.dispatch_stream}"])


def _slot_keeper(names: Names) -> Permissions:
    """Gives back concurrency slots whose claims are over (the reclaimer, also inside a parent's dispatcher)."""
    return Permissions(publish_allow=[f"{kv_subject_prefix(names.limits_bucket)}{SLOT_PREFIX}.>"])


def _lease_holder(names: Names) -> Permissions:
    """Campaigns for the reclaimer's lease and, holding it, keeps the roster (a reclaimer, also inside a parent)."""
    return Permissions(publish_allow=[f"{kv_subject_prefix(names.roster_bucket)}>"])


def _worker(names: Names, identity: str) -> Permissions:
    ns = names.namespace
    dispatch = names.dispatch_stream
    granted = _task_writer(names)
    granted.add(_slot_keeper(names))
    # takes slots and reserves start times under its queues' limits; never sets a limit
    granted.add(Permissions(publish_allow=[f"{kv_subject_prefix(names.limits_bucket)}{RATE_PREFIX}.>"]))
    granted.add(
        Permissions(
            publish_allow=[
                f"{kv_subject_prefix(names.presence_bucket)}{identity}",
                f"{ns}.results.*",
                # the shared per-queue durable consumers: fetch, acknowledge (never create: in NATS a
                # create is also an update, so a worker could re-point a queue's consumer; parents and
                # the provisioner create them). Subject wildcards match whole tokens, so not "q-*".
                f"$JS.API.CONSUMER.MSG.NEXT.{dispatch}.*",
                f"$JS.ACK.{dispatch}.>",
            ],
            subscribe_allow=[names.control_subject(identity)],
        )
    )
    return granted


def _parent(names: Names, identity: str) -> Permissions:
    granted = _task_writer(names)
    granted.add(_slot_keeper(names))
    granted.add(_lease_holder(names))
    granted.add(_notification_sweeper(names))
    granted.add(
        Permissions(
            publish_allow=[
                f"{names.namespace}.control.*",
                # the consumers of a queue it submits to first (coord.consumer.create_queue_consumers)
                f"$JS.API.CONSUMER.DURABLE.CREATE.{names.dispatch_stream}.*",
            ],
            subscribe_allow=[names.results_subject(identity)],
        )
    )
    return granted


def _reclaimer(names: Names) -> Permissions:
    granted = _task_writer(names)
    granted.add(_slot_keeper(names))
    granted.add(_lease_holder(names))
    granted.add(_notification_sweeper(names))
    granted.add(Permissions(publish_allow=[f"{names.namespace}.control.*"]))
    return granted


def _scheduler(names: Names) -> Permissions:
    granted = _task_writer(names)
    granted.add(Permissions(publish_allow=[f"{kv_subject_prefix(names.schedules_bucket)}>"]))
    return granted


def _agent(names: Names, identity: str) -> Permissions:
    ns = names.namespace
    events, inbox = names.events_stream, names.inbox_stream
    return Permissions(
        publish_allow=[
            f"{kv_subject_prefix(names.presence_bucket)}{identity}",
            f"{kv_subject_prefix(names.registry_bucket)}>",
            # mail and events name their sender in the subject: only as itself ...
            f"{ns}.inbox.*.m.{identity}.*",
            f"{ns}.inbox.*.k.{identity}.*",
            f"{ns}.inbox.tag.*.m.{identity}.*",
            f"{ns}.inbox.tag.*.k.{identity}.*",
            # ... except into its own inbox, where binding a tag moves what waited for it
            f"{ns}.inbox.{identity}.>",
            f"{ns}.events.*.{identity}.*",
            f"{ns}.deadletter.*",
            f"$JS.API.STREAM.MSG.DELETE.{inbox}",
            # acknowledgements and streamed replies to whoever asked, in this namespace only
            f"{INBOX_ROOT}.{ns}.>",
            # its own event listener's durable consumer
            f"$JS.API.CONSUMER.DURABLE.CREATE.{events}.{names.events_consumer(identity)}",
            f"$JS.API.CONSUMER.CREATE.{events}.{names.events_consumer(identity)}.>",
            f"$JS.API.CONSUMER.INFO.{events}.{names.events_consumer(identity)}",
            f"$JS.API.CONSUMER.MSG.NEXT.{events}.{names.events_consumer(identity)}",
            f"$JS.ACK.{events}.{names.events_consumer(identity)}.>",
        ]
    )


_NEVER = [
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.RESTORE.>",
    "$JS.API.STREAM.SNAPSHOT.>",
]
"""Denied to every role but the provisioner, whatever else it is granted."""


def permissions_for(names: Names, identity: str, roles: set[Role] | frozenset[Role]) -> Permissions | None:
    """What a credential for ``identity`` holding ``roles`` may do in the namespace (None: everything).

    ``identity`` is the agent, worker or parent id the credential is bound to: presence, mail and
    events can only be written under that name, and only its own control or results subject heard.
    """
    validate_id(identity, "identity")
    if Role.provisioner in roles:
        return None
    granted = _reader(names, identity)
    for role in sorted(roles):
        if role is Role.worker:
            granted.add(_worker(names, identity))
        elif role is Role.parent:
            granted.add(_parent(names, identity))
        elif role is Role.reclaimer:
            granted.add(_reclaimer(names))
        elif role is Role.scheduler:
            granted.add(_scheduler(names))
        elif role is Role.agent:
            granted.add(_agent(names, identity))
    granted.publish_deny = list(_NEVER)
    return granted
