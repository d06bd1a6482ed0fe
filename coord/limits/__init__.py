"""Fleet-wide per-queue limits: concurrency and rate, in ``{ns}_limits`` (see ``docs/limits.md``).

``coord.limits`` (on a :class:`~coord.connection.Coord`) is a :class:`Limits`: it sets and reads each
queue's :class:`QueueLimits`, takes and gives back concurrency slots, reserves start times under a
rate, and takes back the slots of claims that are over. :class:`LimitsView` follows the bucket live.
"""

from coord.limits.models import (
    CLOCK_TOLERANCE,
    MAX_CONCURRENCY,
    MAX_RATE,
    MIN_RATE,
    QueueLimits,
    Rate,
    RateState,
    Reservation,
    SlotHolder,
    Verdict,
    parse_rate,
    plausible,
    recent_rate,
    reserve,
    verdict,
)
from coord.limits.service import KEEP, SLOT_GRACE, Keep, Limits, Slot
from coord.limits.view import LimitsView

__all__ = [
    "CLOCK_TOLERANCE",
    "KEEP",
    "MAX_CONCURRENCY",
    "MAX_RATE",
    "MIN_RATE",
    "SLOT_GRACE",
    "Keep",
    "Limits",
    "LimitsView",
    "QueueLimits",
    "Rate",
    "RateState",
    "Reservation",
    "Slot",
    "SlotHolder",
    "Verdict",
    "parse_rate",
    "plausible",
    "recent_rate",
    "reserve",
    "verdict",
]
