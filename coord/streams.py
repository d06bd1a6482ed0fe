"""Reading what a stream holds on a subject right now, in one ordered pass."""

from __future__ import annotations

import contextlib

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

__all__ = ["stream_snapshot"]


async def stream_snapshot(
    js: JetStreamContext, stream: str, subject: str, *, last_per_subject: bool = False, limit: int | None = None
) -> list[Msg]:
    """The messages on ``subject`` stored right now (oldest first), read with an ordered consumer.

    Unlike nats-py's KV watcher it cannot stop early when messages are already on their way while it
    asks how many there are, and it tolerates messages deleted while it reads.
    """
    policy = js_api.DeliverPolicy.LAST_PER_SUBJECT if last_per_subject else js_api.DeliverPolicy.ALL
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, deliver_policy=policy, idle_heartbeat=2.0)
    out: list[Msg] = []
    try:
        info = await sub.consumer_info()
        delivered = (info.delivered.consumer_seq or 0) if info.delivered else 0
        if (info.num_pending or 0) + delivered == 0:
            return out
        while limit is None or len(out) < limit:
            try:
                msg = await sub.next_msg(timeout=2)
            except nats.errors.TimeoutError:
                # What was counted may have been deleted before it reached us: ask again.
                if not (await sub.consumer_info()).num_pending:
                    break
                continue
            out.append(msg)
            if msg.metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out
