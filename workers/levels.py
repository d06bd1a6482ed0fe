"""A queue's notifications across its priority levels: one durable consumer per level, one weighted fetch.

Each priority level of a queue has its own subjects and durable pull consumer
(:meth:`coord.naming.Names.queue_consumer`), so a task submitted ``high`` is not queued behind a
backlog of thousands of ``normal`` ones: the worker asks the levels, not one stream order.

How a batch of ``n`` free slots is filled (:meth:`Levels.fetch`):

* **Weighted, starvation-free share.** The slots go to the levels asked, in the proportions of
  :data:`WEIGHTS` (high 6, normal 3, low 1) by a smooth weighted round robin whose state carries
  over from batch to batch (so a worker with one slot keeps the same shares): with a backlog on all
  three, 60% of the tasks taken are high, 30% normal, 10% low; with high and low only, 6 in 7 and
  1 in 7. A level with no work gives its share to the others, so low work runs at full speed when
  nothing else waits, and never waits for more than nine higher tasks in a row.
* **No cost for levels never used.** A level is asked in every batch only while it is *warm* (it
  delivered work within :data:`WARM_FOR` seconds); any other level is probed at most every
  :data:`PROBE_INTERVAL` seconds. A worker that only ever sees normal tasks sends one no-wait pull
  per batch, as before, plus two empty probes per half second.
* **Never waiting on an empty level.** Every pull of a busy worker is *no-wait* (the server answers
  at once with what it has); a level that returns its whole share may have more, and fills what
  the others left. Only when no level has anything does the worker wait, on every level at once
  (a no-wait pull with an expiry: the server answers as soon as one message arrives), so a task
  arriving on any level of an idle worker is picked up at once.

Pull requests are made by hand (``$JS.API.CONSUMER.MSG.NEXT``) rather than with nats-py's
``fetch``, whose batch fetch long-polls after its no-wait probe. Each request has its own reply
subject; a message delivered to a request nobody waits for any more (an idle wait that lost the
race to another level) is kept and handed out first by the next fetch, or NAKed on close.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as js_api

from coord.connection import Coord
from coord.errors import CorralError
from coord.naming import consumer_next_subject
from coord.priority import LEVELS, Priority

__all__ = [
    "NOTIFICATION_ACK_WAIT",
    "PROBE_INTERVAL",
    "SERVER_MAX_DELIVERIES",
    "WARM_FOR",
    "WEIGHTS",
    "Levels",
    "ensure_consumer",
]

log = logging.getLogger("corral.worker")

WEIGHTS: dict[Priority, int] = {Priority.HIGH: 6, Priority.NORMAL: 3, Priority.LOW: 1}
"""Shares of a worker's slots per level while several levels have work."""
WARM_FOR = 5.0
"""Seconds a level that delivered work is asked in every batch afterwards."""
PROBE_INTERVAL = 0.5
"""Longest a busy worker goes without asking a level that is not warm (its pickup latency under load)."""

NOTIFICATION_ACK_WAIT = 5.0
"""Seconds a fetched notification may stay unacked before redelivery. It only covers fetch -> claim
(milliseconds); a worker that dies in between delays the task by at most this much. A redelivered
notification whose task was claimed meanwhile is simply dropped."""
SERVER_MAX_DELIVERIES = 20
"""The consumer's own bound: a notification that keeps killing its workers is dropped by the server."""
_END = frozenset({"404", "408"})
"""Statuses that end a pull request normally: no (more) messages, request expired."""
_HEARTBEAT = "100"


async def ensure_consumer(coord: Coord, queue: str, priority: Priority = Priority.NORMAL) -> str:
    """Create (or update to corral's config) the shared durable consumer of ``queue`` at ``priority``."""
    durable = coord.names.queue_consumer(queue, priority)
    config = js_api.ConsumerConfig(
        durable_name=durable,
        filter_subject=coord.names.queue_filter(queue, priority),
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=NOTIFICATION_ACK_WAIT,
        max_deliver=SERVER_MAX_DELIVERIES,
        max_ack_pending=-1,
        max_waiting=4096,
    )
    await coord.js.add_consumer(coord.names.dispatch_stream, config)
    return durable


