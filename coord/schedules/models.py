"""What the schedules bucket stores: a :class:`Schedule` per key, with the :class:`TaskTemplate` each tick submits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    field_validator,
)

from coord.ids import Token, validate_id
from coord.schedules.cron import MAX_NAME_LENGTH, check_cron, check_timezone, next_tick, tick_task_id
from coord.tasks.checks import check_json
from coord.wire import Spec, absolute_files

__all__ = ["Schedule", "ScheduleName", "TaskTemplate"]


def _name(value: str) -> str:
    return validate_id(value, "schedule name", max_length=MAX_NAME_LENGTH)


ScheduleName = Annotated[
    str,
    AfterValidator(_name),
    WithJsonSchema({"type": "string", "pattern": f"^[A-Za-z0-9_-]{{1,{MAX_NAME_LENGTH}}}$"}),
]
"""A schedule's name: an id (``A-Z a-z 0-9 _ -``) of at most :data:`~coord.schedules.cron.MAX_NAME_LENGTH` chars."""


def _now() -> datetime:
    return datetime.now(UTC)


class TaskTemplate(BaseModel):
    """The task every tick submits: the fields of a :class:`coord.wire.Spec` a parent chooses.

    Unknown fields are refused (also when read back): a scheduler that does not know a field a newer
    corral wrote must not submit the task without it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue: Token = "default"
    """Queue the tasks are dispatched on."""
    title: str = Field(default="", max_length=500)
    """Short human title of each task."""
    files: tuple[str, ...] = ()
    """Absolute paths the tasks scope their work to."""
    thread: Token | None = None
    """Conversation/thread the tasks belong to."""
    payload: JsonValue = None
    """Free-form JSON input for the handler (the same for every tick)."""
    max_attempts: int = Field(default=3, ge=1, le=1000)
    """Claims allowed per task before it goes dead."""
    timeout: float | None = Field(default=None, gt=0, le=86_400)
    """Lease in seconds (None: the store's default)."""

    _files_absolute = field_validator("files")(absolute_files)

    @field_validator("payload")
    @classmethod
    def _finite_payload(cls, value: JsonValue) -> JsonValue:
        check_json(value, "payload")  # NaN and infinities are not JSON (they would be stored as null)
        return value

    def spec(self, task_id: str) -> Spec:
        """The :class:`Spec` of one tick's task: this template under ``task_id``, with no parent."""
        return Spec(task_id=task_id, **self.model_dump())


class Schedule(BaseModel):
    """One recurring schedule (the value under its name in ``{ns}_schedules``).

    The definition (``cron``, ``timezone``, ``task``, ``paused``, ``since``) is written by
    ``corral schedules``; ``last_tick``/``last_task`` by the schedulers, with a compare-and-set that
    only ever moves them forward. Ticks at or before ``since`` (when the definition was written or
    the schedule resumed) or ``last_tick`` are never submitted.
    """

    model_config = ConfigDict(extra="ignore")

    name: ScheduleName
    """The schedule's name (its key; the prefix of its tasks' ids)."""
    cron: str
    """Cron expression: 5 fields, or 6 with seconds first (checked by :func:`~coord.schedules.cron.check_cron`)."""
    timezone: str = "UTC"
    """IANA time zone the expression is read in."""
    task: TaskTemplate
    """What each tick submits."""
    paused: bool = False
    """A paused schedule submits nothing; the ticks it misses are not made up on resume."""
    since: AwareDatetime = Field(default_factory=_now)
    """Only ticks after this count: the time the definition was written or the schedule last resumed."""
    updated_at: AwareDatetime = Field(default_factory=_now)
    """When anything of the schedule was last written (also a fresh value per write)."""
    last_tick: AwareDatetime | None = None
    """The latest tick submitted (by any scheduler), or None."""
    last_task: Token | None = None
    """The task id of ``last_tick``."""
    revision: int = Field(default=0, exclude=True)
    """KV revision this copy was read at (not stored)."""

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    def task_id(self, tick: datetime) -> str:
        """The id of the task this schedule submits for ``tick`` (the same in every scheduler)."""
        return tick_task_id(self.name, tick)

    def definition(self) -> tuple[object, ...]:
        """What a scheduler's timer depends on (not the last tick): a change re-arms it."""
        return (self.cron, self.timezone, self.task, self.paused, self.since)

    @property
    def floor(self) -> datetime:
        """Ticks at or before this are not submitted: the later of ``since`` and ``last_tick``."""
        return self.since if self.last_tick is None else max(self.since, self.last_tick)

    def upcoming(self, now: datetime) -> datetime | None:
        """The next tick that will be submitted after ``now`` (None while paused, or if there is none)."""
        if self.paused:
            return None
        return next_tick(self.cron, self.timezone, max(now, self.floor))
