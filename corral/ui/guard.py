"""Who may talk to the dashboard: the Host and Origin of every request, and the token of every action.

A page on another site cannot read the dashboard (the browser's same-origin policy), unless it
rebinds its own host name to the dashboard's address (DNS rebinding): its requests then carry its
own name as ``Host`` (and ``Origin``). :class:`Guard` therefore answers:

- **421** to a request whose ``Host`` is not an address this dashboard serves: the address it
  listens on with its port (an IP literal; for ``0.0.0.0``/``::`` any IP literal, since no name
  resolves into a literal), ``localhost`` when it listens on loopback or every interface, and the
  names given with ``--allowed-host`` / ``CORRAL_UI_ALLOWED_HOSTS`` (a reverse proxy's name: with a
  port, that port only; without, any);
- **403** to a request carrying an ``Origin`` that is not ``http(s)://`` one of those (``null``
  included): another site's page, or a sandboxed one;
- **403** to an action (``POST``) without this process's token in the ``X-Corral-Action`` header
  (:meth:`Guard.action_refusal`, checked after the dashboard's read-only refusal). The
  token is random per process and reaches only the dashboard's own page, inside the HTML it serves
  (a page of another origin cannot read it), which sends it back.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import web

from coord.errors import InvalidInput

__all__ = ["ACTION_HEADER", "ALLOWED_HOSTS_ENV", "Guard", "parse_allowed_hosts"]

ACTION_HEADER = "X-Corral-Action"
"""Header that carries the action token (the dashboard's own page sends it)."""

ALLOWED_HOSTS_ENV = "CORRAL_UI_ALLOWED_HOSTS"
"""Environment variable with extra names the dashboard answers to (comma- or space-separated)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _split(hostport: str) -> tuple[str, int | None]:
    """``host[:port]`` (brackets around IPv6) as ``(lower-case host, port or None)``; InvalidInput if malformed."""
    try:
        parts = urlsplit(f"//{hostport}")
        host, port = parts.hostname, parts.port
    except ValueError:
        raise InvalidInput(f"not a host[:port]: {hostport!r}") from None
    if not host or parts.username is not None or parts.path or parts.query or parts.fragment:
        raise InvalidInput(f"not a host[:port]: {hostport!r}")
    return host.lower(), port


def parse_allowed_hosts(values: Iterable[str]) -> list[tuple[str, int | None]]:
    """The ``--allowed-host`` values (each may hold several, comma- or space-separated) as ``(host, port)``.

    :class:`InvalidInput` naming ``--allowed-host`` for a value that is not ``host[:port]``.
    """
    allowed: list[tuple[str, int | None]] = []
    for value in values:
        for item in value.replace(",", " ").split():
            try:
                allowed.append(_split(item))
            except InvalidInput as err:
                raise InvalidInput(f"--allowed-host: {err}") from None
    return allowed


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class Guard:
    """The Host, Origin and token checks of one dashboard (see the module docstring)."""

    def __init__(self, host: str, allowed: Iterable[tuple[str, int | None]] = ()) -> None:
        self.listen = _ip(host.strip("[]").lower())
        self.listen_name = host.strip("[]").lower()
        self.port = 0
        """The port served (set once listening)."""
        self.allowed = list(allowed)
        self.token = secrets.token_urlsafe(32)
        """This process's action token (embedded in the page it serves)."""

    def serves(self, host: str, port: int | None) -> bool:
        """Whether ``host:port`` (``port`` None: the scheme's default) names this dashboard."""
        for name, allowed_port in self.allowed:
            if name == host and (allowed_port is None or allowed_port == port):
                return True
        if port != self.port:
            return False
        ip = _ip(host)
        everywhere = self.listen is not None and self.listen.is_unspecified
        if ip is not None:
            return ip == self.listen or everywhere
        if host == "localhost":
            return everywhere or (self.listen is not None and self.listen.is_loopback)
        return host == self.listen_name  # --host given as a name

    def refusal(self, request: web.Request) -> web.Response | None:
        """The answer to a request that fails a check, or None when it passes."""
        try:
            host, port = _split(request.headers.get("Host", ""))
        except InvalidInput:
            host, port = "", None
        if not host or not self.serves(host, port if port is not None else 80):
            shown = request.headers.get("Host", "")
            return web.json_response(
                {
                    "error": f"Host {shown!r} is not an address this dashboard serves; "
                    f"a reverse proxy's name is added with --allowed-host or {ALLOWED_HOSTS_ENV}"
                },
                status=421,
            )
        origin = request.headers.get("Origin")
        if origin is not None and not self._same_site(origin):
            return web.json_response(
                {"error": f"Origin {origin!r} may not use this dashboard (only its own page may)"}, status=403
            )
        return None

    def action_refusal(self, request: web.Request) -> web.Response | None:
        """The 403 for an action without this process's token in ``X-Corral-Action``, or None."""
        given = request.headers.get(ACTION_HEADER, "")
        if hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        return web.json_response(
            {"error": f"actions need this dashboard's token in the {ACTION_HEADER} header (its own page sends it)"},
            status=403,
        )

    def _same_site(self, origin: str) -> bool:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        return self.serves(parts.hostname.lower(), port)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp middleware: a refused request never reaches ``handler``."""
        refused = self.refusal(request)
        if refused is not None:
            return refused
        return await handler(request)

    def page(self, html: bytes) -> bytes:
        """The dashboard's page with this process's token in a ``<meta name="corral-token">``."""
        meta = f'<meta name="corral-token" content="{self.token}">'.encode()
        return html.replace(b"<head>", b"<head>\n  " + meta, 1)
