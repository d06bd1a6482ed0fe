"""A namespace's buckets and streams: how they come to exist with their one configuration.

Each bucket and stream has exactly one configuration (:mod:`coord.stream_configs`, re-exported here)
and three ways to meet it:

- :func:`provision` (``corral provision``, the provisioner's role) creates every stream or brings
  the existing ones to that configuration; it needs stream-admin rights.
- :func:`check` only reads stream info: it raises :class:`coord.errors.NotProvisioned` naming each
  missing stream and the command that creates them, and needs no admin rights.
- :func:`create_missing` checks, then creates only the streams that are missing and never touches
  an existing one (what :func:`coord.connect` does by default, so an embedded or single-host server
  needs no setup); credentials that may not create streams get ``NotProvisioned`` at once.

Provisioning a namespace that already exists with the same configuration is a no-op; a difference
in a field that only bounds
growth or helps readers (the size limit and what happens when it is reached, the expiry-marker TTL,
the duplicate window, direct gets, per-message TTLs), or subjects narrowed to a subset of the
existing ones (the dispatch stream of an older corral took any ``{ns}.dispatch.>`` subject), is
applied in place, so a namespace made by an older corral gets them; any other difference (other
subjects, retention policy, storage, replicas, history
per key, maximum age) raises :class:`coord.errors.ConfigConflict` naming the stream and the fields,
because changing it could drop data or undo an operator's choice. :func:`check` and
:func:`create_missing` log a difference of the first kind as a warning and leave it to
``corral provision``. ``Settings.placement`` is applied when a stream is created; an existing one is not moved.

Every request can race the connection's :class:`~coord.permissions.PermissionLog`: a request the
server refuses for the credentials fails at once instead of timing out.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from coord.consumer import create_queue_consumers, differences, queue_consumer_config
from coord.errors import ConfigConflict, NotProvisioned, PermissionDenied, ReplicasUnavailable
from coord.naming import Names, kv_stream_name, stream_api_subject
from coord.permissions import PermissionLog, Refusal
from coord.priority import LEVELS
from coord.settings import Settings
from coord.stream_configs import dispatch_stream_subjects, stream_configs

__all__ = [
    "Provision",
    "ProvisionSettings",
    "StreamState",
    "StreamStatus",
    "check",
    "create_missing",
    "dispatch_stream_subjects",
    "kv_stream_name",
    "provision",
    "provision_command",
    "queue_consumers",
    "stream_configs",
    "survey",
]

log = logging.getLogger("corral.provision")

T = TypeVar("T")


class Provision(StrEnum):
    """What :func:`coord.connect` does about the namespace's streams (its ``provision`` argument)."""

    CHECK = "check"
    """Only verify (:func:`check`): a missing stream is :class:`~coord.errors.NotProvisioned`."""
    MISSING = "missing"
    """Verify, and create only what is missing (:func:`create_missing`); the default."""
    APPLY = "apply"
    """Create or update every stream (:func:`provision`): the provisioner's role."""


class StreamState(StrEnum):
    """What a stream was found to be, or what was done to it."""

    CREATED = "created"
    """It was missing and has been created."""
    UPDATED = "updated"
    """Fields that only bound growth were brought to corral's values."""
    UNCHANGED = "unchanged"
    """It exists with corral's configuration."""
    MISSING = "missing"
    """It does not exist (found by :func:`survey`)."""
    OUTDATED = "outdated"
    """It exists, but fields that only bound growth differ (``corral provision`` would update them)."""
    CONFLICT = "conflict"
    """It exists with a fixed field that differs (only :func:`survey` reports it; the others raise)."""


@dataclass(frozen=True)
class StreamStatus:
    """One stream of the namespace: its name, its state and the fields that differ."""

    name: str
    """The stream's name (``KV_{bucket}`` for a bucket)."""
    state: StreamState
    """What it was found to be, or what was done to it."""
    differences: tuple[str, ...] = ()
    """``field: existing X, corral needs Y`` for each differing field."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form: ``{"stream", "state", "differences"}``."""
        return {"stream": self.name, "state": self.state.value, "differences": list(self.differences)}


