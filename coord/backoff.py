"""Retry delays after a failed attempt: :class:`Backoff` (exponential, capped, jittered)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from coord.validation import DAY

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Retry delay after the n-th failed attempt: ``min(max, base * factor**(n-1))``, jittered.

    Jitter is "equal jitter": the delay is drawn uniformly from ``[d * (1 - jitter), d]``, so
    retries of many tasks that failed together spread out but never wait longer than ``d``.
    """

    base: Annotated[float, Field(ge=0, le=DAY)] = 1.0
    """Delay after the first failure, in seconds (bounds checked where settings are read)."""
    factor: Annotated[float, Field(ge=1, le=100)] = 2.0
    """Growth per further failure."""
    max: Annotated[float, Field(ge=0, le=DAY)] = 300.0
    """Upper bound of the delay."""
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Fraction of the delay that is random (0 = none, 1 = full jitter)."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the retry that follows failed attempt number ``attempt`` (1-based)."""
        if self.base <= 0:
            return 0.0
        raw = min(self.max, self.base * self.factor ** max(0, attempt - 1))
        return raw * (1.0 - self.jitter * random.random())
