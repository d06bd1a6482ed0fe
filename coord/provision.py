"""Idempotent creation of a namespace's buckets and streams.

Each bucket and stream has exactly one configuration, built here. Provisioning a namespace that
already exists with the same configuration is a no-op; one that exists with a conflicting
configuration raises :class:`coord.errors.ConfigConflict` naming the stream and the fields.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from coord.errors import ConfigConflict
from coord.naming import Names, kv_stream_name, kv_subject_prefix
from coord.settings import Settings

__all__ = ["ProvisionSettings", "kv_stream_name", "provision", "stream_configs"]


ProvisionSettings = Settings
"""Deprecated alias of :class:`coord.settings.Settings` (the storage fields live there now)."""


def _kv(
    bucket: str, replicas: int, *, history: int = 1, marker_ttl: float | None = None, description: str
) -> js_api.StreamConfig:
    return js_api.StreamConfig(
        name=kv_stream_name(bucket),
        description=description,
        subjects=[kv_subject_prefix(bucket) + ">"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=js_api.DiscardPolicy.NEW,
        duplicate_window=120.0,
        max_msgs_per_subject=history,
        num_replicas=replicas,
        storage=js_api.StorageType.FILE,
        subject_delete_marker_ttl=marker_ttl,
    )


def stream_configs(names: Names, settings: Settings) -> list[js_api.StreamConfig]:
    """Every stream (KV buckets included) of the namespace, with its one configuration."""
    r = settings.replicas
    return [
        _kv(
            names.presence_bucket,
            r,
            marker_ttl=settings.presence_marker_ttl,
            description="corral presence: one key per live agent, per-key TTL",
        ),
        _kv(names.tasks_bucket, r, description="corral task records (source of truth)"),
        _kv(names.registry_bucket, r, description="corral sessions, thread reservations, tag bindings"),
        js_api.StreamConfig(
            name=names.dispatch_stream,
            description="corral task-ready notifications",
            subjects=[names.dispatch_subjects],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            duplicate_window=settings.dispatch_duplicate_window,
            num_replicas=r,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(
            name=names.events_stream,
            description="corral lifecycle events, task journals, dead letters",
            subjects=names.events_subjects,
            retention=js_api.RetentionPolicy.LIMITS,
            max_age=settings.events_max_age,
            duplicate_window=120.0,
            num_replicas=r,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(
            name=names.inbox_stream,
            description="corral agent mailboxes (one message per subject)",
            subjects=[names.inbox_subjects],
            retention=js_api.RetentionPolicy.LIMITS,
            max_msgs_per_subject=1,
            duplicate_window=120.0,
            allow_msg_ttl=True,
            num_replicas=r,
            storage=js_api.StorageType.FILE,
        ),
    ]


_COMPARED = (
    "subjects",
    "retention",
    "max_msgs_per_subject",
    "num_replicas",
    "storage",
    "max_age",
    "allow_msg_ttl",
    "subject_delete_marker_ttl",
    "discard",
    "duplicate_window",
)


def _differences(want: js_api.StreamConfig, have: js_api.StreamConfig) -> list[str]:
    diffs = []
    for field in _COMPARED:
        w, h = getattr(want, field), getattr(have, field)
        if w is None or w == h:
            continue
        if isinstance(w, float) and isinstance(h, float | int) and abs(w - float(h)) < 1e-6:
            continue
        if isinstance(w, list) and isinstance(h, list) and sorted(w) == sorted(h):
            continue
        diffs.append(f"{field}: existing {h!r}, corral needs {w!r}")
    return diffs


async def provision(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """Create every stream of the namespace, or check that the existing ones match."""
    for config in stream_configs(names, settings):
        assert config.name is not None
        try:
            await js.add_stream(config)
        except BadRequestError as err:
            # 10058: stream name already in use with a different configuration.
            if err.err_code != 10058:
                raise ConfigConflict(f"cannot create stream {config.name!r}: {err.description}") from None
            try:
                have = (await js.stream_info(config.name)).config
            except NotFoundError:  # pragma: no cover - deleted between the two calls
                raise ConfigConflict(f"stream {config.name!r}: {err.description}") from None
            diffs = _differences(config, have)
            raise ConfigConflict(
                f"stream {config.name!r} of namespace {names.namespace!r} already exists with a "
                f"different configuration ({'; '.join(diffs) or err.description}). Use another "
                f"namespace, or delete the stream if its data is disposable."
            ) from None