ProvisionSettings = Settings
"""Deprecated alias of :class:`coord.settings.Settings` (the storage fields live there now)."""


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


def _covers(pattern: str, subject: str) -> bool:
    """Whether every subject ``subject`` (itself possibly a wildcard) matches is matched by ``pattern``."""
    have, want = pattern.split("."), subject.split(".")
    for i, token in enumerate(have):
        if token == ">":
            return len(want) > i
        if i >= len(want) or want[i] == ">" or (token != "*" and (want[i] == "*" or want[i] != token)):
            return False
    return len(want) == len(have)


def _narrows(want: js_api.StreamConfig, have: js_api.StreamConfig) -> bool:
    """Whether ``want``'s subjects are a strict subset of ``have``'s (a namespace made by an older corral
    whose dispatch stream took ``{ns}.dispatch.>``): applying it loses nothing a consumer reads."""
    wanted, existing = want.subjects or [], have.subjects or []
    return sorted(wanted) != sorted(existing) and all(any(_covers(h, w) for h in existing) for w in wanted)


def provision_command(names: Names, settings: Settings) -> str:
    """The ``corral provision`` command line that creates the namespace's streams as ``settings`` say."""
    replicas = f" --replicas {settings.replicas}" if settings.replicas != 1 else ""
    where = settings.placement
    env = f"CORRAL_PLACEMENT__CLUSTER={where.cluster} " if where.cluster else ""
    env += f"CORRAL_PLACEMENT__TAGS='{json.dumps(list(where.tags))}' " if where.tags else ""
    return f"{env}corral provision --namespace {names.namespace}{replicas}"


