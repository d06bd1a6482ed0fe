"""The only module that touches nats-py's internals: each use behind one function with a guard.

corral relies on four things nats-py does not offer as public API:

* :func:`set_restart_sequence`: where a re-created ordered consumer restarts (``_JSI._sseq``);
* :func:`install_header_parser`: a faster header parser (the ``Client._parse_header_lines`` hook);
* :func:`inbox_prefix`: the connection's inbox prefix (``Client._inbox_prefix``);
* :func:`request_next`: a raw pull request (``$JS.API.CONSUMER.MSG.NEXT``), because nats-py's batch
  fetch long-polls after its no-wait probe.

Each checks that what it relies on is still there and otherwise raises :class:`NatsCompatError`
naming the nats-py version and the internal, so a nats-py release that changes one fails loudly at
the first use — and in ``tests/coord/test_natscompat.py``, which pins each behaviour against a real
server — instead of silently doing something else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from coord.errors import CorralError

__all__ = [
    "TESTED",
    "NatsCompatError",
    "inbox_prefix",
    "install_header_parser",
    "nats_py_version",
    "request_next",
    "set_restart_sequence",
]

TESTED = "2.16"
"""The nats-py release line these functions were written and tested against."""


class NatsCompatError(CorralError):
    """nats-py no longer has an internal corral relies on (a nats-py release changed it)."""


def nats_py_version() -> str:
    """The installed nats-py version ("unknown" when it cannot be read)."""
    try:
        return version("nats-py")
    except PackageNotFoundError:
        return "unknown"


def _changed(what: str) -> NatsCompatError:
    return NatsCompatError(
        f"nats-py {nats_py_version()} changed {what} (corral was tested with nats-py {TESTED}.x); "
        "update coord/natscompat.py or install nats-py " + TESTED
    )


def set_restart_sequence(sub: JetStreamContext.PushSubscription, sequence: int) -> None:
    """Make the ordered consumer behind ``sub`` restart after stream ``sequence`` if nats-py re-creates it
    (nats-py restarts from the last sequence it delivered, which is 0 until the first message arrives)."""
    jsi = getattr(getattr(sub, "_sub", None), "_jsi", None)
    if jsi is None or not isinstance(getattr(jsi, "_sseq", None), int):
        raise _changed("the ordered consumer's restart sequence (Subscription._jsi._sseq)")
    jsi._sseq = sequence


def install_header_parser(cls: type[NATS], parser: Callable[[bytes], dict[str, str]]) -> None:
    """Make ``cls`` (a subclass of nats-py's client, never the client itself) parse header blocks with
    ``parser`` instead of nats-py's own."""
    if cls is NATS or not issubclass(cls, NATS):
        raise TypeError("install_header_parser: pass a subclass of nats.aio.client.Client")
    if not callable(getattr(NATS, "_parse_header_lines", None)):
        raise _changed("the header parser hook (Client._parse_header_lines)")
    cls._parse_header_lines = staticmethod(parser)  # type: ignore[method-assign,assignment]


def inbox_prefix(nc: NATS) -> str:
    """The inbox prefix ``nc`` makes reply subjects under (``_INBOX`` unless it was connected with one)."""
    raw: Any = getattr(nc, "_inbox_prefix", None)
    if not isinstance(raw, bytes | bytearray):
        raise _changed("the connection's inbox prefix (Client._inbox_prefix)")
    return bytes(raw).decode()


async def request_next(nc: NATS, subject: str, reply: str, *, batch: int, wait: float | None) -> None:
    """Send one pull request on ``subject`` (a ``CONSUMER.MSG.NEXT`` subject) answered on ``reply``:
    no-wait (the server answers at once with what it has), or with ``wait`` seconds of expiry (it
    answers as soon as one message arrives). The answers are ordinary messages to ``reply``; a status
    message (no data, ``Status`` header 404/408) ends the request."""
    request: dict[str, object] = {"batch": batch, "no_wait": True}
    if wait is not None:
        request["expires"] = int(wait * 1e9)
    await nc.publish(subject, json.dumps(request).encode(), reply=reply)
