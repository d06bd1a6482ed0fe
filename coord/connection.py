"""Connecting to NATS: :func:`connect` and the :class:`Coord` handle every other layer uses.

``connect`` retries the initial connection with backoff (tenacity) and then reconnects forever, so a
server restart or a leader election is a pause, not a crash. It refuses servers without JetStream or
older than 2.11, and provisions the namespace's buckets and streams idempotently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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

from coord.deadletter import DeadLetters
from coord.errors import ConnectionFailed, InvalidInput, ServerUnsupported
from coord.events import Events
from coord.ids import validate_namespace
from coord.kv import Bucket
from coord.mailbox import Mailbox
from coord.naming import Names
from coord.presence import Presence
from coord.provision import provision
from coord.records import RecordStore
from coord.registry import Registry
from coord.settings import Settings
from coord.streams import Stream
from coord.tasks import Journal, Observer, TaskEffects, TaskStore
from coord.telemetry.observer import OtelObserver

__all__ = ["DEFAULT_NAMESPACE", "DEFAULT_URL", "Auth", "Coord", "compose", "connect"]

log = logging.getLogger("corral.connection")

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_NAMESPACE = "corral"
MIN_SERVER = (2, 11)


@dataclass(frozen=True)
class Auth:
    """Credentials and TLS, passed straight to nats-py."""

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

    def nats_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        opts: dict[str, Any] = {}
        if self.user is not None:
            opts["user"] = self.user
        if self.password is not None:
            opts["password"] = self.password
        if self.token is not None:
            opts["token"] = self.token
        if self.creds_file is not None:
            opts["user_credentials"] = self.creds_file
        if self.nkeys_seed is not None:
            opts["nkeys_seed"] = self.nkeys_seed
        if self.tls_ca or self.tls_cert:
            import ssl

            ctx = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            opts["tls"] = ctx
        return opts


@dataclass(eq=False)
class Coord:
    """A live connection to one corral namespace: the composition root's product.

    Holds the raw NATS client and JetStream context plus the substrate services, each built once by
    :func:`connect` with exactly the collaborators it needs: ``presence``, ``tasks``, ``registry``,
    ``mailbox``, ``events`` and ``dead_letters``. Use as an async context manager, or call
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

    def bucket(name: str) -> Bucket:
        return Bucket(js, nc, name, patience=settings.io_patience, request_timeout=settings.request_timeout)

    def stream(name: str) -> Stream:
        return Stream(js, nc, name, patience=settings.io_patience, request_timeout=settings.request_timeout)

    events_stream = stream(names.events_stream)
    dead_letters = DeadLetters(events_stream, names)
    # A renewal stuck on a request lost in a failover must be sent again within an interval, not a
    # whole request timeout later: presence asks with timeouts no longer than its interval.
    beat = min(settings.request_timeout, max(0.5, settings.presence_interval))
    presence_bucket = Bucket(js, nc, names.presence_bucket, patience=settings.io_patience, request_timeout=beat)
    presence = Presence(presence_bucket, interval=settings.presence_interval, ttl=settings.presence_ttl)
    records = RecordStore(bucket(names.registry_bucket))
    registry = Registry(records, presence, terminal_ttl=settings.session_retention)
    # The reply subjects this connection hands out: its configured inbox prefix and a dot.
    reply_prefix = bytes(getattr(nc, "_inbox_prefix", b"_INBOX")).decode() + "."
    effects = TaskEffects(
        nc, stream(names.dispatch_stream), Journal(events_stream, names), names, inline_limit=settings.inline_limit
    )
    return Coord(
        nc=nc,
        js=js,
        names=names,
        settings=settings,
        observer=observer,
        presence=presence,
        tasks=TaskStore(bucket(names.tasks_bucket), effects, settings=settings, observer=observer),
        registry=registry,
        mailbox=Mailbox(stream(names.inbox_stream), names, registry, presence, dead_letters, reply_prefix=reply_prefix),
        events=Events(events_stream, names, records, dead_letters, retention=settings.events_max_age),
        dead_letters=dead_letters,
    )


