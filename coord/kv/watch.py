"""Following a KV bucket as it changes: :class:`KeyWatch`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from coord.kv.bucket import Bucket
from coord.kv.entry import Entry
from coord.natscompat import set_restart_sequence
from coord.retry import retry_transient

__all__ = ["KeyWatch"]

log = logging.getLogger("corral.kv")


class KeyWatch:
    """Every change of the keys a pattern matches, fed to a callback: the latest entry of each key first.

    An ordered push consumer delivers the last entry per key; once that snapshot is in, it is
    swapped for one that follows every later write from the next revision (a last-per-key consumer
    costs the server more with every key the bucket holds). Both have an idle heartbeat, so a
    consumer lost to a server restart or a leader move is noticed within two to four heartbeats and
    re-created from the last revision seen (nats-py does this), with nothing skipped or repeated.
    :meth:`start` returns once every entry that existed when it subscribed has been passed to
    ``on_entry`` (:attr:`ready`), also when the pattern matches nothing. ``on_entry`` runs for one
    entry at a time; an exception there is logged and the watch goes on.
    """

    def __init__(
        self,
        bucket: Bucket,
        on_entry: Callable[[Entry], Awaitable[None] | None],
        *,
        keys: str = ">",
        headers_only: bool = False,
        heartbeat: float = 1.0,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.bucket = bucket
        """The watched bucket."""
        self.ready = asyncio.Event()
        """Set once the entries that existed at the start have been delivered."""
        self._on_entry = on_entry
        self._on_ready = on_ready
        self._keys = keys
        self._headers_only = headers_only
        self._heartbeat = heartbeat
        self._sub: JetStreamContext.PushSubscription | None = None
        self._target: int | None = None
        self._seen_consumer_seq = 0
        self._last_arrival = 0.0
        self._settler: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._stopped = False
        self._handling = asyncio.Lock()
        self.revision = 0
        """Highest revision delivered so far."""

    async def start(self, *, within: float | None = None) -> KeyWatch:
        """Subscribe (once) and wait until :attr:`ready` (``TimeoutError`` after ``within`` seconds)."""
        if self._sub is None and not self._stopped:
            self._sub = await retry_transient(
                self._subscribe, nc=self.bucket.nc, within=self.bucket.patience, what=f"watch {self.bucket.name}"
            )
            info = await self._sub.consumer_info()
            delivered = info.delivered.consumer_seq if info.delivered else 0
            self._target = (delivered or 0) + (info.num_pending or 0)
            self._check_ready()
            if not self.ready.is_set():
                self._settler = asyncio.create_task(self._settle_readiness(), name=f"watch-ready-{self.bucket.name}")
        async with asyncio.timeout(within):
            await self.ready.wait()
        return self

    async def _subscribe(self, after: int | None = None) -> JetStreamContext.PushSubscription:
        """The snapshot consumer (last entry per key), or, with ``after``, one that follows every write after it.

        The server keeps a last-per-key consumer's bookkeeping in step with the whole bucket, which
        costs more with every key it holds; once the snapshot is in, a plain consumer from the next
        revision delivers the same changes at a cost that does not grow with history.
        """
        if after is None:
            config = js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT)
        else:
            config = js_api.ConsumerConfig(
                deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
            )
        return await self.bucket.js.subscribe(
            self.bucket.subject(self._keys),
            stream=self.bucket.stream,
            cb=self._on_msg,
            ordered_consumer=True,
            headers_only=self._headers_only,
            idle_heartbeat=self._heartbeat,
            config=config,
            inactive_threshold=60.0,
        )

    async def _follow(self) -> None:
        """Add a follower from the last revision handled, then drop the snapshot consumer.

        Both deliver in revision order without gaps from where the follower starts, and
        :meth:`_on_msg` hands each revision on once, in order, so the overlap loses and repeats
        nothing; until the follower is in place the snapshot consumer goes on delivering. A stop
        while the follower is being created unsubscribes it as soon as it exists.
        """
        old = self._sub
        if old is None or self._stopped:
            return
        start = self.revision
        creating = asyncio.ensure_future(
            retry_transient(
                lambda: self._subscribe(after=start),
                nc=self.bucket.nc,
                within=self.bucket.patience,
                what=f"follow {self.bucket.name}",
            )
        )
        try:
            sub = await asyncio.shield(creating)
        except asyncio.CancelledError:
            creating.add_done_callback(_unsubscribe_when_created)
            raise
        except Exception as err:  # the snapshot consumer keeps the watch going
            log.warning("watch of %s: could not switch to following it (%s)", self.bucket.name, err)
            return
        # nats-py re-creates a lost ordered consumer from the last stream sequence it delivered,
        # which is 0 until the first write arrives: tell it where this one started.
        set_restart_sequence(sub, start)
        if self._stopped:
            await _unsubscribe(sub)
            return
        self._sub = sub
        await _unsubscribe(old)

    async def _on_msg(self, msg: Msg) -> None:
        meta = msg.metadata
        self._last_arrival = asyncio.get_running_loop().time()
        self._seen_consumer_seq = max(self._seen_consumer_seq, meta.sequence.consumer)
        entry = self.bucket.entry_from(msg, headers_only=self._headers_only)
        async with self._handling:  # two consumers overlap while the follower takes over
            if entry.revision <= self.revision:
                return  # already handled
            try:
                result = self._on_entry(entry)
                if result is not None:
                    await result
            except Exception:
                log.exception(
                    "watch of %s: could not handle key %s at revision %d", self.bucket.name, entry.key, entry.revision
                )
            self.revision = entry.revision
        if meta.num_pending == 0:
            self._set_ready()
        self._check_ready()

    def _check_ready(self) -> None:
        if self._target is not None and self._seen_consumer_seq >= self._target:
            self._set_ready()

    def _set_ready(self) -> None:
        if self.ready.is_set():
            return
        self.ready.set()
        if self._on_ready is not None:
            self._on_ready()
        self._follower = asyncio.get_running_loop().create_task(self._follow(), name=f"watch-follow-{self.bucket.name}")

    async def _settle_readiness(self) -> None:
        """Entries counted at the start may be replaced before they are delivered: ask the server again."""
        with contextlib.suppress(asyncio.CancelledError):
            while not self.ready.is_set() and self._sub is not None:
                await asyncio.sleep(self._heartbeat)
                quiet = asyncio.get_running_loop().time() - self._last_arrival >= self._heartbeat
                with contextlib.suppress(Exception):
                    if quiet and not (await self._sub.consumer_info()).num_pending:
                        self._set_ready()

    async def stop(self) -> None:
        """Unsubscribe; idempotent."""
        self._stopped = True
        for task in (self._settler, self._follower):
            if task is not None:
                task.cancel()
        self._settler = self._follower = None
        sub, self._sub = self._sub, None
        if sub is not None:
            await _unsubscribe(sub)

    async def __aenter__(self) -> KeyWatch:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def _unsubscribe(sub: JetStreamContext.PushSubscription) -> None:
    with contextlib.suppress(Exception):  # a consumer the server lost needs no unsubscribe
        await sub.unsubscribe()


def _unsubscribe_when_created(creating: asyncio.Future[JetStreamContext.PushSubscription]) -> None:
    if not creating.cancelled() and creating.exception() is None:
        sub = creating.result()
        asyncio.get_running_loop().create_task(_unsubscribe(sub))
