"""Notifications the dispatch stream holds that no worker will ever be given: :func:`find_undeliverable`.

The dispatch stream is a work queue: a notification leaves it when a consumer acknowledges it. So a
notification still stored is either waiting for a worker, or one no consumer will deliver again:

- **given up**: its level's consumer reached ``max_deliver`` for it (or terminated it). The message
  stays stored and is never delivered again, and it leaves the consumer's ack-pending set. So a
  stored message is given up when its sequence is at or below the consumer's ack floor, or when the
  consumer has nothing ack-pending and its sequence is at or below the last one delivered. Checked
  against nats-server 2.15.1: the ack floor passes a given-up message only once a later one is
  acknowledged (on an idle queue it stays below it), while a message NAKed with a delay or whose ack
  wait ran out stays ack-pending until it is redelivered
  (``tests/dispatch/test_reclaimer_notifications.py`` pins both);
- **unreadable**: its subject is no notification subject (``Names.notification_subject`` of a valid
  queue, task and level), so no consumer corral creates filters it.

A message waiting for a consumer that does not exist yet (a queue no worker has served) is neither:
it is delivered once a worker creates the consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Set
from dataclasses import dataclass

import nats.js.errors

from coord.connection import Coord
from coord.errors import InvalidInput
from coord.priority import LEVELS, Priority
from coord.streams import Stream

__all__ = ["Undeliverable", "find_undeliverable", "parse_notification_subject"]


@dataclass(frozen=True)
class Undeliverable:
    """One stored notification no worker will be given."""

    seq: int
    """Its stream sequence (what deleting it names)."""
    subject: str
    """Its subject."""
    task_id: str | None
    """The task it names; None when its subject is no notification subject."""


def parse_notification_subject(coord: Coord, subject: str) -> tuple[str, str, Priority] | None:
    """``(queue, task_id, level)`` of a notification subject in its one canonical form; None for any other."""
    tokens = subject.split(".")
    if len(tokens) not in (4, 5) or tokens[:2] != [coord.namespace, "dispatch"]:
        return None
    try:
        level = Priority.NORMAL if len(tokens) == 4 else Priority(tokens[4])
        if coord.names.notification_subject(tokens[2], tokens[3], level) != subject:
            return None
    except (InvalidInput, ValueError):
        return None
    return tokens[2], tokens[3], level


async def find_undeliverable(
    coord: Coord, stream: Stream, subjects: Set[str], *, most: int = 1000
) -> list[Undeliverable]:
    """Up to ``most`` notifications of ``stream`` (the namespace's dispatch stream) that no worker will
    be given, oldest first per consumer (see the module docstring). ``subjects``: the subjects the
    stream holds messages on (``Stream.subjects``, read once by the caller).

    Costs one consumer-info request per queue level holding notifications, and one message read per
    notification found plus one per level.
    """
    found: list[Undeliverable] = []
    levels: set[tuple[str, Priority]] = set()
    for subject in sorted(subjects):
        parsed = parse_notification_subject(coord, subject)
        if parsed is None:
            found.extend(await _stored(stream, subject, most - len(found)))
        else:
            levels.add((parsed[0], parsed[2]))
        if len(found) >= most:
            return found[:most]
    given_up = await asyncio.gather(
        *(_given_up(coord, stream, queue, level, most) for queue, level in sorted(levels, key=_order))
    )
    for batch in given_up:
        found.extend(batch)
    return found[:most]


def _order(level: tuple[str, Priority]) -> tuple[str, int]:
    return level[0], LEVELS.index(level[1])


async def _stored(stream: Stream, subject: str, most: int) -> list[Undeliverable]:
    """The messages stored on ``subject`` (no notification subject), oldest first."""
    out: list[Undeliverable] = []
    seq = 1
    while len(out) < most:
        msg = await _next(stream, seq, subject)
        if msg is None:
            break
        out.append(Undeliverable(msg.seq or 0, subject, None))
        seq = (msg.seq or 0) + 1
    return out


async def _given_up(coord: Coord, stream: Stream, queue: str, level: Priority, most: int) -> list[Undeliverable]:
    """The messages of ``queue``'s ``level`` its consumer gave up on (see the module docstring)."""
    try:
        info = await stream.js.consumer_info(stream.name, coord.names.queue_consumer(queue, level))
    except nats.js.errors.NotFoundError:
        return []  # no worker has served this level yet: its messages wait for the first
    floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
    if not info.num_ack_pending and info.delivered is not None:
        floor = max(floor, info.delivered.stream_seq)  # nothing in flight or waiting to be redelivered
    out: list[Undeliverable] = []
    seq = 1
    while floor and len(out) < most:
        msg = await _next(stream, seq, coord.names.queue_filter(queue, level))
        if msg is None or (msg.seq or 0) > floor:
            break
        subject = msg.subject or ""
        out.append(Undeliverable(msg.seq or 0, subject, coord.names.notified_task(subject)))
        seq = (msg.seq or 0) + 1
    return out


async def _next(stream: Stream, seq: int, subject: str) -> nats.js.api.RawStreamMsg | None:
    """The first message at ``seq`` or later on ``subject`` (a filter), or None."""
    try:
        return await stream.js.get_msg(stream.name, seq=seq, subject=subject, next=True)
    except nats.js.errors.NotFoundError:
        return None