def _split_servers(url: str) -> list[str]:
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise InvalidInput("server URL must not be empty (e.g. nats://127.0.0.1:4222)")
    return [u if "://" in u else f"nats://{u}" for u in servers]


async def _log_error(exc: Exception) -> None:
    log.debug("nats: %s", exc)


async def _open(
    url: str,
    namespace: str,
    auth: Auth,
    settings: Settings,
    observer: Observer,
    name: str | None,
    connect_timeout: float,
) -> Coord:
    names = Names(validate_namespace(namespace))
    servers = _split_servers(url)
    nc: NATS | None = None
    try:
        # nats-py keeps retrying an unreachable initial server when reconnects are unlimited, so
        # each attempt gets its own deadline and tenacity spaces the attempts out.
        async with asyncio.timeout(connect_timeout):
            async for attempt in AsyncRetrying(
                wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
                retry=retry_if_exception_type((OSError, nats.errors.Error, asyncio.TimeoutError)),
                reraise=True,
            ):
                with attempt:
                    nc = await asyncio.wait_for(
                        nats.connect(
                            servers=servers,
                            name=name,
                            connect_timeout=2,
                            allow_reconnect=True,
                            max_reconnect_attempts=-1,
                            reconnect_time_wait=0.25,
                            error_cb=_log_error,
                            **auth.nats_options(),
                        ),
                        timeout=2.5 * len(servers),
                    )
    except Exception as err:
        reason = str(err) or type(err).__name__
        if isinstance(err, TimeoutError):
            reason = "no server answered"
        raise ConnectionFailed(f"could not connect to NATS at {url} within {connect_timeout}s: {reason}") from err
    assert nc is not None
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
            retry=retry_if_exception_type((nats.errors.TimeoutError, ServiceUnavailableError)),
            reraise=True,
        ):
            with attempt:
                await _require_jetstream(js, url)
                await provision(js, names, settings)
        return compose(nc, js, names, settings, observer)
    except nats.js.errors.APIError as err:
        raise ServerUnsupported(
            f"NATS at {url} refused namespace {namespace!r} (replicas={settings.replicas}): {err.description}"
        ) from None
    except BaseException:
        await nc.close()
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
    connect_timeout: float = 10.0,
    settings: Settings | None = None,
    observer: Observer | None = None,
    **auth_kwargs: Any,
) -> _Connecting:
    """Connect to NATS at ``url`` (comma-separated for a cluster) and open ``namespace``.

    Use ``async with connect(url) as coord:`` or ``coord = await connect(url)``. Credentials come as
    an :class:`Auth` or as its fields in ``auth_kwargs`` (``user=``, ``password=``, ``token=``,
    ``creds_file=``, ``nkeys_seed=``, ``tls_ca=``, ``tls_cert=``, ``tls_key=``). ``settings``
    (default: :meth:`Settings.load`, i.e. the defaults and ``CORRAL_*`` variables) tunes every
    service; ``replicas`` overrides its field of that name. ``observer`` receives every task step
    (default: :class:`~coord.telemetry.observer.OtelObserver`, OpenTelemetry spans and metrics).

    Raises :class:`~coord.errors.InvalidId` for a bad namespace (before any network I/O),
    :class:`~coord.errors.ConnectionFailed` naming the URL when the server cannot be reached within
    ``connect_timeout``, :class:`~coord.errors.ServerUnsupported` without JetStream or before 2.11,
    and :class:`~coord.errors.ConfigConflict` when existing streams conflict with ours.
    """
    validate_namespace(namespace)
    auth = auth or Auth(**auth_kwargs)
    settings = (settings or Settings.load()).but(replicas=replicas)
    return _Connecting(url, namespace, auth, settings, observer or OtelObserver(), name, connect_timeout)
