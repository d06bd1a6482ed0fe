"""Shared by the conformance tests: the Python worker's kit command and the table a test prints."""

from __future__ import annotations

from corral.conformance import Row
from tests.conftest import PYTHON

PYTHON_WORKER = [
    PYTHON, "-m", "corral", "worker", "-q", "{queue}", "--id", "{worker_id}", "-c", "1",
    "--handler", "corral.conformance.handler:handle",
]  # fmt: skip
"""`corral worker` running the kit's handler, as `corral conformance -- ...` is given it."""


def table(rows: list[Row]) -> str:
    """The rows as the lines of a plain table (for the test log and assertion messages)."""
    return "\n".join(f"{r.scenario:18} {r.outcome.value:11} {r.seconds:5.1f}s {r.detail}" for r in rows)
