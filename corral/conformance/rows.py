"""One scenario's outcome, as the kit's table shows it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

__all__ = ["Outcome", "Row", "ScenarioFailed"]


class Outcome(StrEnum):
    """How a scenario ended: ``unsupported`` only for a feature the worker declared it does not implement."""

    PASS = "pass"
    FAIL = "fail"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Row:
    """One line of the conformance table: the scenario, its outcome, what was seen, how long it took."""

    scenario: str
    outcome: Outcome
    detail: str
    seconds: float

    def as_json(self) -> dict[str, Any]:
        """The row as a JSON object (``outcome`` as its string)."""
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["seconds"] = round(self.seconds, 2)
        return data


class ScenarioFailed(Exception):
    """Raised inside a scenario when the worker broke a rule; its message is the row's detail."""