@dataclass
class _Pull:
    """The pull request a level's fetch is waiting on."""

    token: str
    want: int
    refused: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Level:
    priority: Priority
    consumer: str
    subject: str
    inbox: str
    weight: int
    sub: Subscription | None = None
    warm_until: float = 0.0
    probed_at: float = float("-inf")
    credit: int = 0
    waiting: _Pull | None = None
    idle: _Pull | None = None
    """The level's idle pull (no-wait with an expiry), kept across fetches until it ends or expires."""
    idle_until: float = 0.0
    received: list[Msg] = field(default_factory=list)
    """Messages delivered to this worker and not handed out yet (a data message names its stream
    subject, not the request it answers, so every delivery of the level lands here)."""


class Levels:
    """Fetches the notifications of one queue from all its priority levels (see the module docstring)."""

    def __init__(self, coord: Coord, queue: str, *, idle_wait: float) -> None:
        self.queue = queue
        """The queue served."""
        self._coord = coord
        self._idle_wait = idle_wait
        self._tokens = itertools.count()
        self._arrived = asyncio.Event()
        """Set when a notification, or the end of an idle pull, arrives on any level."""
        stream = coord.names.dispatch_stream
        self._levels = [
            _Level(
                priority=p,
                consumer=coord.names.queue_consumer(queue, p),
                subject=consumer_next_subject(stream, coord.names.queue_consumer(queue, p)),
                inbox=coord.nc.new_inbox(),
                weight=WEIGHTS[p],
            )
            for p in LEVELS
        ]

    @property
    def consumers(self) -> list[str]:
        """The durable consumers of the levels, most urgent first."""
        return [level.consumer for level in self._levels]

    async def open(self) -> Levels:
        """Create (or update) every level's consumer and listen for pull answers."""
        for level in self._levels:
            await ensure_consumer(self._coord, self.queue, level.priority)
            if level.sub is None:
                level.sub = await self._coord.nc.subscribe(f"{level.inbox}.*", cb=self._receiver(level))
        return self

    async def close(self) -> None:
        """Stop listening; notifications received and not handed out are NAKed (redelivered at once)."""
        for level in self._levels:
            sub, level.sub = level.sub, None
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception as err:
                    log.debug("unsubscribing from %s: %s", level.consumer, err)
            level.idle = None
            held, level.received = level.received, []
            for msg in held:
                try:
                    await msg.nak()
                except Exception as err:
                    log.debug("could not NAK a held notification on %s: %s", msg.subject, err)

    def _receiver(self, level: _Level) -> Callable[[Msg], Awaitable[None]]:
        async def receive(msg: Msg) -> None:
            waiting = level.waiting
            status = msg.headers.get("Status") if msg.headers and not msg.data else None
            if status is None:
                level.received.append(msg)
                self._arrived.set()
                if level.idle is not None:  # a delivery ends a no-wait pull (the server sends no status)
                    level.idle.done.set()
                if waiting is not None and len(level.received) >= waiting.want:
                    waiting.done.set()
                return
            if status == _HEARTBEAT:
                return
            token = msg.subject.rpartition(".")[2]
            for pull in (waiting, level.idle):
                if pull is not None and pull.token == token:
                    if status not in _END:
                        pull.refused = f"{status} {msg.headers.get('Description', '') if msg.headers else ''}".strip()
                    pull.done.set()
                    self._arrived.set()
            # any other status ends a request nobody waits for any more

        return receive

    async def _request(self, level: _Level, want: int, wait: float | None) -> _Pull:
        """Send one pull request of up to ``want`` messages: no-wait, or (``wait``) until the first arrives."""
        pull = _Pull(str(next(self._tokens)), want)
        request: dict[str, object] = {"batch": want, "no_wait": True}
        if wait is not None:
            request["expires"] = int(wait * 1e9)
        await self._coord.nc.publish(level.subject, json.dumps(request).encode(), reply=f"{level.inbox}.{pull.token}")
        return pull

    async def _pull(self, level: _Level, want: int) -> list[Msg]:
        """One no-wait pull of up to ``want`` messages: what the level has now."""
        try:
            level.waiting = pull = await self._request(level, want, None)
            try:
                async with asyncio.timeout(self._idle_wait):
                    await pull.done.wait()
            except TimeoutError:
                pass  # the server is slow or away: what came is used, what comes later is kept
        finally:
            level.waiting = None
        _raise_if_refused(level, pull)
        return self._take(level, want)

    @staticmethod
    def _take(level: _Level, most: int) -> list[Msg]:
        taken, level.received = level.received[:most], level.received[most:]
        return taken

    def _share(self, asked: Sequence[_Level], n: int) -> dict[int, int]:
        """Slots per asked level (by position in ``asked``): smooth weighted round robin over ``n`` picks."""
        if len(asked) == 1:
            return {0: n}
        total = sum(level.weight for level in asked)
        counts = dict.fromkeys(range(len(asked)), 0)
        for _ in range(n):
            for level in asked:
                level.credit += level.weight
            best = max(range(len(asked)), key=lambda i: asked[i].credit)
            asked[best].credit -= total
            counts[best] += 1
        return counts

    async def fetch(self, n: int) -> list[Msg]:
        """Up to ``n`` notifications, shared among the levels by weight; waits up to ``idle_wait``
        seconds (on every level at once) only when no level has any. Most urgent first."""
        kept: list[Msg] = []
        for level in self._levels:  # what arrived for requests nobody waits for any more comes first
            kept += self._take(level, n - len(kept))
        if kept:
            return kept
        now = asyncio.get_running_loop().time()
        asked = [lv for lv in self._levels if lv.warm_until > now or now - lv.probed_at >= PROBE_INTERVAL]
        got: dict[int, list[Msg]] = {}
        if asked:
            shares = self._share(asked, n)
            pulled = [i for i in range(len(asked)) if shares[i]]
            answers = await asyncio.gather(*(self._pull(asked[i], shares[i]) for i in pulled))
            got = dict(zip(pulled, answers, strict=True))
            for i, msgs in got.items():
                self._saw(asked[i], now, bool(msgs))
            # Fill what empty levels left: first from levels that gave their whole share (they may
            # have more), then from levels not pulled this time, most urgent first.
            more = [i for i in pulled if len(got[i]) == shares[i]] + [i for i in range(len(asked)) if i not in got]
            for i in sorted(more, key=lambda i: LEVELS.index(asked[i].priority)):
                left = n - sum(len(m) for m in got.values())
                if left <= 0:
                    break
                extra = await self._pull(asked[i], left)
                self._saw(asked[i], now, bool(extra) or bool(got.get(i)))
                got[i] = [*got.get(i, []), *extra]
        msgs = [m for i in sorted(got, key=lambda i: LEVELS.index(asked[i].priority)) for m in got[i]]
        if msgs:
            return msgs
        return await self._wait_all(n, now)

    def _saw(self, level: _Level, now: float, work: bool) -> None:
        level.probed_at = now
        if work:
            level.warm_until = now + WARM_FOR
        else:
            level.warm_until = 0.0
            level.credit = 0

    async def _wait_all(self, n: int, now: float) -> list[Msg]:
        """Wait on every level at once until one delivers (or ``idle_wait`` passes); a surplus, and the
        others' late deliveries, are kept for the next fetch.

        Each level's idle pull is kept until it ends (it delivered, or expired): an idle worker has at
        most one pull waiting per level on the server, not one more per fetch.
        """
        loop = asyncio.get_running_loop()
        self._arrived.clear()
        for level in self._levels:
            idle = level.idle
            if idle is None or idle.done.is_set() or loop.time() >= level.idle_until:
                level.idle = await self._request(level, n, self._idle_wait)
                level.idle_until = loop.time() + 0.9 * self._idle_wait  # the server's clock started later
        if not any(level.received for level in self._levels):
            try:
                async with asyncio.timeout(self._idle_wait):
                    await self._arrived.wait()
            except TimeoutError:
                pass
        out: list[Msg] = []
        for level in self._levels:  # most urgent first
            if level.idle is not None:
                _raise_if_refused(level, level.idle)
            taken = self._take(level, n - len(out))
            self._saw(level, now, bool(taken))
            out += taken
        return out


def _raise_if_refused(level: _Level, pull: _Pull) -> None:
    if pull.refused is not None and not level.received:
        if pull is level.idle:
            level.idle = None
        raise CorralError(f"pull from consumer {level.consumer} refused: {pull.refused}")
