"""What follows a successful transition: the notification, the result push, the word to a claim's holder.

Side effects never come before the compare-and-set they describe, and a failed side effect never
undoes it: the record stays the truth, a sweep re-notifies pending tasks, and a parent reconciles
results by reading records.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from nats.aio.client import Client as NATS

from coord import tracing
from coord.naming import Names
from coord.streams import Stream
from coord.tasks.models import ResultNotice, TaskRecord, TaskStatus, Transition
from coord.validation import COUNT, check_number

__all__ = ["TaskEffects", "notification_id"]

log = logging.getLogger("corral.tasks")


def notification_id(record: TaskRecord) -> str:
    """``Nats-Msg-Id`` of the notification of pending ``record``: ``{task}:{epoch}:{revision}`` (never repeats)."""
    return f"{record.task_id}:{record.epoch}:{record.revision}"


_TAKEN_AWAY = frozenset({Transition.CANCELLED, Transition.RECLAIMED})
"""Transitions that end a claim without its holder: the holder is told, so it stops the handler."""


class TaskEffects:
    """Publishes what a transition implies (see the module docstring). Messages carry ids and
    revisions only: whoever acts on one reads the stored record."""

    def __init__(self, nc: NATS, dispatch: Stream, names: Names) -> None:
        self._nc = nc
        self._dispatch = dispatch
        self._names = names

    async def after(self, before: TaskRecord | None, record: TaskRecord) -> None:
        """Side effects of the transition ``before`` → ``record``."""
        if before is not None and before.claim is not None and record.transition in _TAKEN_AWAY:
            await self._tell_holder(before, record)
        if record.status is TaskStatus.PENDING:
            try:
                await self.notify(record)
            except Exception as err:  # the transition happened; a sweep re-notifies pending tasks
                log.warning("task %s: notification after %s failed: %s", record.task_id, record.transition, err)
        elif record.terminal and record.parent and (before is None or not before.terminal):
            await self._push_result(record)

    async def queued(self) -> set[str]:
        """Subjects of the notifications the dispatch stream holds now (one per task with one queued)."""
        return await self._dispatch.subjects(self._names.dispatch_subjects)

    async def notify(self, record: TaskRecord, *, force: bool = False, again: int | str | None = None) -> None:
        """Publish "``record`` is pending at its revision" on its queue's subject for the record's priority
        (deduped by :func:`notification_id`).

        ``again=n`` is the n-th renotification of the same revision (its own id ``...:r{n}``, the same
        for every publisher; a string such as ``"s42"`` names another kind, e.g. the one replacing message 42);
        ``force`` makes the id unique.
        """
        if not isinstance(again, str):
            check_number("again", again, COUNT, optional=True)
        head: dict[str, Any] = {
            "task_id": record.task_id,
            "revision": record.revision,
            "epoch": record.epoch,
            "visible_at": record.visible_at.isoformat() if record.visible_at else None,
        }
        body = json.dumps(head, separators=(",", ":")).encode()
        msg_id = notification_id(record)
        if again is not None:
            msg_id += f":r{again}"
        if force:
            msg_id += f":{secrets.token_hex(4)}"
        await self._dispatch.publish(
            self._names.notification_subject(record.queue, record.task_id, record.priority),
            body,
            headers=tracing.task_headers(record.meta),
            msg_id=msg_id,
        )

    async def _tell_holder(self, before: TaskRecord, record: TaskRecord) -> None:
        """A hint to the worker holding ``before``'s claim; it checks the record before acting on it."""
        assert before.claim is not None
        body = json.dumps(
            {"task_id": record.task_id, "claim_id": before.claim.claim_id, "transition": record.transition.value},
            separators=(",", ":"),
        ).encode()
        try:
            await self._nc.publish(self._names.control_subject(before.claim.worker_id), body)
        except Exception as err:
            log.debug("task %s: could not tell %s its claim ended: %s", record.task_id, before.claim.worker_id, err)

    async def _push_result(self, record: TaskRecord) -> None:
        assert record.parent is not None
        notice = ResultNotice(task_id=record.task_id, status=record.status, revision=record.revision)
        body = notice.model_dump_json().encode()
        try:
            await self._nc.publish(
                self._names.results_subject(record.parent), body, headers=tracing.task_headers(record.meta) or None
            )
        except Exception as err:
            log.warning("task %s: result push to %s failed: %s", record.task_id, record.parent, err)
