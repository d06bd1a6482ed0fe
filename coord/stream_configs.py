"""A namespace's buckets and streams as corral configures them: one configuration each.

:func:`stream_configs` is the one place the configuration of every stream of a namespace is built
(:mod:`coord.provision` creates, checks and updates streams against it).
"""

from __future__ import annotations

from nats.js import api as js_api

from coord.naming import Names, kv_stream_name, kv_subject_prefix, object_stream_name, object_subject_prefix
from coord.priority import LEVELS, Priority
from coord.settings import Settings

__all__ = ["dispatch_stream_subjects", "stream_configs"]


def _placement(settings: Settings) -> js_api.Placement | None:
    """The server-side placement of ``settings.placement`` (None: the server chooses)."""
    wanted = settings.placement
    return None if wanted.empty else js_api.Placement(cluster=wanted.cluster, tags=list(wanted.tags) or None)


def _kv(bucket: str, settings: Settings, *, description: str) -> js_api.StreamConfig:
    return js_api.StreamConfig(
        name=kv_stream_name(bucket),
        placement=_placement(settings),
        description=description,
        subjects=[kv_subject_prefix(bucket) + ">"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=js_api.DiscardPolicy.NEW,
        duplicate_window=120.0,
        max_msgs_per_subject=1,
        max_bytes=settings.max_bytes,
        num_replicas=settings.replicas,
        storage=js_api.StorageType.FILE,
        # Keys that expire (presence, finished tasks) leave a marker, so every watcher sees them go.
        subject_delete_marker_ttl=settings.expiry_marker_ttl,
    )


def dispatch_stream_subjects(names: Names) -> list[str]:
    """Exactly the subjects the queue consumers read: ``{ns}.dispatch.{queue}.{task}`` and its
    ``.high`` / ``.low`` forms (:meth:`Names.queue_filter`). The server refuses any other subject, so
    nothing can sit in the work-queue stream where no consumer will ever take it."""
    normal = names.dispatch_subjects.removesuffix(">") + "*.*"
    return [normal, *(f"{normal}.{level.value}" for level in LEVELS if level is not Priority.NORMAL)]


def stream_configs(names: Names, settings: Settings) -> list[js_api.StreamConfig]:
    """Every stream (KV buckets included) of the namespace, with its one configuration."""
    r = settings.replicas
    return [
        _kv(names.presence_bucket, settings, description="corral presence: one key per live agent, per-key TTL"),
        _kv(names.tasks_bucket, settings, description="corral task records (source of truth)"),
        _kv(names.registry_bucket, settings, description="corral sessions, thread reservations, tag bindings"),
        _kv(names.schedules_bucket, settings, description="corral recurring schedules and their last submitted tick"),
        _kv(names.limits_bucket, settings, description="corral per-queue limits, concurrency slots, rate state"),
        _kv(names.roster_bucket, settings, description="corral reclaimer lease and the roster of present agents"),
        js_api.StreamConfig(  # what nats-py's create_object_store makes, with corral's limits
            name=object_stream_name(names.blobs_bucket),
            placement=_placement(settings),
            description="corral task specs and results too large for their record",
            subjects=[f"{object_subject_prefix(names.blobs_bucket)}{part}.>" for part in ("C", "M")],
            # Blobs outlive the finished record referencing them (kept task_retention) by up to another one.
            max_age=2 * settings.task_retention,
            duplicate_window=min(120.0, 2 * settings.task_retention),  # the server wants it within max_age
            max_bytes=settings.max_bytes,
            discard=js_api.DiscardPolicy.NEW,
            allow_rollup_hdrs=True,
            allow_direct=True,
            num_replicas=r,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(
            name=names.dispatch_stream,
            placement=_placement(settings),
            description="corral task-ready notifications",
            subjects=dispatch_stream_subjects(names),
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            duplicate_window=settings.dispatch_duplicate_window,
            max_bytes=settings.max_bytes,
            discard=js_api.DiscardPolicy.NEW,
            num_replicas=r,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(
            name=names.events_stream,
            placement=_placement(settings),
            description="corral lifecycle events, dead letters",
            subjects=names.events_subjects,
            retention=js_api.RetentionPolicy.LIMITS,
            max_age=settings.events_max_age,
            max_bytes=settings.max_bytes,
            discard=js_api.DiscardPolicy.OLD,
            duplicate_window=120.0,
            num_replicas=r,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(
            name=names.inbox_stream,
            placement=_placement(settings),
            description="corral agent mailboxes (one message per subject)",
            subjects=[names.inbox_subjects],
            retention=js_api.RetentionPolicy.LIMITS,
            max_msgs_per_subject=1,
            max_bytes=settings.max_bytes,
            discard=js_api.DiscardPolicy.NEW,
            duplicate_window=120.0,
            allow_msg_ttl=True,
            num_replicas=r,
            storage=js_api.StorageType.FILE,
        ),
    ]
