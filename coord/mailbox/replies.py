"""Waiting for what a recipient sends back on core NATS, raced against it leaving presence.

A sender waits either for the acknowledgement of one message (:func:`wait_ack`) or for the pieces
of a streamed reply (:func:`read_stream`). Either wait ends early when the recipient leaves
presence, after a short grace for a reply that was already on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from coord.mailbox.models import H_SEQ, H_STREAM, QUICK_ACK, Chunk, End, Error
from coord.presence import Presence

__all__ = ["abandon", "read_stream", "wait_ack"]

IN_FLIGHT = 0.2
"""Seconds a reply already on the wire may take to land after its sender left presence."""

_FOREVER = 86_400 * 365


async def wait_ack(sub: Subscription, presence: Presence, agent: str | None, timeout: float) -> bool:
    """True if an acknowledgement arrives on ``sub`` within ``timeout`` and before ``agent`` leaves presence.

    With ``agent=None`` only the timeout ends the wait.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # Most acks come within milliseconds: only a slow one is worth watching presence for.
    try:
        await sub.next_msg(timeout=min(QUICK_ACK, timeout))
        return True
    except nats.errors.TimeoutError:
        pass
    remaining = deadline - loop.time()
    if remaining <= 0:
        return False
    ack = asyncio.ensure_future(sub.next_msg(timeout=remaining))
    waits: set[asyncio.Future[object]] = {ack}  # type: ignore[arg-type]
    gone: asyncio.Future[bool] | None = None
    if agent is not None:
        gone = asyncio.ensure_future(presence.wait_absent(agent, remaining))
        waits.add(gone)  # type: ignore[arg-type]
    try:
        while waits:
            done, waits = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if ack in done:
                return ack.exception() is None
            if gone is not None and gone in done and gone.exception() is None and gone.result():
                # The agent left; give an ack already in flight a moment to land.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(ack), IN_FLIGHT)
                return ack.done() and not ack.cancelled() and ack.exception() is None
        return False
    finally:
        abandon(ack, gone)


async def read_stream(
    sub: Subscription, presence: Presence, agent: str | None, timeout: float
) -> AsyncGenerator[Chunk | End | Error, None]:
    """The streamed reply arriving on ``sub``: :class:`Chunk` items in order, then :class:`End` or :class:`Error`.

    Ends with ``Error`` when the recipient reports one, a piece is missing or out of order, nothing
    arrives for ``timeout`` seconds, or ``agent`` (if given) leaves presence before the end.
    """
    gone = asyncio.create_task(presence.wait_absent(agent, _FOREVER)) if agent is not None else None
    try:
        expected = 1
        while True:
            item = await _next_reply(sub, gone, timeout, agent)
            if isinstance(item, Error):
                yield item
                return
            headers = item.headers or {}
            kind, seq = headers.get(H_STREAM), int(headers.get(H_SEQ, "0") or 0)
            if kind == "error":
                yield Error(message=item.data.decode("utf-8", errors="replace") or "agent reported an error")
                return
            if seq != expected:
                yield Error(message=f"stream broken: expected piece {expected}, got {seq}")
                return
            expected += 1
            if kind == "end":
                yield End()
                return
            yield Chunk(seq=seq, data=item.data.decode("utf-8", errors="replace"))
    finally:
        abandon(gone)


async def _next_reply(
    sub: Subscription, gone: asyncio.Task[bool] | None, timeout: float, agent: str | None
) -> Msg | Error:
    nxt = asyncio.ensure_future(sub.next_msg(timeout=timeout))
    waits: set[asyncio.Future[object]] = {nxt}  # type: ignore[arg-type]
    if gone is not None:
        waits.add(gone)  # type: ignore[arg-type]
    done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if nxt not in done:
        # The agent left; a reply already on the wire still counts.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(nxt), IN_FLIGHT)
        if not nxt.done():
            abandon(nxt)
            return Error(message=f"agent {agent!r} left before finishing the stream")
    if nxt.exception() is not None:
        return Error(message=f"no reply within {timeout}s")
    return nxt.result()


_abandoned: set[asyncio.Future[Any]] = set()
"""Strong references to cancelled helpers until they finish unwinding (asyncio keeps only weak ones)."""


def abandon(*futures: asyncio.Future[Any] | None) -> None:
    """Cancel helper futures without waiting for them (a cancelled watch may take a while to unwind).

    ``None`` and finished futures are skipped. A cancelled future is kept referenced until it is
    done and its outcome is retrieved, so asyncio neither collects it early nor logs it as unretrieved.
    """
    for future in futures:
        if future is None or future.done():
            continue
        future.cancel()
        _abandoned.add(future)
        future.add_done_callback(_forget)


def _forget(future: asyncio.Future[Any]) -> None:
    _abandoned.discard(future)
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved
