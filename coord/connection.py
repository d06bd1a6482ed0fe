"""Connecting to NATS: :func:`connect` and the :class:`Coord` handle every other layer uses.

``connect`` retries the initial connection with backoff (:mod:`coord.dial`) and then reconnects
forever, so a server restart or a leader election is a pause, not a crash; refused credentials, TLS
failures and unresolvable hosts fail at once, named. It refuses servers without JetStream or older
than 2.11. By default it checks the namespace's buckets and streams and creates only the missing
ones (:class:`~coord.provision.Provision`); updating them is ``corral provision``'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Generator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError
from nats.js.kv import KeyValue
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from coord import provision as provisioning
from coord.acks import AckedPublisher
from coord.blobs import Blobs
from coord.deadletter import DeadLetters
from coord.dial import dial, wants_tls
from coord.errors import InvalidInput, ReplicasUnavailable, ServerUnsupported, TLSFailed, Unavailable
from coord.events import Events
from coord.ids import validate_namespace
from coord.kv import Bucket
from coord.limits import Limits
from coord.mailbox import Mailbox
from coord.naming import Names
from coord.natscompat import inbox_prefix as natscompat_inbox_prefix
from coord.permissions import permission_log
from coord.presence import Presence
from coord.provision import Provision, StreamStatus
from coord.records import RecordStore
from coord.registry import Registry
from coord.schedules import Schedules
from coord.settings import Settings
from coord.streams import Stream
from coord.tasks import Observer, TaskEffects, TaskStore, TaskValues
from coord.telemetry.observer import OtelObserver

__all__ = ["DEFAULT_NAMESPACE", "DEFAULT_URL", "Auth", "Coord", "Provision", "compose", "connect"]

log = logging.getLogger("corral.connection")

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_NAMESPACE = "corral"
MIN_SERVER = (2, 11)


def _existing(path: str, what: str, field_name: str, error: type[InvalidInput] | type[TLSFailed]) -> str:
    if not os.path.isfile(path):
        raise error(f"{what} {path!r} ({field_name}) does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise error(f"{what} {path!r} ({field_name}) is not readable")
    return path


@dataclass(frozen=True)
class Auth:
    """Credentials and TLS for nats-py; a TLS option makes TLS mandatory (never a plaintext fallback)."""

    user: str | None = None
    """User name (with ``password``)."""
    password: str | None = None
    """Password (with ``user``)."""
    token: str | None = None
    """Auth token."""
    creds_file: str | None = None
    """Path of a ``.creds`` file (JWT + nkey seed)."""
    nkeys_seed: str | None = None
    """Path of an nkey seed file."""
    tls_ca: str | None = None
    """CA bundle to verify the server (enables TLS)."""
    tls_cert: str | None = None
    """Client certificate (mutual TLS)."""
    tls_key: str | None = None
    """Client key (mutual TLS)."""
    inbox_prefix: str | None = None
    """Prefix of this connection's reply subjects (``_INBOX.{ns}.{id}`` with per-role permissions; see
    :func:`coord.roles.inbox_prefix`); None: nats-py's ``_INBOX``."""

    @property
    def kind(self) -> str:
        """The kind of credential, as errors name it: ``creds file``, ``nkey``, ``token``, ``user/password``.

        ``no credentials`` when none is given (credentials in the URL are still sent by nats-py).
        """
        if self.creds_file is not None:
            return "creds file"
        if self.nkeys_seed is not None:
            return "nkey"
        if self.token is not None:
            return "token"
        if self.user is not None or self.password is not None:
            return "user/password"
        return "no credentials"

    @property
    def wants_tls(self) -> bool:
        """Whether a TLS option is set (then the connection must be TLS, or fail with ``TLSFailed``)."""
        return any(v is not None for v in (self.tls_ca, self.tls_cert, self.tls_key))

    def nats_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``; every file named is checked first.

        A missing or unusable TLS file is :class:`~coord.errors.TLSFailed` naming it; a missing
        creds or nkey file is :class:`~coord.errors.InvalidInput` naming it.
        """
        opts: dict[str, Any] = {}
        if self.user is not None:
            opts["user"] = self.user
        if self.password is not None:
            opts["password"] = self.password
        if self.token is not None:
            opts["token"] = self.token
        if self.creds_file is not None:
            opts["user_credentials"] = _existing(self.creds_file, "creds file", "creds_file, --creds", InvalidInput)
        if self.nkeys_seed is not None:
            opts["nkeys_seed"] = _existing(self.nkeys_seed, "nkey seed file", "nkeys_seed, --nkey", InvalidInput)
        if self.inbox_prefix is not None:
            opts["inbox_prefix"] = self.inbox_prefix
        if self.wants_tls:
            opts["tls"] = self._tls_context()
        return opts

    def _tls_context(self) -> ssl.SSLContext:
        if self.tls_key is not None and self.tls_cert is None:
            raise TLSFailed(f"TLS client key {self.tls_key!r} (tls_key, --tls-key) needs a certificate (--tls-cert)")
        cafile = _existing(self.tls_ca, "TLS CA file", "tls_ca, --tls-ca", TLSFailed) if self.tls_ca else None
        try:
            ctx = ssl.create_default_context(cafile=cafile)
        except ssl.SSLError as err:
            raise TLSFailed(f"TLS CA file {cafile!r} (tls_ca, --tls-ca) is not a PEM CA bundle: {err}") from None
        if self.tls_cert is not None:
            cert = _existing(self.tls_cert, "TLS client certificate", "tls_cert, --tls-cert", TLSFailed)
            key = _existing(self.tls_key, "TLS client key", "tls_key, --tls-key", TLSFailed) if self.tls_key else None
            try:
                ctx.load_cert_chain(cert, key)
            except ssl.SSLError as err:
                raise TLSFailed(f"TLS client certificate {cert!r} or key {key!r} is unusable: {err}") from None
        return ctx


@dataclass(eq=False)
class Coord:
    """A live connection to one corral namespace: the composition root's product.

    Holds the raw NATS client and JetStream context plus the substrate services, each built once by
    :func:`connect` with exactly the collaborators it needs: ``presence``, ``tasks``, ``registry``,
    ``mailbox``, ``events``, ``dead_letters``, ``schedules`` and ``limits``. Use as an async context manager, or call
    :meth:`close`.
    """

    nc: NATS
    """The nats-py client (reconnects forever)."""
    js: JetStreamContext
    """JetStream context of ``nc``."""
    names: Names
    """Bucket, stream and subject names of this namespace."""
    settings: Settings
    """The tunables every service was built with."""
    observer: Observer
    """Where task steps and presence changes are reported (spans and metrics)."""
    presence: Presence
    """Presence of agents in this namespace (see :mod:`coord.presence`)."""
    tasks: TaskStore
    """The task store (see :mod:`coord.tasks`)."""
    registry: Registry
    """Sessions, threads and tags (see :mod:`coord.registry`)."""
    mailbox: Mailbox
    """Agent-to-agent messaging (see :mod:`coord.mailbox`)."""
    events: Events
    """Durable child-to-parent lifecycle events (see :mod:`coord.events`)."""
    dead_letters: DeadLetters
    """Messages that could not be processed, recorded (see :mod:`coord.deadletter`)."""
    schedules: Schedules
    """Recurring schedules (see :mod:`coord.schedules`)."""
    limits: Limits
    """Fleet-wide per-queue concurrency and rate limits (see :mod:`coord.limits`)."""
    roster: Bucket
    """The roster bucket: the reclaimer's lease (:mod:`coord.lease`) and the roster of present agents it keeps."""
    streams: tuple[StreamStatus, ...] = ()
    """What :func:`connect` found, created or updated of the namespace's streams (one status each)."""
    _kv: dict[str, KeyValue] = field(default_factory=dict, repr=False)

    @property
    def namespace(self) -> str:
        """The namespace this handle works in."""
        return self.names.namespace

    async def kv(self, bucket: str) -> KeyValue:
        """The raw nats-py KeyValue handle of ``bucket`` (cached), for tools that need one."""
        if bucket not in self._kv:
            self._kv[bucket] = await self.js.key_value(bucket)
        return self._kv[bucket]

    async def close(self) -> None:
        """Flush and close the connection (pending publishes are sent first); never raises."""
        if self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), timeout=5)
        except Exception as err:
            log.debug("drain failed (%s); closing", err or type(err).__name__)
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def __aenter__(self) -> Coord:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def compose(nc: NATS, js: JetStreamContext, names: Names, settings: Settings, observer: Observer) -> Coord:
    """Build every service of a namespace from one connection: the composition root.

    No service reaches sideways for a collaborator: each gets its bucket or stream, the names and
    the other services it uses, here, once.
    """

    acks = AckedPublisher(nc)

    def bucket(name: str) -> Bucket:
        return Bucket(js, nc, name, patience=settings.io_patience, request_timeout=settings.request_timeout, acks=acks)

    def stream(name: str) -> Stream:
        return Stream(js, nc, name, patience=settings.io_patience, request_timeout=settings.request_timeout, acks=acks)

    events_stream = stream(names.events_stream)
    dead_letters = DeadLetters(events_stream, names)
    # A renewal stuck on a request lost in a failover must be sent again within an interval, not a
    # whole request timeout later: presence asks with timeouts no longer than its interval.
    beat = min(settings.request_timeout, max(0.5, settings.presence_interval))
    presence_bucket = Bucket(
        js, nc, names.presence_bucket, patience=settings.io_patience, request_timeout=beat, acks=acks
    )
    roster = Bucket(js, nc, names.roster_bucket, patience=settings.io_patience, request_timeout=beat, acks=acks)
    presence = Presence(presence_bucket, roster=roster, interval=settings.presence_interval, ttl=settings.presence_ttl)
    records = RecordStore(bucket(names.registry_bucket))
    registry = Registry(records, presence, terminal_ttl=settings.session_retention)
    # Reply subjects corral hands out all live under the first token of the inbox prefix
    # (``_INBOX``): per-credential prefixes (``_INBOX.{ns}.{id}``) differ between sender and recipient.
    reply_prefix = natscompat_inbox_prefix(nc).split(".", 1)[0] + "."
    effects = TaskEffects(nc, stream(names.dispatch_stream), names)
    blobs = Blobs(js, names.blobs_bucket, max_size=settings.max_blob_bytes, patience=settings.io_patience)
    values = TaskValues(blobs, nc.max_payload, retention=settings.task_retention)
    tasks = TaskStore(bucket(names.tasks_bucket), effects, values, settings=settings, observer=observer)
    return Coord(
        nc=nc,
        js=js,
        names=names,
        settings=settings,
        observer=observer,
        presence=presence,
        tasks=tasks,
        registry=registry,
        mailbox=Mailbox(stream(names.inbox_stream), names, registry, presence, dead_letters, reply_prefix=reply_prefix),
        events=Events(events_stream, names, records, dead_letters, retention=settings.events_max_age),
        dead_letters=dead_letters,
        schedules=Schedules(RecordStore(bucket(names.schedules_bucket))),
        limits=Limits(bucket(names.limits_bucket), tasks, cas_attempts=settings.max_cas_attempts),
        roster=roster,
    )


