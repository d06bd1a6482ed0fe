"""The conformance kit in CI: the Python worker passes it; a worker that breaks a rule fails the rows
that check that rule (the TypeScript worker: test_conformance_typescript.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from corral.conformance import KitConfig, Outcome, run_kit
from tests.conftest import PYTHON, ROOT
from tests.corral.helpers_cli import CliResult, corral
from tests.corral.helpers_conformance import PYTHON_WORKER, table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WRONG_WORKER = [PYTHON, str(Path(__file__).with_name("helpers_wrong_worker.py"))]


@pytest.fixture(autouse=True)
def _children_run_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")


async def test_the_python_worker_passes_every_scenario(tmp_path: Path) -> None:
    rows = await run_kit(KitConfig(PYTHON_WORKER, log_dir=tmp_path))
    sys.stderr.write("conformance of corral worker (Python):\n" + table(rows) + "\n")
    assert [r.scenario for r in rows] == [
        "presence", "claim-complete", "lease-extended", "poison-ignored", "cancel", "priorities", "limits",
        "late-result", "sigkill-reclaimed",
    ]  # fmt: skip
    assert all(r.outcome is Outcome.PASS for r in rows), table(rows)


async def test_a_worker_that_completes_without_presenting_its_claim_fails_the_rows_of_that_rule(
    tmp_path: Path,
) -> None:
    only = ("presence", "claim-complete", "late-result")
    rows = await run_kit(KitConfig(WRONG_WORKER, only=only, log_dir=tmp_path))
    sys.stderr.write("conformance of a wrong worker:\n" + table(rows) + "\n")
    outcomes = {r.scenario: r.outcome for r in rows}
    assert outcomes == {"presence": Outcome.PASS, "claim-complete": Outcome.FAIL, "late-result": Outcome.FAIL}, table(
        rows
    )
    details = {r.scenario: r.detail for r in rows}
    assert "Corral-Index" in details["claim-complete"]
    assert "late-result dead letter" in details["late-result"]


async def test_the_cli_prints_json_rows_exits_1_on_a_failed_row_and_2_on_bad_input(
    subprocess_env: dict[str, str],
) -> None:
    url, ns = "nats://127.0.0.1:1", "unused"  # the kit runs its own server: the global options are not used

    async def kit(*args: str) -> CliResult:
        return await corral(url, ns, subprocess_env, "conformance", *args, within=90)

    passing = await kit("--only", "presence", "--json", "--", *PYTHON_WORKER)
    assert passing.code == 0, passing
    report = json.loads(passing.out)
    assert report["ok"] is True and [r["scenario"] for r in report["rows"]] == ["presence"]
    assert report["rows"][0]["outcome"] == "pass"
    crashing = await kit("--only", "presence", "--json", "--", PYTHON, "-c", "raise SystemExit(3)")
    assert crashing.code == 1, crashing
    row = json.loads(crashing.out)["rows"][0]
    assert row["outcome"] == "fail" and "exited with 3" in row["detail"]
    for args, says in (
        ((), "give the worker command after --"),
        (("--only", "nope", "--", "true"), "--only 'nope': one of presence, claim-complete"),
        (("--unsupported", "blobs", "--", "true"), "--unsupported 'blobs': one of limits, priorities"),
    ):
        bad = await kit(*args)
        assert bad.code == 2 and says in bad.err, (args, bad)
