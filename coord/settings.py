"""Every tunable of a corral process in one typed object: :class:`Settings`.

``connect(settings=...)`` takes one; without it, :meth:`Settings.load` builds one from the defaults
below overridden by ``CORRAL_*`` environment variables (``CORRAL_LEASE=60``,
``CORRAL_PRESENCE_TTL=5``, ``CORRAL_BACKOFF__BASE=2`` ...). The CLI sets the same fields from its
flags. :func:`coord.connect` hands each service only the values it uses.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from coord.backoff import Backoff
from coord.presence.timing import check_timing
from coord.validation import DAY, MAX_SINCE, invalid_input

__all__ = ["DAY", "DEFAULT_TEXT", "PRESENCE_TTL_REPLICATED", "PRESENCE_TTL_SINGLE", "Placement", "Settings"]

ENV_PREFIX = "CORRAL_"

PRESENCE_TTL_SINGLE = 3.0
"""Default presence TTL on one server: a departure is seen within about 3 s."""
PRESENCE_TTL_REPLICATED = 20.0
"""Default presence TTL with replicas: longer than a leader election after a node is SIGKILLed
(4-11 s, up to ~15 s under load, bench/RESULTS.md), so losing one node of three makes no worker depart."""
DEFAULT_TEXT = {"presence_ttl": f"{PRESENCE_TTL_SINGLE:g} with one replica, {PRESENCE_TTL_REPLICATED:g} with more"}
"""How the defaults that depend on other fields read in help texts."""


PlacementTag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:=-]+$")]
"""A server tag (``server_tags`` in nats-server's configuration), e.g. ``region:eu``."""


class Placement(BaseModel):
    """Where JetStream puts a namespace's buckets and streams in a supercluster (docs/scale.md).

    Applied by :mod:`coord.provision` to every stream it creates; empty (the default) lets the
    server choose, which is the cluster of the server the creating client is connected to.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] | None = None
    """Name of the cluster that holds the streams (its ``cluster { name }``), or None: any."""
    tags: tuple[PlacementTag, ...] = Field(default=(), max_length=16)
    """Server tags every replica's server must carry (at most 16)."""

    @property
    def empty(self) -> bool:
        """True when nothing is asked: the server places streams itself."""
        return self.cluster is None and not self.tags


class Settings(BaseSettings):
    """Tunables of storage, tasks, presence, reclaiming and retention (validated; immutable)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", frozen=True, extra="forbid")

    # --- connection ------------------------------------------------------------------------------
    connect_timeout: float = Field(default=0.5, gt=0, le=3600)
    """Seconds :func:`coord.connect` keeps trying servers that refuse (they may be starting) before it
    reports "connection refused"; a silent or slow server has at least 2.5 s per server whatever this
    says. Short by default, so a wrong URL is reported at once; raise it to wait for a server to start."""

    # --- storage ---------------------------------------------------------------------------------
    replicas: int = Field(default=1, ge=1, le=5)
    """Replicas of every bucket and stream (3 on a 3-node cluster)."""
    io_patience: float = Field(default=15.0, gt=0, le=3600)
    """Seconds a read or write keeps retrying through a server restart or leader election."""
    request_timeout: float = Field(default=5.0, gt=0, le=60)
    """Longest wait for one answer from the server before the request counts as lost (and is retried)."""
    dispatch_duplicate_window: float = Field(default=120.0, gt=0, le=DAY)
    """Window in which a notification with the same ``Nats-Msg-Id`` is dropped as a duplicate."""
    events_max_age: float = Field(default=7 * DAY, gt=0, le=MAX_SINCE)
    """How long lifecycle events, journals and dead letters are kept."""
    session_retention: float = Field(default=7 * DAY, ge=1, le=MAX_SINCE)
    """How long complete or abandoned registry sessions are kept."""
    task_retention: float = Field(default=7 * DAY, ge=1, le=MAX_SINCE)
    """How long a finished task's record is kept (its journal lives as long as events); a retry
    before then brings it back."""
    max_bytes: int = Field(default=1 << 30, ge=1 << 20, le=1 << 50)
    """Size limit of each bucket and stream, in bytes. When full, the events stream drops its oldest
    entries; every other stream and bucket refuses new writes (a clear error, nothing lost)."""
    expiry_marker_ttl: float = Field(default=60.0, ge=1, le=DAY)
    """How long the server keeps the marker it writes when a key's TTL runs out (so watchers see it)."""
    placement: Placement = Field(default_factory=Placement)
    """Cluster and server tags of every bucket and stream a provisioning creates
    (``CORRAL_PLACEMENT__CLUSTER=A``, ``CORRAL_PLACEMENT__TAGS='["region:eu"]'``); an existing stream
    stays where it is."""

    # --- tasks -----------------------------------------------------------------------------------
    lease: float = Field(default=30.0, gt=0, le=DAY)
    """Lease (seconds) of a claim when neither the claim nor the task names one."""
    backoff: Backoff = Field(default_factory=Backoff)
    """Retry delays after a failed attempt."""
    visibility_tolerance: float = Field(default=0.25, ge=0, le=60)
    """Seconds before ``visible_at`` from which a claim is accepted (clock skew between hosts)."""
    max_cas_attempts: int = Field(default=10, ge=1, le=1000)
    """Writes a transition attempts against a changing record before giving up with ``Conflict``."""
    max_blob_bytes: int = Field(default=1 << 30, ge=1 << 20, le=1 << 40)
    """Largest spec or result (bytes of JSON) a task may have; one over the record's inline limit is
    kept in the blob bucket (docs/tasks.md, "Large specs and results")."""

    # --- presence --------------------------------------------------------------------------------
    presence_ttl: float = Field(default=PRESENCE_TTL_SINGLE, ge=1, le=3600)
    """TTL of a presence key (whole seconds are enforced by the server). Without a value:
    :data:`PRESENCE_TTL_SINGLE` with one replica, :data:`PRESENCE_TTL_REPLICATED` with more, so that
    the election that follows the loss of a node (4-11 s, up to ~15 s under load) causes no departure."""
    presence_interval: float = Field(default=1.0, gt=0, le=3600)
    """Seconds between presence renewals (shorter than the enforced TTL)."""

    # --- reclaiming and dispatch -----------------------------------------------------------------
    sweep_interval: float = Field(default=1.0, ge=0.05, le=3600)
    """Seconds between two reclaimer sweeps (deadlines, absent workers, lost notifications)."""
    renotify_after: float = Field(default=30.0, gt=0, le=DAY)
    """A pending task whose notification seems lost for this long is notified again."""
    reconcile_interval: float = Field(default=5.0, gt=0, le=3600)
    """Seconds between two reads of the records a dispatcher awaits (missed result pushes)."""

    @model_validator(mode="before")
    @classmethod
    def _sized_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("presence_ttl") is None:  # not given (or given as None)
            try:
                replicated = int(data.get("replicas", 1)) > 1
            except (TypeError, ValueError):
                replicated = False  # the field's own validation reports it
            data = {**data, "presence_ttl": PRESENCE_TTL_REPLICATED if replicated else PRESENCE_TTL_SINGLE}
        return data

    @model_validator(mode="after")
    def _presence_timing(self) -> Settings:
        check_timing(self.presence_interval, self.presence_ttl)
        return self

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Defaults, then ``CORRAL_*`` variables, then ``overrides``; one-line ``InvalidInput`` if invalid.

        The error names the field as its environment variable when the value came from there.
        """
        try:
            return cls(**overrides)
        except ValidationError as err:
            given = set(overrides)

            def name(path: str) -> str:
                top = path.split(".", 1)[0]
                return path if top in given else ENV_PREFIX + path.upper().replace(".", "__")

            raise invalid_input(err, name, what="settings") from None

    def but(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated (``None`` values are ignored)."""
        given = {k: v for k, v in changes.items() if v is not None}
        if not given:
            return self
        current = self.model_dump()
        if (
            "replicas" in given
            and "presence_ttl" not in given
            and self.presence_ttl
            in (
                PRESENCE_TTL_SINGLE,
                PRESENCE_TTL_REPLICATED,
            )
        ):
            current.pop("presence_ttl")  # a sized default follows the new replicas
        try:
            return type(self).model_validate({**current, **given})
        except ValidationError as err:
            raise invalid_input(err, what="settings") from None
