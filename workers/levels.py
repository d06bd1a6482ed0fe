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
* **No empty probe after a short fetch.** A fetch that got fewer notifications than it asked for
  saw every level drained; the next one goes straight to the wait on every level (which answers
  at once with what is there by then) instead of first probing with no-wait pulls that would
  mostly come back empty: one request per task, not three messages, for a worker that keeps up.
  A full fetch (there may be more) goes back to the weighted no-wait pulls.

The pulling itself (raw no-wait and idle pulls, messages kept for the next fetch) is
:class:`coord.consumer.Puller`'s; this module only decides how many to ask of which level.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from nats.aio.msg import Msg

from coord.connection import Coord
from coord.consumer import Puller
from coord.priority import LEVELS, Priority

__all__ = [
    "PROBE_INTERVAL",
    "WARM_FOR",
    "WEIGHTS",
    "Levels",
]


WEIGHTS: dict[Priority, int] = {Priority.HIGH: 6, Priority.NORMAL: 3, Priority.LOW: 1}
"""Shares of a worker's slots per level while several levels have work."""
WARM_FOR = 5.0
"""Seconds a level that delivered work is asked in every batch afterwards."""
PROBE_INTERVAL = 0.5
"""Longest a busy worker goes without asking a level that is not warm (its pickup latency under load)."""


@dataclass
class _Level:
    priority: Priority
    puller: Puller
    weight: int
    warm_until: float = 0.0
    probed_at: float = float("-inf")
    credit: int = 0


class Levels:
    """Fetches the notifications of one queue from all its priority levels (see the module docstring).

    The levels' consumers must exist (:class:`coord.consumer.ConsumerCheck` sees to it); :meth:`open`
    before fetching, :meth:`close` after.
    """

    def __init__(self, coord: Coord, queue: str, *, idle_wait: float, asked: asyncio.Event | None = None) -> None:
        self.queue = queue
        """The queue served."""
        self.asked = asked or asyncio.Event()
        """Set once a fetch has work, or is waiting on every level for some (the worker is fetching)."""
        self._idle_wait = idle_wait
        self._drained = False
        """The last fetch got fewer than it asked for (the next one waits on every level at once)."""
        self._arrived = asyncio.Event()
        """Set when a notification, or the end of an idle pull, arrives on any level."""
        stream = coord.names.dispatch_stream
        self._levels = [
            _Level(
                priority=p,
                puller=Puller(coord.nc, stream, coord.names.queue_consumer(queue, p), on_arrival=self._arrived.set),
                weight=WEIGHTS[p],
            )
            for p in LEVELS
        ]

    @property
    def consumers(self) -> list[str]:
        """The durable consumers of the levels, most urgent first."""
        return [level.puller.consumer for level in self._levels]

    async def open(self) -> Levels:
        """Listen for the answers to every level's pull requests."""
        for level in self._levels:
            await level.puller.open()
        return self

    async def close(self) -> None:
        """Stop listening; notifications received and not handed out are NAKed (redelivered at once)."""
        for level in self._levels:
            await level.puller.close()

    async def settle(self, within: float) -> None:
        """Once every level's idle pull has ended (waiting ``within`` s at most), put back (NAK) what was
        received and not handed out; the levels stay open. A fetcher that fetches only when asked calls
        it after its last fetch, so nothing waits unsettled until the next one."""
        await asyncio.gather(*(level.puller.settle(within) for level in self._levels))

    async def _pull(self, level: _Level, want: int) -> list[Msg]:
        """One no-wait pull of up to ``want`` messages: what the level has now."""
        return await level.puller.pull(want, patience=self._idle_wait)

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
        msgs = await self._fetch(n)
        self._drained = len(msgs) < n
        return msgs

    async def _fetch(self, n: int) -> list[Msg]:
        kept: list[Msg] = []
        for level in self._levels:  # what arrived for requests nobody waits for any more comes first
            kept += level.puller.take(n - len(kept))
        if kept:
            self.asked.set()
            return kept
        now = asyncio.get_running_loop().time()
        if self._drained:
            return await self._wait_all(n, now)
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
            self.asked.set()
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
        self._arrived.clear()
        for level in self._levels:
            await level.puller.idle(n, self._idle_wait)
        self.asked.set()
        if not any(level.puller.received for level in self._levels):
            try:
                async with asyncio.timeout(self._idle_wait):
                    await self._arrived.wait()
            except TimeoutError:
                pass
        out: list[Msg] = []
        for level in self._levels:  # most urgent first
            level.puller.check_idle()
            taken = level.puller.take(n - len(out))
            self._saw(level, now, bool(taken))
            out += taken
        return out
