"""Idempotent creation of a namespace's buckets and streams.

Each bucket and stream has exactly one configuration, built here. Provisioning a namespace that
already exists with the same configuration is a no-op; a difference in a field that only bounds
growth or helps readers (the size limit and what happens when it is reached, the expiry-marker TTL,
the duplicate window, direct gets, per-message TTLs) is applied in place, so a namespace made by an
older corral gets them; any other difference (subjects, retention policy, storage, replicas, history
per key, maximum age) raises :class:`coord.errors.ConfigConflict` naming the stream and the fields,
because changing it could drop data or undo an operator's choice.
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


def _kv(bucket: str, settings: Settings, *, description: str) -> js_api.StreamConfig:
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
        max_msgs_per_subject=1,
        max_bytes=settings.max_bytes,
        num_replicas=settings.replicas,
        storage=js_api.StorageType.FILE,
        # Keys that expire (presence, finished tasks) leave a marker, so every watcher sees them go.
        subject_delete_marker_ttl=settings.expiry_marker_ttl,
    )


def stream_configs(names: Names, settings: Settings) -> list[js_api.StreamConfig]:
    """Every stream (KV buckets included) of the namespace, with its one configuration."""
    r = settings.replicas
    return [
        _kv(names.presence_bucket, settings, description="corral presence: one key per live agent, per-key TTL"),
        _kv(names.tasks_bucket, settings, description="corral task records (source of truth)"),
        _kv(names.registry_bucket, settings, description="corral sessions, thread reservations, tag bindings"),
        js_api.StreamConfig(
            name=names.dispatch_stream,
            description="corral task-ready notifications",
            subjects=[names.dispatch_subjects],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            duplicate_window=settings.dispatch_duplicate_window,
            max_bytes=settings.max_bytes,
            discard=js_api.DiscardPolicy.NEW,
            num_replicas=r,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(
            name=names.events_stream,
            description="corral lifecycle events, task journals, dead letters",
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


_FIXED = ("subjects", "retention", "storage", "num_replicas", "max_msgs_per_subject", "max_age")
"""Fields provisioning never changes on an existing stream (a difference is a ConfigConflict)."""
_UPDATABLE = ("max_bytes", "discard", "subject_delete_marker_ttl", "duplicate_window", "allow_direct", "allow_msg_ttl")
"""Fields provisioning brings to corral's value in place."""


def _differences(want: js_api.StreamConfig, have: js_api.StreamConfig, fields: tuple[str, ...]) -> list[str]:
    diffs = []
    for field in fields:
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
    """Create every stream of the namespace, or bring the existing ones to corral's configuration."""
    for config in stream_configs(names, settings):
        assert config.name is not None
        try:
            await js.add_stream(config)
        except BadRequestError as err:
            # 10058: stream name already in use with a different configuration.
            if err.err_code != 10058:
                raise ConfigConflict(f"cannot create stream {config.name!r}: {err.description}") from None
            await _update(js, names, config, err.description or "")


async def _update(js: JetStreamContext, names: Names, config: js_api.StreamConfig, why: str) -> None:
    assert config.name is not None
    try:
        have = (await js.stream_info(config.name)).config
    except NotFoundError:  # pragma: no cover - deleted between the two calls
        raise ConfigConflict(f"stream {config.name!r}: {why}") from None
    fixed = _differences(config, have, _FIXED)
    if fixed:
        raise ConfigConflict(
            f"stream {config.name!r} of namespace {names.namespace!r} already exists with a "
            f"different configuration ({'; '.join(fixed)}). Use another namespace, or delete the "
            f"stream if its data is disposable."
        )
    if not _differences(config, have, _UPDATABLE):
        return
    try:
        await js.update_stream(config)
    except BadRequestError as err:
        diffs = "; ".join(_differences(config, have, _UPDATABLE))
        raise ConfigConflict(
            f"stream {config.name!r} of namespace {names.namespace!r} cannot be updated ({diffs}): {err.description}"
        ) from None
