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
from coord.retry import retry_transient

__all__ = ["KeyWatch"]

log = logging.getLogger("corral.kv")


class KeyWatch:
    """Every change of the keys a pattern matches, fed to a callback: the latest entry of each key first.

    One ordered push consumer (last entry per key, then every write) with an idle heartbeat, so a
    consumer lost to a server restart or a leader move is noticed within two heartbeats and
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
        self._stopped = False
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

    async def _subscribe(self) -> JetStreamContext.PushSubscription:
        return await self.bucket.js.subscribe(
            self.bucket.subject(self._keys),
            stream=self.bucket.stream,
            cb=self._on_msg,
            ordered_consumer=True,
            headers_only=self._headers_only,
            idle_heartbeat=self._heartbeat,
            deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=60.0,
        )

    async def _on_msg(self, msg: Msg) -> None:
        meta = msg.metadata
        self._last_arrival = asyncio.get_running_loop().time()
        self._seen_consumer_seq = max(self._seen_consumer_seq, meta.sequence.consumer)
        entry = self.bucket.entry_from(msg, headers_only=self._headers_only)
        self.revision = max(self.revision, entry.revision)
        try:
            result = self._on_entry(entry)
            if result is not None:
                await result
        except Exception:
            log.exception(
                "watch of %s: could not handle key %s at revision %d", self.bucket.name, entry.key, entry.revision
            )
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
        settler, self._settler = self._settler, None
        if settler is not None:
            settler.cancel()
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def __aenter__(self) -> KeyWatch:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