def _split_servers(url: str) -> list[str]:
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise InvalidInput("server URL must not be empty (e.g. nats://127.0.0.1:4222)")
    return [u if "://" in u else f"nats://{u}" for u in servers]


async def _on_error(nc: NATS, exc: Exception) -> None:
    # Every error nats-py reports on the connection (the debug line itself is logged by coord.dial);
    # a permissions violation is kept so the request behind it can fail at once, and told: a role
    # refused something it does is misconfigured.
    refusal = permission_log(nc).record(str(exc))
    if refusal is not None and not refusal.awaited:  # an awaited one is raised where it was awaited
        log.warning("%s", refusal.error())


async def _provision(
    js: JetStreamContext, names: Names, settings: Settings, mode: Provision, nc: NATS
) -> list[StreamStatus]:
    refusals = permission_log(nc)
    if mode is Provision.APPLY:
        return await provisioning.provision(js, names, settings, refusals=refusals)
    if mode is Provision.CHECK:
        return await provisioning.check(js, names, settings, refusals=refusals)
    return await provisioning.create_missing(js, names, settings, refusals=refusals)


async def _open(
    url: str,
    namespace: str,
    auth: Auth,
    settings: Settings,
    observer: Observer,
    name: str | None,
    connect_timeout: float,
    mode: Provision,
) -> Coord:
    names = Names(validate_namespace(namespace))
    servers = _split_servers(url)
    options = auth.nats_options()  # a missing file is named here, before any network I/O
    if name is not None:
        options["name"] = name
    nc = await dial(
        servers,
        url=url,
        kind=auth.kind,
        require_tls=wants_tls(servers, auth.wants_tls),
        connect_timeout=connect_timeout,
        on_error=_on_error,
        options=options,
    )
    try:
        version = nc.connected_server_version
        if (version.major, version.minor) < MIN_SERVER:
            raise ServerUnsupported(
                f"NATS server at {url} is v{version.major}.{version.minor}.{version.patch}; corral needs "
                f">= {MIN_SERVER[0]}.{MIN_SERVER[1]} (per-message TTL and expiry markers)"
            )
        js = nc.jetstream(timeout=5)
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(max(connect_timeout, 10)),
            wait=wait_exponential_jitter(multiplier=0.1, max=1.0),
            retry=retry_if_exception_type((nats.errors.TimeoutError, ServiceUnavailableError, ReplicasUnavailable)),
            reraise=True,
        ):
            with attempt:
                await _require_jetstream(js, url)
                streams = await _provision(js, names, settings, mode, nc)
        coord = compose(nc, js, names, settings, observer)
        coord.streams = tuple(streams)
        return coord
    except BaseException as err:
        await nc.close()
        if isinstance(err, nats.errors.TimeoutError):
            raise Unavailable(
                f"NATS at {url} did not answer JetStream requests for namespace {namespace!r} within "
                f"{max(connect_timeout, 10)}s (is JetStream up, and may these credentials use $JS.API?)"
            ) from None
        if isinstance(err, nats.js.errors.APIError):
            raise ServerUnsupported(
                f"NATS at {url} refused namespace {namespace!r} (replicas={settings.replicas}): {err.description}"
            ) from None
        raise


