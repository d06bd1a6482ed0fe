"""The conformance kit in CI against the TypeScript worker (clients/typescript-worker; needs Node and
npm, which dev.py's NEEDS installs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from corral.conformance import KitConfig, Outcome, run_kit
from tests.corral.helpers_conformance import table
from tests.helpers_node import typescript_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_the_typescript_worker_passes_every_scenario_but_the_limits_and_priorities_it_declares_unsupported(
    tmp_path: Path,
) -> None:
    command = typescript_worker()
    rows = await run_kit(KitConfig(command, unsupported=frozenset({"limits", "priorities"}), log_dir=tmp_path))
    sys.stderr.write("conformance of clients/typescript-worker:\n" + table(rows) + "\n")
    outcomes = {r.scenario: r.outcome for r in rows}
    assert outcomes.pop("limits") is Outcome.UNSUPPORTED, table(rows)
    assert outcomes.pop("priorities") is Outcome.UNSUPPORTED, table(rows)
    assert len(outcomes) == 7 and all(o is Outcome.PASS for o in outcomes.values()), table(rows)
