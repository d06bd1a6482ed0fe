"""Wire models shared by parents and workers: :class:`Spec` (what to do) and :class:`Result` (what came of it).

Both are versioned pydantic models carried as JSON (the spec is the task record's payload; the result
is stored in the record when the task ends). ``format_result``/``parse_result`` give a one-line text
form that round-trips any text, pipes and newlines included, for agents that talk in plain text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from coord.errors import InvalidInput
from coord.ids import Token, new_id
from coord.priority import Priority

__all__ = [
    "MAX_DELAY",
    "RESULT_PREFIX",
    "Result",
    "ResultError",
    "ResultKind",
    "Spec",
    "TaskInput",
    "absolute_files",
    "build_spec",
    "format_result",
    "parse_result",
]

RESULT_PREFIX = "corral-result/1 "
MAX_DELAY = 366 * 86_400.0
"""Longest ``delay`` (seconds) a task may be submitted with: a year (and a day), to catch unit mistakes."""
SCHEDULING = ("priority", "not_before", "delay")
"""Spec fields left out of the stored spec while at their defaults (so specs of plain tasks keep their shape)."""


def absolute_files(files: tuple[str, ...]) -> tuple[str, ...]:
    """``files`` when every one is an absolute path; :class:`InvalidInput` naming the first that is not."""
    for path in files:
        if not PurePosixPath(path).is_absolute():
            raise InvalidInput(f"every file must be an absolute path; {path!r} is not")
    return files


class ResultKind(StrEnum):
    """How a task ended, as the worker reports it."""

    SUCCESS = "success"
    FORK = "fork"
    FAIL = "fail"


class ResultError(BaseModel):
    """Why a task failed."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    message: str
    """Human-readable reason."""
    substrate_fault: bool = False
    """True when corral (not the agent's own work) failed: lost worker, bad spec, spent attempts."""


class Result(BaseModel):
    """What a worker reports for a task. ``error`` is set exactly when ``kind`` is ``fail``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = 1
    """Wire version."""
    kind: ResultKind = ResultKind.SUCCESS
    """success, fork (work continues on a branch) or fail."""
    summary: str = ""
    """One-paragraph human summary."""
    branch: str | None = None
    """VCS branch holding the work, if any."""
    rev: str | None = None
    """VCS revision of the work, if any."""
    output: JsonValue = None
    """Free-form JSON output of the handler."""
    error: ResultError | None = None
    """Why it failed (only with kind=fail)."""

    @classmethod
    def success(cls, summary: str = "", output: JsonValue = None, **fields: Any) -> Result:
        """A success result."""
        return cls(kind=ResultKind.SUCCESS, summary=summary, output=output, **fields)

    @classmethod
    def failure(cls, message: str, *, substrate_fault: bool = False, summary: str = "") -> Result:
        """A fail result carrying ``message``."""
        return cls(
            kind=ResultKind.FAIL,
            summary=summary or message,
            error=ResultError(message=message, substrate_fault=substrate_fault),
        )

    @property
    def ok(self) -> bool:
        """True unless the kind is fail."""
        return self.kind is not ResultKind.FAIL


class Spec(BaseModel):
    """A parent-resolved description of one task: everything a worker needs, nothing of the substrate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    """Wire version."""
    task_id: Token
    """Unique task id; submitting the same id twice is idempotent."""
    queue: Token = "default"
    """Queue the task is dispatched on."""
    title: str = Field(default="", max_length=500)
    """Short human title."""
    files: tuple[str, ...] = ()
    """Absolute paths the task scopes its work to."""
    thread: Token | None = None
    """Conversation/thread the task belongs to."""
    parent_agent_id: Token | None = None
    """Agent that submitted the task (results are pushed to it)."""
    worker_agent_id: Token | None = None
    """Agent id the worker should run as (spawned-subprocess flow)."""
    workspace_dir: str | None = None
    """Absolute directory the task works in."""
    payload: JsonValue = None
    """Free-form JSON input for the handler."""
    max_attempts: int = Field(default=3, ge=1, le=1000)
    """Claims allowed before the task is dead-lettered."""
    timeout: float | None = Field(default=None, gt=0, le=86_400)
    """Lease in seconds: a claim not heartbeated for this long is reclaimed (None: store default)."""
    priority: Priority = Priority.NORMAL
    """Level within the queue: ``high`` overtakes a backlog, ``low`` still progresses (docs/tasks.md)."""
    not_before: AwareDatetime | None = None
    """Not started before this time (a timezone is required)."""
    delay: float | None = Field(default=None, ge=0, le=MAX_DELAY)
    """Not started before this many seconds after it is first submitted (exclusive with ``not_before``)."""

    @model_validator(mode="after")
    def _one_start(self) -> Spec:
        if self.not_before is not None and self.delay is not None:
            raise InvalidInput("give not_before or delay, not both")
        return self

    def stored(self) -> dict[str, Any]:
        """The JSON stored as the task's spec: the scheduling fields only when they are not the defaults."""
        data = self.model_dump(mode="json")
        for name in SCHEDULING:
            if data[name] == Spec.model_fields[name].default:
                del data[name]
        return data

    _files_absolute = field_validator("files")(absolute_files)

    @field_validator("workspace_dir")
    @classmethod
    def _workspace_absolute(cls, workspace: str | None) -> str | None:
        if workspace is not None and not PurePosixPath(workspace).is_absolute():
            raise InvalidInput(f"must be an absolute path; {workspace!r} is not")
        return workspace