async def _ask(request: Awaitable[T], refusals: PermissionLog | None, subject: str) -> T:
    """Await ``request``; raise PermissionDenied at once if the server refuses ``subject`` meanwhile."""
    if refusals is None:
        return await request
    task = asyncio.ensure_future(request)
    try:
        while True:
            refused = asyncio.ensure_future(refusals.next())
            try:
                done, _ = await asyncio.wait({task, refused}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                refused.cancel()
            if task in done:
                return task.result()
            refusal = refused.result()
            # Our request's subject (nats-py reports it in lower case), or the reply inbox it needs:
            # either way no answer will come.
            if refusal.subject.lower() == subject.lower():
                raise Refusal(refusal.operation, subject, refusal.at).error()
            if refusal.operation == "subscription":
                raise refusal.error()
    finally:
        if not task.done():
            task.cancel()


def _conflict(names: Names, status: StreamStatus) -> ConfigConflict:
    return ConfigConflict(
        f"stream {status.name!r} of namespace {names.namespace!r} already exists with a "
        f"different configuration ({'; '.join(status.differences)}). Use another namespace, or delete the "
        f"stream if its data is disposable."
    )


def _not_provisioned(names: Names, settings: Settings, missing: list[str], refused: str | None) -> NotProvisioned:
    verb = "is" if len(missing) == 1 else "are"
    why = f"; these credentials may not create streams (the server refused {refused})" if refused else ""
    return NotProvisioned(
        f"namespace {names.namespace!r} is not provisioned: {', '.join(missing)} {verb} missing{why}. "
        f"Run `{provision_command(names, settings)}` with credentials that may create streams"
    )


async def _status(js: JetStreamContext, config: js_api.StreamConfig, refusals: PermissionLog | None) -> StreamStatus:
    assert config.name is not None
    try:
        info = await _ask(js.stream_info(config.name), refusals, stream_api_subject("INFO", config.name))
    except NotFoundError:
        return StreamStatus(config.name, StreamState.MISSING)
    fixed = _differences(config, info.config, _FIXED)
    narrowed = _differences(config, info.config, ("subjects",)) if _narrows(config, info.config) else []
    fixed = [d for d in fixed if d not in narrowed]
    if fixed:
        return StreamStatus(config.name, StreamState.CONFLICT, tuple(fixed))
    growth = narrowed + _differences(config, info.config, _UPDATABLE)
    if growth:
        return StreamStatus(config.name, StreamState.OUTDATED, tuple(growth))
    return StreamStatus(config.name, StreamState.UNCHANGED)


async def survey(
    js: JetStreamContext, names: Names, settings: Settings, *, refusals: PermissionLog | None = None
) -> list[StreamStatus]:
    """Read the stream info of every stream of the namespace and say how each compares; changes nothing.

    Each status is ``missing``, ``conflict`` (a fixed field differs), ``outdated`` (only fields that
    bound growth differ, or subjects narrowed) or ``unchanged``. A read the credentials may not make raises
    :class:`~coord.errors.PermissionDenied` at once when ``refusals`` is the connection's log.
    """
    return [await _status(js, config, refusals) for config in stream_configs(names, settings)]


def _warn_outdated(names: Names, statuses: list[StreamStatus]) -> None:
    for status in statuses:
        if status.state is StreamState.OUTDATED:
            log.warning(
                "stream %r of namespace %r differs from corral's configuration in fields that corral provision "
                "updates in place (%s); run corral provision to apply",
                status.name,
                names.namespace,
                "; ".join(status.differences),
            )


def _verified(names: Names, statuses: list[StreamStatus]) -> None:
    for status in statuses:
        if status.state is StreamState.CONFLICT:
            raise _conflict(names, status)
    _warn_outdated(names, statuses)


async def check(
    js: JetStreamContext, names: Names, settings: Settings, *, refusals: PermissionLog | None = None
) -> list[StreamStatus]:
    """Verify that every stream of the namespace exists and matches; read-only (stream info only).

    Raises :class:`~coord.errors.ConfigConflict` naming the stream and the fields when a fixed field
    differs, and :class:`~coord.errors.NotProvisioned` naming every missing stream and the
    ``corral provision`` command to run. Fields that only bound growth differing are logged as a
    warning, not raised. Returns the statuses (``unchanged`` or ``outdated``).
    """
    statuses = await survey(js, names, settings, refusals=refusals)
    _verified(names, statuses)
    missing = [s.name for s in statuses if s.state is StreamState.MISSING]
    if missing:
        raise _not_provisioned(names, settings, missing, None)
    return statuses


async def create_missing(
    js: JetStreamContext, names: Names, settings: Settings, *, refusals: PermissionLog | None = None
) -> list[StreamStatus]:
    """Like :func:`check`, but create the streams that are missing; an existing stream is never changed.

    When the server refuses a create for these credentials (seen in ``refusals``, the connection's
    log, so at once rather than after a timeout), raises :class:`~coord.errors.NotProvisioned`
    naming every missing stream and the ``corral provision`` command.
    """
    statuses = await survey(js, names, settings, refusals=refusals)
    _verified(names, statuses)
    missing = [s.name for s in statuses if s.state is StreamState.MISSING]
    configs = {c.name: c for c in stream_configs(names, settings)}
    result = []
    for status in statuses:
        if status.state is not StreamState.MISSING:
            result.append(status)
            continue
        config = configs[status.name]
        try:
            created = await _create(js, config, settings, refusals)
        except PermissionDenied:
            raise _not_provisioned(names, settings, missing, stream_api_subject("CREATE", status.name)) from None
        if created is None:
            # Created meanwhile by another process, with another configuration: compare, never update.
            created = await _status(js, config, refusals)
            _verified(names, [created])
        result.append(created)
    return result


async def provision(
    js: JetStreamContext, names: Names, settings: Settings, *, refusals: PermissionLog | None = None
) -> list[StreamStatus]:
    """Create every stream of the namespace, or bring the existing ones to corral's configuration.

    Returns each stream as ``created``, ``updated`` or ``unchanged``. Raises
    :class:`~coord.errors.ConfigConflict` for a fixed-field difference, and
    :class:`~coord.errors.PermissionDenied` at once (with ``refusals``) when the credentials may not
    create or update streams.
    """
    result = []
    for config in stream_configs(names, settings):
        assert config.name is not None
        status = await _status(js, config, refusals)
        if status.state is StreamState.CONFLICT:
            raise _conflict(names, status)
        if status.state is StreamState.MISSING:
            created = await _create(js, config, settings, refusals)
            if created is not None:
                result.append(created)
                continue
            status = await _status(js, config, refusals)  # created meanwhile by another process
            if status.state is StreamState.CONFLICT:
                raise _conflict(names, status)
        if status.state is StreamState.OUTDATED:
            await _update(js, names, config, status, refusals)
            status = StreamStatus(config.name, StreamState.UPDATED, status.differences)
        result.append(status)
    return result


_NAME_IN_USE = 10058
"""JetStream's error code: the stream name is in use with another configuration."""
_NO_PEERS = 10005
"""JetStream's error code: no suitable peers for placement (too few servers up, or none matching)."""


async def _create(
    js: JetStreamContext, config: js_api.StreamConfig, settings: Settings, refusals: PermissionLog | None
) -> StreamStatus | None:
    """Create the stream ``config`` describes; ``None`` when another process created it meanwhile.

    Raises :class:`~coord.errors.ReplicasUnavailable` when the cluster cannot place the replicas now
    (a peer still joining or down): the connect loop tries again within its patience.
    """
    assert config.name is not None
    try:
        await _ask(js.add_stream(config), refusals, stream_api_subject("CREATE", config.name))
    except BadRequestError as err:
        if err.err_code == _NAME_IN_USE:
            return None
        if err.err_code == _NO_PEERS:
            raise ReplicasUnavailable(
                f"cannot create stream {config.name!r} with replicas={settings.replicas}: {err.description} "
                f"(fewer JetStream servers up{_placed(settings)} than replicas; start them or lower --replicas)"
            ) from None
        raise ConfigConflict(f"cannot create stream {config.name!r}: {err.description}") from None
    return StreamStatus(config.name, StreamState.CREATED)


def _placed(settings: Settings) -> str:
    where = settings.placement
    parts = ([f"cluster {where.cluster!r}"] if where.cluster else []) + [f"tag {t!r}" for t in where.tags]
    return f" matching {' and '.join(parts)}" if parts else ""


async def _update(
    js: JetStreamContext,
    names: Names,
    config: js_api.StreamConfig,
    status: StreamStatus,
    refusals: PermissionLog | None,
) -> None:
    assert config.name is not None
    try:
        await _ask(js.update_stream(config), refusals, stream_api_subject("UPDATE", config.name))
    except BadRequestError as err:
        raise ConfigConflict(
            f"stream {config.name!r} of namespace {names.namespace!r} cannot be updated "
            f"({'; '.join(status.differences)}): {err.description}"
        ) from None


async def queue_consumers(
    nc: NATS, js: JetStreamContext, names: Names, queue: str, *, apply: bool
) -> list[StreamStatus]:
    """The durable consumers of every priority level of ``queue`` (:func:`coord.consumer.queue_consumer_config`,
    the one configuration): each ``unchanged``, or ``missing``/``outdated`` (with the differing fields);
    with ``apply`` the missing ones are created and the outdated set back (``created``/``updated``).
    A credential that may not create them raises :class:`~coord.errors.PermissionDenied` at once."""
    found: list[StreamStatus] = []
    for priority in LEVELS:
        want = queue_consumer_config(names, queue, priority)
        assert want.durable_name is not None
        try:
            info = await js.consumer_info(names.dispatch_stream, want.durable_name)
        except NotFoundError:
            found.append(StreamStatus(want.durable_name, StreamState.MISSING))
            continue
        wrong = differences(want, info.config)
        found.append(
            StreamStatus(want.durable_name, StreamState.OUTDATED if wrong else StreamState.UNCHANGED, tuple(wrong))
        )
    if not apply or all(s.state is StreamState.UNCHANGED for s in found):
        return found
    await create_queue_consumers(nc, js, names, queue)
    done = {StreamState.MISSING: StreamState.CREATED, StreamState.OUTDATED: StreamState.UPDATED}
    return [StreamStatus(s.name, done.get(s.state, s.state), s.differences) for s in found]
