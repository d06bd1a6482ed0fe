"""Plain streams (dispatch, events, inbox): :class:`Stream` publishes, reads and deletes with one set of rules.

Acknowledged publishes carry a ``Nats-Msg-Id`` when the caller gives one, so a retry of a publish
whose answer was lost is dropped by the stream's duplicate window instead of stored twice; they are
retried through transient trouble (:mod:`coord.retry`) and end in :class:`~coord.errors.Unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.api import RawStreamMsg

from coord.acks import AckedPublisher
from coord.retry import retry_transient

__all__ = ["MSG_ID", "Stream", "stream_snapshot"]

MSG_ID = "Nats-Msg-Id"
"""Header the stream deduplicates publishes by."""
_NO_MESSAGE = frozenset({10037, 10057})  # no message found / message delete failed (already gone)


async def stream_snapshot(
    js: JetStreamContext, stream: str, subject: str, *, last_per_subject: bool = False, limit: int | None = None
) -> list[Msg]:
    """The messages on ``subject`` stored right now (oldest first), read with an ordered consumer.

    Unlike nats-py's KV watcher it cannot stop early when messages are already on their way while it
    asks how many there are, and it tolerates messages deleted while it reads. The consumer is
    deleted when the read ends, so reading in a loop leaves none behind.
    """
    policy = js_api.DeliverPolicy.LAST_PER_SUBJECT if last_per_subject else js_api.DeliverPolicy.ALL
    out: list[Msg] = []
    done = asyncio.Event()

    async def collect(msg: Msg) -> None:
        if done.is_set():
            return
        out.append(msg)
        if msg.metadata.num_pending == 0 or (limit is not None and len(out) >= limit):
            done.set()

    sub = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, deliver_policy=policy, idle_heartbeat=2.0, cb=collect
    )
    name: str | None = None
    try:
        info = await sub.consumer_info()
        name = info.name
        delivered = (info.delivered.consumer_seq or 0) if info.delivered else 0
        if (info.num_pending or 0) + delivered == 0:
            return out
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 2)
            # What was counted may have been deleted before it reached us: ask again.
            if not done.is_set() and not (await sub.consumer_info()).num_pending:
                done.set()
        return out[:limit] if limit is not None else out
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if name is not None:
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, name)


class Stream:
    """One JetStream stream, reached through ``js`` (``patience``: default retry budget, seconds)."""

    def __init__(
        self,
        js: JetStreamContext,
        nc: NATS,
        name: str,
        *,
        patience: float = 15.0,
        request_timeout: float = 5.0,
        acks: AckedPublisher | None = None,
    ) -> None:
        self.js = js
        """JetStream context."""
        self.acks = acks or AckedPublisher(nc)
        """Where acknowledged publishes go (one per connection, shared by its buckets and streams)."""
        self.nc = nc
        """The connection (core publishes, and retries stop once it is closed)."""
        self.name = name
        """The stream's name."""
        self.patience = patience
        """Default seconds a call keeps retrying through server unavailability."""
        self.request_timeout = request_timeout
        """Longest wait for one answer (then the request counts as lost and is retried)."""

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        msg_id: str | None = None,
        patience: float | None = None,
        timeout: float | None = None,
    ) -> int:
        """Store ``data`` on ``subject`` and wait for the stream's ack; return its sequence.

        With ``msg_id`` a retry (or a second publish within the duplicate window) stores nothing new.
        """
        sent = dict(headers or {})
        if msg_id is not None:
            sent[MSG_ID] = msg_id
        within = self.patience if patience is None else patience
        wait = min(self.request_timeout if timeout is None else timeout, max(within, 0.05))

        async def call() -> int:
            return await self.acks.publish(subject, data, headers=sent or None, timeout=wait)

        return await retry_transient(call, nc=self.nc, within=within, what=f"publish to {subject}", subject=subject)

    async def snapshot(self, subject: str, *, last_per_subject: bool = False, limit: int | None = None) -> list[Msg]:
        """See :func:`stream_snapshot` (retried through transient trouble)."""
        return await retry_transient(
            lambda: stream_snapshot(self.js, self.name, subject, last_per_subject=last_per_subject, limit=limit),
            nc=self.nc,
            within=self.patience,
            what=f"read {subject}",
        )

    async def subjects(self, pattern: str) -> set[str]:
        """The subjects matching ``pattern`` that hold at least one message now (one request)."""

        async def call() -> set[str]:
            info = await self.js.stream_info(self.name, subjects_filter=pattern)
            return set(info.state.subjects or {})

        return await retry_transient(call, nc=self.nc, within=self.patience, what=f"list subjects of {self.name}")

    async def last(self, subject: str) -> RawStreamMsg | None:
        """The latest message stored on ``subject`` (asked of the stream's leader), or None."""

        async def call() -> RawStreamMsg | None:
            try:
                return await self.js.get_msg(self.name, subject=subject)
            except nats.js.errors.NotFoundError:
                return None

        return await retry_transient(call, nc=self.nc, within=self.patience, what=f"read {subject}")

    async def delete(self, seq: int) -> bool:
        """Delete message ``seq`` (no erase); False if it was already gone."""
        request = json.dumps({"seq": seq, "no_erase": True}).encode()
        api = f"$JS.API.STREAM.MSG.DELETE.{self.name}"

        async def call() -> bool:
            reply = await self.nc.request(api, request, timeout=5)
            answer = json.loads(reply.data)
            if answer.get("success"):
                return True
            error = answer.get("error") or {}
            if error.get("err_code") in _NO_MESSAGE or error.get("code") == 404:
                return False
            raise nats.js.errors.APIError(
                code=error.get("code"),
                err_code=error.get("err_code"),
                description=str(error.get("description", answer)),
            )

        return await retry_transient(
            call, nc=self.nc, within=self.patience, what=f"delete message {seq} of {self.name}", subject=api
        )
