"""Pushing the read model to browsers: one delta per tick, encoded once, queued to every client.

A browser first gets the whole :meth:`~corral.ui.model.ReadModel.snapshot`, then a ``delta`` event
whenever something changed (at most one per ``interval``): the agents that changed or left and
everyone's renewal time, the queue aggregates, the status counts, the new timeline items and the
section versions (a browser refetches the task page it shows when the ``tasks`` version moves).
Task records are never pushed one by one. A client that falls ``backlog`` deltas behind is dropped;
its ``EventSource`` reconnects and starts again from a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from corral.ui.model import ReadModel

__all__ = ["Client", "Hub", "sse_frame"]

QUEUE_REFRESH = 5.0
"""Seconds after which queue aggregates (rates, ages) are sent again even if no task changed."""


def sse_frame(event: str, data: Any) -> bytes:
    """One server-sent event: ``event: NAME`` and its JSON ``data`` (one line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


@dataclass(eq=False)
class Client:
    """One connected browser: the frames waiting for it."""

    frames: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(maxsize=64))
    dropped: bool = False
    """True once it fell too far behind (its stream ends; the browser reconnects)."""


class Hub:
    """Ticks over ``model`` every ``interval`` seconds and sends what changed to every :class:`Client`."""

    def __init__(self, model: ReadModel, *, interval: float = 0.5) -> None:
        self._model = model
        self.interval = interval
        """Seconds between deltas (the most often a browser hears of changes)."""
        self.clients: set[Client] = set()
        """Browsers connected now."""
        self._last_seq = 0
        self._last_queues = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ticking (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="corral-ui-hub")

    async def stop(self) -> None:
        """Stop ticking and end every client's stream."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # the caller's own cancellation still reaches it
        for client in list(self.clients):
            self._drop(client)

    def connect(self) -> tuple[Client, bytes]:
        """A new client and its first frame (the snapshot)."""
        client = Client()
        self.clients.add(client)
        return client, sse_frame("snapshot", self._model.snapshot())

    def disconnect(self, client: Client) -> None:
        """Forget ``client``."""
        self.clients.discard(client)

    def _drop(self, client: Client) -> None:
        client.dropped = True
        self.clients.discard(client)
        with contextlib.suppress(asyncio.QueueFull):
            client.frames.put_nowait(None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            frame = self.delta()
            if frame is None:
                continue
            for client in list(self.clients):
                try:
                    client.frames.put_nowait(frame)
                except asyncio.QueueFull:
                    client.dropped = True
                    self.clients.discard(client)

    def delta(self) -> bytes | None:
        """The frame of what changed since the last call, or None if nothing did."""
        model = self._model
        now = time.monotonic()
        stale_queues = now - self._last_queues >= QUEUE_REFRESH
        if not model.dirty and not stale_queues:
            return None
        dirty, model.dirty = model.dirty, set()
        data: dict[str, Any] = {"versions": dict(model.versions), "ready": sorted(model.ready)}
        if "agents" in dirty:
            data["agents"] = model.take_agent_delta()
        if dirty & {"tasks", "queues", "agents"} or stale_queues:
            data["queues"] = model.queues_json()
            data["schedules"] = model.schedules_json()
            data["counts"] = model.counts()
            self._last_queues = now
        if "timeline" in dirty:
            items = model.timeline_since(self._last_seq)
            data["timeline"] = [item.json() for item in items]
        self._last_seq = model.seq
        if "dead_letters" in dirty:
            data["dead_letters"] = len(model.dead_letters)
        return sse_frame("delta", data)
