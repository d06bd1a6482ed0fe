"""What the limits bucket holds, and the pure rules that decide on it.

Keys of ``{ns}_limits`` (one bucket per namespace, history 1):

- ``limit.{queue}``: the queue's :class:`QueueLimits` (set by ``corral queues limit``);
- ``slot.{queue}.{i}`` (``0 <= i < concurrency``): a :class:`SlotHolder` while a claim holds the slot,
  a tombstone (or nothing) while it is free;
- ``rate.{queue}``: the queue's :class:`RateState` (GCRA), advanced with compare-and-set.

Nothing here touches NATS: :func:`reserve` (the rate rule) and :func:`verdict` (is a slot's holder
still running?) are plain functions, so the service and its tests share one definition of each.

Every value is read as untrusted (workers may write slot and rate keys): numbers must be finite and
within bounds (:data:`MIN_RATE`, :data:`MAX_RATE`, :data:`MAX_RECENT`), slot keys must be canonical
(:func:`split_slot_key`), and a rate state further ahead than one reservation could put it is not
believed (:func:`plausible`). What is done with a value that fails is in docs/limits.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from coord.errors import InvalidInput
from coord.ids import Token, validate_id
from coord.tasks import TaskStatus

__all__ = [
    "CLOCK_TOLERANCE",
    "LIMIT_PREFIX",
    "MAX_CONCURRENCY",
    "MAX_RATE",
    "MAX_RECENT",
    "MIN_RATE",
    "RATE_PREFIX",
    "RECENT_WINDOW",
    "SLOT_PREFIX",
    "QueueLimits",
    "Rate",
    "RateState",
    "Reservation",
    "SlotHolder",
    "Verdict",
    "limit_key",
    "parse_rate",
    "plausible",
    "rate_key",
    "recent_rate",
    "reserve",
    "slot_filter",
    "slot_key",
    "split_slot_key",
    "verdict",
]

LIMIT_PREFIX = "limit"
"""First token of the keys holding each queue's limits."""
SLOT_PREFIX = "slot"
"""First token of the concurrency slot keys."""
RATE_PREFIX = "rate"
"""First token of the rate-state keys."""
MAX_CONCURRENCY = 1000
"""Largest concurrency limit (one key per slot; every worker of the queue follows them)."""
MAX_RATE = 10_000.0
"""Largest rate limit, in starts per second."""
MIN_RATE = 1 / 86_400
"""Smallest rate limit, in starts per second (one a day): a slower "rate" is a paused queue in disguise."""
MAX_RECENT = 1e9
"""Largest recent-start count a rate state may hold (a larger one is not corral's)."""
CLOCK_TOLERANCE = 5.0
"""Seconds by which the clocks of two hosts sharing a rate may differ and spacing still holds; a rate
state further ahead than a reservation plus this is not believed (written over, see :func:`plausible`)."""
RECENT_WINDOW = 10.0
"""Seconds over which the recent rate shown by ``corral queues ls`` is averaged (exponentially)."""


def limit_key(queue: str) -> str:
    """Key of ``queue``'s :class:`QueueLimits`."""
    return f"{LIMIT_PREFIX}.{validate_id(queue, 'queue')}"


def slot_key(queue: str, index: int) -> str:
    """Key of concurrency slot ``index`` of ``queue``."""
    return f"{SLOT_PREFIX}.{validate_id(queue, 'queue')}.{index}"


def slot_filter(queue: str | None = None) -> str:
    """Key pattern of every slot of ``queue`` (of every queue when None)."""
    return f"{SLOT_PREFIX}.>" if queue is None else f"{SLOT_PREFIX}.{validate_id(queue, 'queue')}.*"


_SLOT_KEY = re.compile(rf"{SLOT_PREFIX}\.(?P<queue>[A-Za-z0-9_-]{{1,128}})\.(?P<index>0|[1-9][0-9]{{0,8}})")


