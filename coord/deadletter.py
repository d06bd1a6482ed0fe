"""Dead letters: malformed or unprocessable messages are recorded here instead of crashing anyone.

A dead letter is a JSON record on ``{ns}.deadletter.{source}`` in the events stream (kept as long as
events are), carrying the reason, the original subject, headers and body (as text, truncated).
``coord.dead_letters`` is the :class:`DeadLetters` of a connection.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from nats.js import api as js_api
from pydantic import AwareDatetime, BaseModel, ValidationError

from coord.naming import Names
from coord.streams import Stream
from coord.validation import COUNT, SINCE, check_number

__all__ = ["LATE_RESULT", "MAX_BODY", "DeadLetter", "DeadLetters"]

log = logging.getLogger("corral.deadletter")

MAX_BODY = 4096
"""Characters of the original body kept in a dead letter."""

LATE_RESULT = "late-result"
"""Source of the dead letter a worker records when its result is rejected because its claim is no
longer current (the task was reclaimed or cancelled meanwhile): the body is the refused Result."""


class DeadLetter(BaseModel):
    """One recorded dead letter."""

    source: str
    """Which consumer gave up on the message (``dispatch``, ``spec``, ``events``, ``inbox``, ...)."""
    reason: str
    """Why, in one line."""
    subject: str | None = None
    """Subject the message arrived on."""
    headers: dict[str, str] = {}
    """Its headers."""
    body: str = ""
    """Its body as text (truncated to 4 KiB)."""
    task_id: str | None = None
    """The task concerned, when known."""
    at: AwareDatetime
    """When it was recorded."""


class DeadLetters:
    """Records and reads the dead letters of one namespace (in its events ``stream``)."""

    def __init__(self, stream: Stream, names: Names) -> None:
        self._stream = stream
        self._names = names

    async def tail(self, *, since: float | None = 3600.0) -> AsyncIterator[DeadLetter]:
        """Dead letters from every source recorded since ``since`` seconds ago (None: all kept), then
        each new one as it is recorded, until the caller stops iterating.

        Read-only (an ordered consumer, re-created by nats-py after a server restart); a stored
        message that is not a dead letter record is skipped (logged). ``since``: 0 to 10 years.
        """
        if since is not None:
            check_number("since", since, SINCE)
        config = js_api.ConsumerConfig(
            deliver_policy=js_api.DeliverPolicy.BY_START_TIME if since is not None else js_api.DeliverPolicy.ALL,
        )
        if since is not None:
            config.opt_start_time = datetime.now(UTC) - timedelta(seconds=since)
        sub = await self._stream.js.subscribe(
            self._names.deadletter_filter(None), stream=self._stream.name, ordered_consumer=True, config=config
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=None)  # waits as long as it takes
                try:
                    yield DeadLetter.model_validate_json(msg.data or b"")
                except ValidationError:
                    log.warning("dead letters: a message on %s is not a dead letter record; skipped", msg.subject)
        finally:
            await sub.unsubscribe()

    async def record(
        self,
        source: str,
        reason: str,
        *,
        subject: str | None = None,
        body: bytes | str = b"",
        headers: dict[str, str] | None = None,
        task_id: str | None = None,
    ) -> None:
        """Record a dead letter and log it; never raises (a failure to record is logged)."""
        text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
        letter = DeadLetter(
            source=source,
            reason=reason,
            subject=subject,
            headers=dict(headers or {}),
            body=text[:MAX_BODY],
            task_id=task_id,
            at=datetime.now(UTC),
        )
        log.warning("dead letter from %s: %s (subject=%s task=%s)", source, reason, subject, task_id)
        try:
            await self._stream.publish(self._names.deadletter_subject(source), letter.model_dump_json().encode())
        except Exception as err:  # recording must never take the caller down
            log.error("could not record dead letter from %s: %s", source, err)

    async def read(self, source: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters from ``source`` (all sources when None), oldest first, at most ``limit``.

        A stored message that is not a dead letter record is skipped (logged), never raised.
        """
        check_number("limit", limit, COUNT)
        letters: list[DeadLetter] = []
        for msg in await self._stream.snapshot(self._names.deadletter_filter(source)):
            try:
                letters.append(DeadLetter.model_validate_json(msg.data or b""))
            except ValidationError:
                log.warning("dead letters: a message on %s is not a dead letter record; skipped", msg.subject)
        return letters[-limit:]
