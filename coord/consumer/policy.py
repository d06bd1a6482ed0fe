"""The one bad-message policy of every corral consumer: deliveries -> back-off -> dead letter (pure).

JetStream counts the deliveries of each message (every NAK, with or without a delay, and every ack
wait that ran out is one more). Every consuming loop reads that count through :func:`deliveries` and
asks the policy what to do; no path puts a message back without looking at it:

* a message whose handling **failed** is put back after a growing delay
  (:meth:`Backoff.delay`) until its :attr:`Backoff.limit`, then dead-lettered;
* a message that merely **waits** (for a concurrency slot, a rate, a delayed start) is never
  dead-lettered: it is put back for a delay that grows with its deliveries up to
  :data:`WAIT_CAP`, and renewed (replaced by a fresh message, delivery count 0) once it reaches
  :data:`RENEW_AT`, well before the server's own bound (:data:`SERVER_MAX_DELIVER`) would strand it.

A delivery count that cannot be read is never taken as "first delivery" (that would make the message
immortal): it counts as over every limit, so a failing message is dead-lettered and a waiting one
renewed.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "EVENTS",
    "FAILING",
    "RENEW_AT",
    "SERVER_MAX_DELIVER",
    "WAIT_CAP",
    "Backoff",
    "deliveries",
    "must_renew",
    "waiting_delay",
]

SERVER_MAX_DELIVER = 20
"""The ``max_deliver`` of corral's durable consumers: what the server stops delivering after. Kept
finite so that a message which kills every process handling it (before it can settle) stops at last;
the policy below acts before it (dead letter at :attr:`FAILING.limit`, renewal at :data:`RENEW_AT`)."""
RENEW_AT = 15
"""Deliveries after which a waiting message is replaced by a fresh one instead of being put back
(5 below :data:`SERVER_MAX_DELIVER`: room for deliveries lost to processes that died holding it)."""
WAIT_CAP = 5.0
"""Longest a waiting message is put back for at a time (one more delivery per wait, at most)."""
WAIT_BASE = 0.1
"""Delay of a waiting message after its first delivery; doubled per delivery up to :data:`WAIT_CAP`."""


def deliveries(msg: object) -> int | None:
    """How many times ``msg`` has been delivered (1 the first time); None when that cannot be read.

    None is "over every limit" for the policy, never 1: a message whose count is unreadable must
    not be retried for ever.
    """
    try:
        count = msg.metadata.num_delivered  # type: ignore[attr-defined]
    except Exception:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return None
    return count


@dataclass(frozen=True)
class Backoff:
    """Failing deliveries: put back after ``min(cap, base * 2**(n-1))`` seconds until ``limit`` deliveries."""

    limit: int
    """Deliveries after which the message is dead-lettered."""
    base: float
    """Delay after the first failed delivery."""
    cap: float
    """Longest delay."""

    def exhausted(self, n: int | None) -> bool:
        """True when a message delivered ``n`` times (None: unknown) must be dead-lettered now."""
        return n is None or n >= self.limit

    def delay(self, n: int) -> float:
        """Seconds to put back a message whose ``n``-th delivery failed."""
        return float(min(self.cap, self.base * 2 ** max(0, n - 1)))


FAILING = Backoff(limit=10, base=0.5, cap=30.0)
"""Messages whose handling failed for a reason that may pass (the server away, a write lost)."""
EVENTS = FAILING
"""Events whose side effects failed: the same policy (10 deliveries, 0.5 s doubling to 30 s)."""


def waiting_delay(n: int | None, at_least: float = 0.0) -> float:
    """Seconds to put back a message that waits (never dead-lettered) after its ``n``-th delivery:
    at least ``at_least`` (what the caller knows it must wait), growing with ``n`` up to :data:`WAIT_CAP`
    (``at_least`` above it wins: a delayed start is not brought forward)."""
    grown = WAIT_CAP if n is None else min(WAIT_CAP, WAIT_BASE * 2 ** max(0, n - 1))
    return max(at_least, grown)


def must_renew(n: int | None) -> bool:
    """True when a waiting message delivered ``n`` times (None: unknown) must be replaced by a fresh one."""
    return n is None or n >= RENEW_AT
