"""Raw pulls from one durable consumer: :class:`Puller` (no-wait pulls, and idle pulls kept across fetches).

A pull request is sent by hand (:func:`coord.natscompat.request_next`) rather than with nats-py's
``fetch``, whose batch fetch long-polls after its no-wait probe. Each request has its own reply
subject under the puller's inbox; a message delivered to a request nobody waits for any more (an
idle pull that lost the race to another consumer) is kept and handed out first by the next take,
or put back (NAK) on close.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from coord.errors import CorralError
from coord.naming import consumer_next_subject
from coord.natscompat import request_next

__all__ = ["PullRefused", "Puller"]

log = logging.getLogger("corral.consumer")

_END = frozenset({"404", "408"})
"""Statuses that end a pull request normally: no (more) messages, request expired."""
_HEARTBEAT = "100"


class PullRefused(CorralError):
    """The server refused a pull request (the consumer is gone, or its limits were reached)."""


@dataclass
class _Pull:
    """One pull request and what ended it."""

    token: str
    want: int
    refused: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Puller:
    """Pulls from durable ``consumer`` of ``stream`` over ``nc``; ``on_arrival`` is called when a message
    (or the end of an idle pull) arrives. :meth:`open` before use, :meth:`close` after."""

    def __init__(self, nc: NATS, stream: str, consumer: str, *, on_arrival: Callable[[], None] | None = None) -> None:
        self.consumer = consumer
        """The durable consumer pulled from."""
        self._nc = nc
        self._subject = consumer_next_subject(stream, consumer)
        self._inbox = nc.new_inbox()
        self._on_arrival = on_arrival
        self._arrived = asyncio.Event()
        self._tokens = itertools.count()
        self._sub: Subscription | None = None
        self._waiting: _Pull | None = None
        self._idle: _Pull | None = None
        self._idle_until = 0.0
        self.received: list[Msg] = []
        """Messages delivered and not handed out yet (a data message names its stream subject, not the
        request it answers, so every delivery lands here)."""

    async def open(self) -> None:
        """Listen for the answers to this puller's requests."""
        if self._sub is None:
            self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._receive)

    async def close(self) -> None:
        """Stop listening; messages received and not handed out are put back (redelivered at once)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as err:
                log.debug("unsubscribing from %s: %s", self.consumer, err)
        self._idle = None
        await self._put_back()

    async def settle(self, within: float) -> None:
        """Wait (at most ``within`` s) for the outstanding idle pull to end, then put back (NAK) what
        was received and not handed out: for a caller that fetches now and then and keeps the puller
        open, nothing it fetched waits unsettled (for its ack wait) between two fetches."""
        idle = self._idle
        if idle is not None and not idle.done.is_set():
            try:
                async with asyncio.timeout(within):
                    await idle.done.wait()
            except TimeoutError:
                pass
        await self._put_back()

    async def _put_back(self) -> None:
        held, self.received = self.received, []
        for msg in held:
            try:
                await msg.nak()
            except Exception as err:
                log.info("could not put back a held message on %s: %s", msg.subject, err)

    def _arrival(self) -> None:
        self._arrived.set()
        if self._on_arrival is not None:
            self._on_arrival()

    async def _receive(self, msg: Msg) -> None:
        waiting = self._waiting
        status = msg.headers.get("Status") if msg.headers and not msg.data else None
        if status is None:
            self.received.append(msg)
            self._arrival()
            if self._idle is not None:  # a delivery ends a no-wait pull (the server sends no status)
                self._idle.done.set()
            if waiting is not None and len(self.received) >= waiting.want:
                waiting.done.set()
            return
        if status == _HEARTBEAT:
            return
        token = msg.subject.rpartition(".")[2]
        for pull in (waiting, self._idle):
            if pull is not None and pull.token == token:
                if status not in _END:
                    pull.refused = f"{status} {msg.headers.get('Description', '') if msg.headers else ''}".strip()
                pull.done.set()
                self._arrival()
        # any other status ends a request nobody waits for any more

    async def _request(self, want: int, wait: float | None) -> _Pull:
        pull = _Pull(str(next(self._tokens)), want)
        await request_next(self._nc, self._subject, f"{self._inbox}.{pull.token}", batch=want, wait=wait)
        return pull

    async def pull(self, want: int, *, patience: float) -> list[Msg]:
        """One no-wait pull of up to ``want`` messages: what the consumer has now (waiting at most
        ``patience`` seconds for the server's answer; what comes later is kept for :meth:`take`)."""
        try:
            self._waiting = pull = await self._request(want, None)
            try:
                async with asyncio.timeout(patience):
                    await pull.done.wait()
            except TimeoutError:
                pass
        finally:
            self._waiting = None
        self._raise_if_refused(pull)
        return self.take(want)

    async def idle(self, want: int, wait: float) -> None:
        """Make sure an idle pull (answered as soon as one message arrives, expiring after ``wait``
        seconds) is outstanding: one per puller, kept across calls until it ends or expires."""
        loop = asyncio.get_running_loop()
        idle = self._idle
        if idle is None or idle.done.is_set() or loop.time() >= self._idle_until:
            self._idle = await self._request(want, wait)
            self._idle_until = loop.time() + 0.9 * wait  # the server's clock started later

    async def fetch(self, most: int, *, wait: float) -> list[Msg]:
        """Up to ``most`` messages: what the consumer has now, or else the first that arrive within
        ``wait`` seconds (an idle pull); [] when none came. :class:`PullRefused` when the server refused."""
        got = self.take(most) or await self.pull(most, patience=wait)
        if got:
            return got
        self._arrived.clear()
        await self.idle(most, wait)
        if not self.received:
            try:
                async with asyncio.timeout(wait):
                    await self._arrived.wait()
            except TimeoutError:
                pass
        self.check_idle()
        return self.take(most)

    def check_idle(self) -> None:
        """Raise :class:`PullRefused` if the server refused the idle pull (and nothing was received)."""
        if self._idle is not None:
            self._raise_if_refused(self._idle)

    def take(self, most: int) -> list[Msg]:
        """Up to ``most`` of the messages received and not handed out yet, oldest first."""
        taken, self.received = self.received[:most], self.received[most:]
        return taken

    def _raise_if_refused(self, pull: _Pull) -> None:
        if pull.refused is not None and not self.received:
            if pull is self._idle:
                self._idle = None
            raise PullRefused(f"pull from consumer {self.consumer} refused: {pull.refused}")
