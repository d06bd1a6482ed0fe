"""Opening one NATS client: :func:`dial`, the initial connection, with each failure named at once.

nats-py retries an initial connection forever when reconnects are unlimited and reports what went
wrong only through its error callback, so a wrong password used to look like a server that never
answered. :func:`dial` watches that callback: an authorization violation
(:class:`~coord.errors.AuthenticationFailed`, naming the kind of credential) or a TLS failure
(:class:`~coord.errors.TLSFailed`) ends the attempt at once and is never retried; a host name that
does not resolve is :class:`~coord.errors.ConnectionFailed` before any connection is tried. A
refused port is retried for ``connect_timeout`` (the server may be starting) and then reported as
"connection refused"; a server that does not answer, or answers slowly (a TLS handshake over a long
link), has at least nats-py's 2 s per server before "no server answered".

When TLS is requested, a server that does not offer TLS is refused before anything (credentials
included) is written to it, on the first connection and on every reconnect: TLS is never silently
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NATS
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from coord.client import CorralClient
from coord.errors import AuthenticationFailed, ConnectionFailed, CorralError, TLSFailed

__all__ = ["ErrorCallback", "dial", "wants_tls"]

log = logging.getLogger("corral.connection")

ErrorCallback = Callable[[NATS, Exception], Awaitable[None]]
"""Called with the client and every error nats-py reports on it (during and after the connection)."""

_AUTH_MARKERS = ("authorization violation", "authentication expired", "authorization failed")


class _NoTLS(nats.errors.Error):
    """The server's INFO offers no TLS while TLS was requested."""

    def __str__(self) -> str:
        return "the server does not offer TLS"


class _TLSOnlyClient(CorralClient):
    """A nats-py client that never speaks plaintext past the server's INFO line (TLS was requested)."""

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        # Called with the INFO of every (re)connection before CONNECT (and its credentials) is sent.
        scheme = self._current_server.uri.scheme if self._current_server is not None else ""
        if initial_connection and scheme != "wss":  # a wss:// connection is TLS by its websocket
            if scheme == "ws" or not (info.get("tls_required") or info.get("tls_available")):
                raise _NoTLS()
            info["tls_required"] = True  # upgrade also where the server merely allows TLS
        await super()._process_info(info, initial_connection)


class _Retry(Exception):
    """One attempt ran out of time without a decisive error; try again."""


def wants_tls(servers: list[str], tls_options: bool) -> bool:
    """Whether TLS is requested: a ``tls://`` URL or a TLS option (CA, client certificate)."""
    return tls_options or any(urlsplit(s).scheme == "tls" for s in servers)


class _Watch:
    """What the error callback saw while connecting: the first decisive failure, the last other reason."""

    def __init__(self, url: str, kind: str, refused_for: float = float("inf")) -> None:
        self.url = url
        self.kind = kind
        loop = asyncio.get_running_loop()
        self.fatal: asyncio.Future[CorralError] = loop.create_future()
        self.last: str | None = None
        self.connecting = True
        self.refused_for = refused_for
        self._give_up = loop.time() + refused_for
        self._deadline = loop.call_later(refused_for, self.expire) if refused_for != float("inf") else None

    def expire(self) -> None:
        """Past the deadline with nothing but refusals: nobody listens, report it now."""
        if self.connecting and self.last == "connection refused" and not self.fatal.done():
            self.fatal.set_result(
                ConnectionFailed(
                    f"could not connect to NATS at {self.url} within {self.refused_for}s: connection refused"
                )
            )

    def done(self) -> None:
        """Connecting is over: later errors are the connection's own."""
        self.connecting = False
        if self._deadline is not None:
            self._deadline.cancel()

    def saw(self, exc: BaseException) -> None:
        if not self.connecting:
            return
        decisive = self.decisive(exc)
        if decisive is not None:
            if not self.fatal.done():
                self.fatal.set_result(decisive)
            return
        if isinstance(exc, ConnectionRefusedError):
            self.last = "connection refused"
            if asyncio.get_running_loop().time() >= self._give_up:
                self.expire()
        elif isinstance(exc, asyncio.TimeoutError | TimeoutError):
            self.last = "no server answered"
        elif isinstance(exc, socket.gaierror):
            self.last = f"cannot resolve a host ({exc.strerror or exc})"
        else:
            self.last = str(exc) or type(exc).__name__

    def decisive(self, exc: BaseException) -> CorralError | None:
        text = str(exc).lower()
        if isinstance(exc, _NoTLS):
            return TLSFailed(
                f"TLS was requested for NATS at {self.url} but the server does not offer TLS; "
                f"refusing to connect in plaintext"
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            why = str(exc.verify_message or exc.reason).rstrip(".")
            hint = "use a host name the certificate names" if "mismatch" in why.lower() else "give its CA with --tls-ca"
            return TLSFailed(
                f"TLS with NATS at {self.url} failed: the server's certificate is not trusted ({why}); {hint}"
            )
        if isinstance(exc, ssl.SSLError | nats.errors.SecureConnFailedError | nats.errors.SecureConnWantedError):
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
            return TLSFailed(f"TLS with NATS at {self.url} failed: {reason}")
        if isinstance(exc, nats.errors.AuthorizationError) or any(m in text for m in _AUTH_MARKERS):
            if self.kind == "no credentials":
                return AuthenticationFailed(
                    f"NATS at {self.url} requires credentials and none were given: Authorization Violation"
                )
            return AuthenticationFailed(
                f"NATS at {self.url} refused the credentials given ({self.kind}): Authorization Violation"
            )
        return None


async def _resolvable(servers: list[str], url: str) -> None:
    """Raise ConnectionFailed naming the host(s) when no server's host name resolves."""
    loop = asyncio.get_running_loop()
    failures: list[str] = []
    for server in servers:
        parts = urlsplit(server)
        host = parts.hostname
        if not host:
            return
        try:
            ipaddress.ip_address(host)
            return  # an address needs no lookup
        except ValueError:
            pass
        try:
            await loop.getaddrinfo(host, parts.port, type=socket.SOCK_STREAM)
            return
        except socket.gaierror as err:
            failures.append(f"{host!r} ({err.strerror or err})")
    if failures:
        raise ConnectionFailed(f"could not connect to NATS at {url}: cannot resolve host {', '.join(failures)}")


async def _close_quietly(nc: NATS) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), timeout=1)