def split_slot_key(key: str) -> tuple[str, int] | None:
    """``(queue, index)`` of a canonical slot key (``slot.{queue}.{i}``, ``i`` in canonical decimal
    below :data:`MAX_CONCURRENCY`); None for any other key, so that ``slot.q.00`` is never slot 0.

    ``slot_key(*split_slot_key(k)) == k`` for every key it accepts: a slot is released at its own key.
    """
    match = _SLOT_KEY.fullmatch(key)
    if match is None or int(match["index"]) >= MAX_CONCURRENCY:
        return None
    return match["queue"], int(match["index"])


def rate_key(queue: str) -> str:
    """Key of ``queue``'s :class:`RateState`."""
    return f"{RATE_PREFIX}.{validate_id(queue, 'queue')}"


_RATE = re.compile(r"\s*(?P<count>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*/\s*(?P<per>s|m)\s*")
_PER_SECONDS = {"s": 1.0, "m": 60.0}


class Rate(BaseModel):
    """A rate limit: at most ``count`` task starts per second (``per="s"``) or per minute (``per="m"``);
    finite, between :data:`MIN_RATE` and :data:`MAX_RATE` starts per second."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    count: float = Field(gt=0)
    """Starts allowed per period."""
    per: Literal["s", "m"] = "s"
    """The period: a second or a minute."""

    @property
    def per_second(self) -> float:
        """The rate in starts per second."""
        return self.count / _PER_SECONDS[self.per]

    @property
    def interval(self) -> float:
        """Seconds between two starts (starts are spaced evenly; there is no burst)."""
        return 1.0 / self.per_second

    def __str__(self) -> str:
        return f"{self.count:g}/{self.per}"

    @model_validator(mode="after")
    def _bounded(self) -> Rate:
        if not MIN_RATE <= self.per_second <= MAX_RATE:
            raise ValueError(f"must be between one a day and {MAX_RATE:g}/s (got {self})")
        return self


def parse_rate(text: str) -> Rate | None:
    """``"20/s"`` or ``"90/m"`` as a :class:`Rate`; ``"none"`` or a count of 0 as None (no rate limit).

    Raises :class:`~coord.errors.InvalidInput` saying the rule for anything else (or a rate above
    :data:`MAX_RATE` per second).
    """
    if text.strip().lower() in ("none", "0"):
        return None
    match = _RATE.fullmatch(text)
    if match is None:
        raise InvalidInput(f"must be a number of starts per second or per minute, e.g. 20/s or 90/m (got {text!r})")
    count = float(match["count"])
    if count == 0:
        return None
    per: Literal["s", "m"] = "m" if match["per"] == "m" else "s"
    if count / _PER_SECONDS[per] > MAX_RATE:
        raise InvalidInput(f"must be at most {MAX_RATE:g}/s (got {text!r})")
    if count / _PER_SECONDS[per] < MIN_RATE:
        raise InvalidInput(f"must be at least one start a day, e.g. 1/m (got {text!r})")
    return Rate(count=count, per=per)


class QueueLimits(BaseModel):
    """The fleet-wide limits of one queue (the value of ``limit.{queue}``); None fields are no limit."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    queue: Token
    """The queue limited."""
    concurrency: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY)
    """Most tasks of the queue running at once across the whole fleet."""
    rate: Rate | None = None
    """Most task starts of the queue per second or minute across the whole fleet."""
    updated_at: AwareDatetime
    """When the limits were last set."""

    @property
    def empty(self) -> bool:
        """True when no limit is set."""
        return self.concurrency is None and self.rate is None