async def _require_jetstream(js: JetStreamContext, url: str) -> None:
    try:
        await js.account_info()
    except nats.errors.NoRespondersError:
        raise _no_jetstream(url) from None
    except ServiceUnavailableError as err:
        # nats-py reports "no responders" on $JS.API (JetStream off) as a 503 without an err_code;
        # a cluster electing its meta leader answers 503 with err_code 10008 and is retried.
        if err.err_code in (None, 10039):
            raise _no_jetstream(url) from None
        raise


def _no_jetstream(url: str) -> ServerUnsupported:
    return ServerUnsupported(
        f"NATS server at {url} has JetStream disabled for this account; corral needs JetStream "
        f"(start nats-server with -js, or enable it for the account)"
    )


class _Connecting:
    """Awaitable and async context manager returned by :func:`connect`."""

    def __init__(self, *args: Any) -> None:
        self._args = args
        self._coord: Coord | None = None

    def __await__(self) -> Generator[Any, None, Coord]:
        return _open(*self._args).__await__()

    async def __aenter__(self) -> Coord:
        self._coord = await _open(*self._args)
        return self._coord

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._coord is not None:
            await self._coord.close()


def connect(
    url: str = DEFAULT_URL,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    replicas: int | None = None,
    auth: Auth | None = None,
    name: str | None = None,
    connect_timeout: float | None = None,
    settings: Settings | None = None,
    observer: Observer | None = None,
    provision: Provision | str = Provision.MISSING,
    **auth_kwargs: Any,
) -> _Connecting:
    """Connect to NATS at ``url`` (comma-separated for a cluster) and open ``namespace``.

    Use ``async with connect(url) as coord:`` or ``coord = await connect(url)``. Credentials come as
    an :class:`Auth` or as its fields in ``auth_kwargs`` (``user=``, ``password=``, ``token=``,
    ``creds_file=``, ``nkeys_seed=``, ``tls_ca=``, ``tls_cert=``, ``tls_key=``). ``settings``
    (default: :meth:`Settings.load`, i.e. the defaults and ``CORRAL_*`` variables) tunes every
    service; ``replicas`` overrides its field of that name. ``observer`` receives every task step
    (default: :class:`~coord.telemetry.observer.OtelObserver`, OpenTelemetry spans and metrics).

    ``provision`` says what happens to the namespace's buckets and streams (see
    :class:`~coord.provision.Provision`): ``"missing"`` (the default) checks them and creates only
    the missing ones, never changing an existing one, so a fresh embedded or single-host server needs
    no setup while a role without stream-admin rights needs none either once the namespace exists;
    ``"check"`` only verifies; ``"apply"`` creates or updates them (``corral provision``). What was
    found or done is in :attr:`Coord.streams`.

    TLS is mandatory when the URL is ``tls://`` or a TLS option is given: a server without TLS is
    refused (:class:`~coord.errors.TLSFailed`), never used in plaintext.

    Raises :class:`~coord.errors.InvalidId` for a bad namespace (before any network I/O);
    :class:`~coord.errors.InvalidInput` or :class:`~coord.errors.TLSFailed` naming a missing
    credential or TLS file (before any network I/O); :class:`~coord.errors.AuthenticationFailed`
    (at once) naming the URL and the kind of credential when the server refuses it;
    :class:`~coord.errors.TLSFailed` (at once) when TLS cannot be had;
    :class:`~coord.errors.ConnectionFailed` naming the URL when the host does not resolve (at once)
    or the server cannot be reached within ``connect_timeout`` (default: the settings' value, 0.5 s,
    ``CORRAL_CONNECT_TIMEOUT``; saying why: connection refused, no answer);
    :class:`~coord.errors.ServerUnsupported` without JetStream or before 2.11;
    :class:`~coord.errors.ConfigConflict` when existing streams conflict with ours;
    :class:`~coord.errors.NotProvisioned` (at once, also when the server refuses to create them)
    naming the missing streams and the ``corral provision`` command;
    and :class:`~coord.errors.PermissionDenied` (at once) when the credentials may not even read the
    streams' info.
    """
    validate_namespace(namespace)
    try:
        mode = Provision(provision)
    except ValueError:
        choices = ", ".join(repr(p.value) for p in Provision)
        raise InvalidInput(f"provision must be one of {choices}, got {provision!r}") from None
    auth = auth or Auth(**auth_kwargs)
    settings = (settings or Settings.load()).but(replicas=replicas, connect_timeout=connect_timeout)
    return _Connecting(url, namespace, auth, settings, observer or OtelObserver(), name, settings.connect_timeout, mode)