async def _attempt(
    servers: list[str],
    watch: _Watch,
    on_error: ErrorCallback,
    client: type[NATS],
    options: dict[str, Any],
) -> NATS:
    nc = client()

    async def error_cb(exc: Exception) -> None:
        log.debug("nats: %s", exc)
        watch.saw(exc)
        await on_error(nc, exc)

    settings: dict[str, Any] = {
        "connect_timeout": 2,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "error_cb": error_cb,
        **options,
    }
    connecting = asyncio.ensure_future(nc.connect(servers=servers, **settings))
    racing: set[asyncio.Future[Any]] = {connecting, watch.fatal}
    try:
        done, _ = await asyncio.wait(racing, timeout=2.5 * len(servers), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        connecting.cancel()
        await _close_quietly(nc)
        raise
    if connecting in done:
        err = connecting.exception()
        if err is None:
            return nc
        decisive = watch.decisive(err)
        if decisive is not None:
            raise decisive from err
        if isinstance(err, OSError | nats.errors.Error | asyncio.TimeoutError):
            watch.saw(err)
            raise _Retry() from err
        raise ConnectionFailed(f"could not connect to NATS at {watch.url}: {err or type(err).__name__}") from err
    connecting.cancel()
    await _close_quietly(nc)
    if watch.fatal in done:
        raise watch.fatal.result()
    raise _Retry()


async def dial(
    servers: list[str],
    *,
    url: str,
    kind: str,
    require_tls: bool,
    connect_timeout: float,
    on_error: ErrorCallback,
    options: dict[str, Any],
) -> NATS:
    """Connect a nats-py client to ``servers`` (reconnecting forever afterwards), trying for ``connect_timeout``.

    Servers that refuse are tried again until ``connect_timeout``; one that is silent or slow has at
    least 2.5 s per server (one nats-py attempt), whatever ``connect_timeout`` says.

    ``url`` is how errors name the server, ``kind`` the credential in use (``user/password``,
    ``token``, ``nkey``, ``creds file``, ``no credentials``); ``options`` go to ``nats.connect``;
    ``on_error`` receives every error the client reports, for its whole life. With ``require_tls``
    the client refuses any server that does not offer TLS.

    Raises :class:`~coord.errors.AuthenticationFailed` (at once, never retried) when the server
    refuses the credentials, :class:`~coord.errors.TLSFailed` (at once) when TLS cannot be
    established or was requested from a server without it, and
    :class:`~coord.errors.ConnectionFailed` naming the host when no host name resolves, or naming
    the last reason ("connection refused", "no server answered") when the deadline passes.
    """
    watch = _Watch(url, kind, refused_for=connect_timeout)
    client = _TLSOnlyClient if require_tls else CorralClient
    nc: NATS | None = None
    # A refused port ends at connect_timeout (the watch); anything else may take one attempt's time.
    bound = max(connect_timeout, 2.5 * len(servers))
    try:
        async with asyncio.timeout(bound):
            await _resolvable(servers, url)
            async for attempt in AsyncRetrying(
                wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
                retry=retry_if_exception_type(_Retry),
                reraise=True,
            ):
                with attempt:
                    nc = await _attempt(servers, watch, on_error, client, options)
    except (_Retry, TimeoutError) as err:
        raise ConnectionFailed(
            f"could not connect to NATS at {url} within {bound}s: {watch.last or 'no server answered'}"
        ) from err
    finally:
        watch.done()
    assert nc is not None
    return nc