class SlotHolder(BaseModel):
    """Who holds a concurrency slot (the value of ``slot.{queue}.{i}``): the claim it was taken for."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: Token
    """The task being claimed or run under the slot."""
    epoch: int = Field(ge=1)
    """The claim epoch the slot was taken for (the pending record's epoch + 1, known before the claim)."""
    worker_id: Token
    """The worker that holds it."""
    at: AwareDatetime
    """When the worker took it (its clock)."""


class RateState(BaseModel):
    """A queue's rate state (the value of ``rate.{queue}``): GCRA's theoretical arrival time and a recent
    count, every number finite and not negative (how far ahead ``tat`` may be is :func:`plausible`)."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    tat: float = Field(ge=0)
    """Unix time from which the next start is allowed."""
    recent: float = Field(default=0.0, ge=0, le=MAX_RECENT)
    """Starts reserved, exponentially decayed over :data:`RECENT_WINDOW` up to ``at``."""
    at: float = Field(default=0.0, ge=0)
    """Unix time ``recent`` was last brought up to date."""


@dataclass(frozen=True)
class Reservation:
    """What :func:`reserve` allows: start times reserved now, or when to ask again."""

    times: tuple[float, ...]
    """Unix times at which each reserved start may happen (earliest first); empty when none fit."""
    retry_at: float
    """When none fit: the unix time from which one would fit within the horizon."""
    state: RateState | None
    """The state to write for this reservation (None when nothing was reserved)."""


def plausible(state: RateState, rate: Rate, *, now: float, horizon: float) -> bool:
    """Whether ``state`` is one a reservation under ``rate`` could have written: its ``tat`` no further
    ahead of ``now`` than ``horizon`` plus one interval plus :data:`CLOCK_TOLERANCE` (a reservation
    never reserves past its horizon). A state that is not plausible holds no start anyone owns."""
    return state.tat <= now + horizon + rate.interval + CLOCK_TOLERANCE


def _decayed(state: RateState | None, now: float) -> float:
    if state is None or state.recent <= 0:
        return 0.0
    return state.recent * math.exp(-max(0.0, now - state.at) / RECENT_WINDOW)


def recent_rate(state: RateState | None, now: float) -> float:
    """Starts per second reserved recently (averaged over about :data:`RECENT_WINDOW` seconds)."""
    return _decayed(state, now) / RECENT_WINDOW


def reserve(state: RateState | None, rate: Rate, *, want: int, now: float, horizon: float) -> Reservation:
    """GCRA without burst, as reservations: up to ``want`` start times, ``rate.interval`` apart, none earlier
    than ``state.tat`` or ``now``, and none later than ``now + horizon``.

    Whoever writes the returned state (a compare-and-set on the one key) owns those times, so starts
    across the fleet are never closer than the interval, whichever host takes them.
    """
    interval = rate.interval
    start = max(state.tat if state is not None else now, now)
    room = now + horizon - start
    fit = math.floor(room / interval + 1e-9) + 1 if room >= 0 else 0
    n = max(0, min(want, fit))
    if n == 0:
        return Reservation((), start - horizon, None)
    times = tuple(start + i * interval for i in range(n))
    new = RateState(tat=start + n * interval, recent=_decayed(state, now) + n, at=now)
    return Reservation(times, now, new)


class Verdict(StrEnum):
    """Whether a slot's holder still runs the claim it took the slot for."""

    CURRENT = "current"
    """The task is claimed by the holder at the slot's epoch or later: keep the slot."""
    STALE = "stale"
    """The claim was made and has ended, or went to someone else: the slot is free to take back."""
    UNSURE = "unsure"
    """The claim is not written (yet), or the task is gone: stale once the holder had time to claim."""


def verdict(holder: SlotHolder, status: TaskStatus | None, epoch: int, worker_id: str | None) -> Verdict:
    """Judge ``holder`` against the task's status, epoch and claiming worker (``status`` None: no record).

    Epochs only grow, so a task seen at the slot's epoch or later and not claimed by the holder has
    left that claim behind for good, whatever replica the state was read from.
    """
    if status is None:
        return Verdict.UNSURE
    if status is TaskStatus.CLAIMED and worker_id == holder.worker_id and epoch >= holder.epoch:
        return Verdict.CURRENT
    if epoch >= holder.epoch:
        return Verdict.STALE
    return Verdict.UNSURE
