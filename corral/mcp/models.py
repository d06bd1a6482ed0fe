"""What the MCP tools return: small typed views over the substrate's own models.

Where corral already has a wire model (``AgentInfo``, ``Result``, ``Descendant``, ``Session``), the
view embeds it, so the JSON Schema the SDK publishes is the one ``corral schema`` prints. Views
never carry a claim token: the server process keeps it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, JsonValue

from coord.events.models import Descendant
from coord.presence import AgentInfo
from coord.registry.models import Session
from coord.tasks import TaskRecord, TaskStatus
from coord.wire import Result

__all__ = [
    "AgentView",
    "ClaimView",
    "Fleet",
    "Inbox",
    "MailItem",
    "Sent",
    "TaskList",
    "TaskView",
    "ThreadAnswer",
    "Tree",
    "Waited",
]


class AgentView(BaseModel):
    """One present agent: its presence value and the tasks it holds now."""

    info: AgentInfo
    holds: list[str] = Field(default_factory=list)
    """Ids of the tasks this agent holds a claim on."""


class Fleet(BaseModel):
    """Who is present in the namespace."""

    agents: list[AgentView]


class Sent(BaseModel):
    """How a send ended: ``delivered`` (the recipient acknowledged), ``enqueued`` (waiting in its inbox) or
    ``expired`` (sent with a ``ttl`` that ran out before anyone acknowledged it)."""

    outcome: Literal["delivered", "enqueued", "expired"]
    id: str
    queue: str | None = None
    """Where an enqueued message waits (``agent:{id}`` or ``tag:{name}``)."""


class MailItem(BaseModel):
    """One message waiting in this agent's inbox (acknowledge it with ``mail_ack``)."""

    id: str
    sender: str | None
    tag: str | None
    key: str | None
    sent_at: datetime | None
    body: str


class Inbox(BaseModel):
    """The messages waiting, oldest first (``waited_ms``: how long the read waited for the first one)."""

    messages: list[MailItem]
    waited_ms: float


class TaskView(BaseModel):
    """A task as the store holds it (no claim token)."""

    task_id: str
    queue: str
    status: TaskStatus
    title: str = ""
    payload: JsonValue = None
    files: list[str] = Field(default_factory=list)
    attempt: int
    epoch: int
    worker: str | None = None
    deadline: datetime | None = None
    progress: JsonValue = None
    error: str | None = None
    result: Result | None = None
    """How the task ended (only once it has)."""

    @classmethod
    def of(cls, record: TaskRecord) -> TaskView:
        """The view of ``record``."""
        spec = record.spec if isinstance(record.spec, dict) else {}
        title = spec.get("title")
        files = spec.get("files")
        return cls(
            task_id=record.task_id,
            queue=record.queue,
            status=record.status,
            title=title if isinstance(title, str) else "",
            payload=spec.get("payload") if spec else record.spec,
            files=[f for f in files if isinstance(f, str)] if isinstance(files, list) else [],
            attempt=record.attempt,
            epoch=record.epoch,
            worker=record.claim.worker_id if record.claim is not None else record.last_worker,
            deadline=record.claim.deadline if record.claim is not None else None,
            progress=record.progress,
            error=record.error,
            result=record.outcome(),
        )


class ClaimView(BaseModel):
    """A claim this agent holds: the task, its fencing epoch and the deadline the server keeps extending."""

    task: TaskView
    epoch: int
    deadline: datetime


class TaskList(BaseModel):
    """Tasks matching a filter (at most ``limit``; ``more`` when some were left out)."""

    tasks: list[TaskView]
    more: bool = False


class Waited(BaseModel):
    """What a wait saw: the finished tasks (in the order they finished) and the ones still running."""

    finished: list[TaskView]
    unfinished: list[str]


class Tree(BaseModel):
    """The agents below this one, as its event listener has applied their lifecycle events."""

    descendants: list[Descendant]


class ThreadAnswer(BaseModel):
    """A thread's reservation: ``reserved`` (by this agent), ``held`` (by the live ``owner``), or ``free``."""

    thread: str
    state: Literal["reserved", "held", "free", "released"]
    owner: str | None = None
    """The agent holding the thread."""
    session: Session | None = None
