"""Stream messages to received events: a :class:`ReceivedEvent`, or the reason the message is malformed."""

from __future__ import annotations

from nats.aio.msg import Msg
from pydantic import ValidationError

from coord.events.models import ReceivedEvent, parse_event

__all__ = ["decode_event"]


def decode_event(msg: Msg) -> ReceivedEvent | str:
    """The received event, or why the message is malformed."""
    tokens = msg.subject.split(".")
    if len(tokens) != 5 or tokens[1] != "events":
        return f"unexpected subject {msg.subject!r}"
    _, _, to, sender, kind = tokens
    try:
        event = parse_event(msg.data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return f"{where}: {first['msg']}"
    if event.kind != kind:
        return f"kind {event.kind!r} does not match subject kind {kind!r}"
    seq = msg.metadata.sequence.stream if msg.reply else 0
    return ReceivedEvent(event=event, to=to, sender=sender, seq=seq)