class TaskInput(BaseModel):
    """A parent's view of a task to dispatch: what :func:`build_spec` turns into a :class:`Spec`."""

    model_config = ConfigDict(extra="forbid")

    task_id: Token = Field(default_factory=lambda: new_id("t"))
    queue: Token = "default"
    title: str = ""
    files: Sequence[str] = ()
    thread: Token | None = None
    worker_agent_id: Token | None = None
    payload: JsonValue = None
    max_attempts: int = 3
    timeout: float | None = None
    priority: Priority = Priority.NORMAL
    not_before: AwareDatetime | None = None
    delay: float | None = None


def build_spec(
    parent_agent_id: str,
    workspace_dir: str,
    task: TaskInput | Mapping[str, Any],
    *,
    allow_outside_workspace: bool = False,
) -> Spec:
    """Validate ``task`` and copy it into a :class:`Spec` owned by ``parent_agent_id``.

    Files must be absolute and (unless ``allow_outside_workspace``) inside ``workspace_dir``;
    relative or escaping paths raise ``ValueError`` naming the file and the rule. Nothing is shared
    with the input: lists are copied.
    """
    item = task if isinstance(task, TaskInput) else TaskInput.model_validate(dict(task))
    workspace = PurePosixPath(workspace_dir)
    if not workspace.is_absolute():
        raise InvalidInput(f"workspace_dir must be an absolute path; {workspace_dir!r} is not")
    files: list[str] = []
    for raw in item.files:
        path = PurePosixPath(raw)
        if not path.is_absolute():
            raise InvalidInput(f"files: {raw!r} must be an absolute path")
        normal = PurePosixPath(*_normalise(path.parts))
        if not allow_outside_workspace and not normal.is_relative_to(workspace):
            raise InvalidInput(
                f"files: {raw!r} is outside the workspace {workspace_dir!r} (pass allow_outside_workspace=True)"
            )
        files.append(str(normal))
    return Spec(
        task_id=item.task_id,
        queue=item.queue,
        title=item.title,
        files=tuple(files),
        thread=item.thread,
        parent_agent_id=parent_agent_id,
        worker_agent_id=item.worker_agent_id,
        workspace_dir=str(workspace),
        payload=json.loads(json.dumps(item.payload)),
        max_attempts=item.max_attempts,
        timeout=item.timeout,
        priority=item.priority,
        not_before=item.not_before,
        delay=item.delay,
    )


def _normalise(parts: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part == "..":
            if len(out) > 1:
                out.pop()
        elif part != ".":
            out.append(part)
    return out


def format_result(result: Result) -> str:
    """One line of text carrying ``result``; any text (pipes, newlines, unicode) round-trips."""
    return RESULT_PREFIX + result.model_dump_json(exclude_defaults=True)


def parse_result(text: str) -> Result | None:
    """The :class:`Result` in ``text`` (as made by :func:`format_result`, or bare Result JSON), else None.

    Looks at the last line that parses, so a command may print logs before its result.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    candidates = [text.strip(), *reversed(lines)]
    for candidate in candidates:
        body = candidate.removeprefix(RESULT_PREFIX.strip()).strip()
        if not body.startswith("{"):
            continue
        try:
            return Result.model_validate_json(body)
        except ValidationError:
            continue
    return None
