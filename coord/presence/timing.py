"""The rule a presence heartbeat's timing must follow (shared by settings and memberships)."""

from __future__ import annotations

import math

from coord.errors import InvalidInput
from coord.validation import TIMEOUT, TTL, check_number

__all__ = ["MIN_TTL", "check_timing", "enforced_ttl"]

MIN_TTL = 1.0
"""The shortest per-message TTL nats-server accepts, in seconds."""


def enforced_ttl(ttl: float) -> float:
    """The TTL the server actually applies: nats-server truncates ``Nats-TTL`` to whole seconds."""
    return float(math.floor(ttl))


def check_timing(interval: float, ttl: float) -> None:
    """Raise :class:`InvalidInput` naming the field unless ``interval`` and ``ttl`` make a working heartbeat."""
    if not ttl >= MIN_TTL:
        raise InvalidInput(
            f"ttl must be at least {MIN_TTL:g}s (nats-server refuses shorter per-message TTLs), got {ttl}"
        )
    if not interval > 0:
        raise InvalidInput(f"interval must be > 0 seconds, got {interval}")
    check_number("ttl", ttl, TTL)
    check_number("interval", interval, TIMEOUT)
    enforced = enforced_ttl(ttl)
    if interval >= enforced:
        raise InvalidInput(
            f"interval ({interval:g}s) must be shorter than the TTL the server enforces ({enforced:g}s: "
            f"nats-server truncates ttl={ttl:g}s to whole seconds); use e.g. interval={enforced / 3:g}"
        )
