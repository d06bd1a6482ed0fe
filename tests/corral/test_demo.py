"""`corral demo`: the README's main job, run exactly as a user would (embedded server, real processes)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.conftest import PYTHON


def _summary(env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run ``corral ARGS --json`` as a user would; its summary (the last line of stdout)."""
    out = subprocess.run(
        [PYTHON, "-m", "corral", *args, "--json"], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    summary: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return summary


def test_demo_kills_and_pauses_workers_and_every_task_still_succeeds_once(subprocess_env: dict[str, str]) -> None:
    summary = _summary(subprocess_env, "demo", "--workers", "3", "--tasks", "24", "--ttl", "2")
    assert summary["succeeded"] == 24 and summary["failed"] == 0
    assert summary["reclaimed"] >= 2, "the killed and the paused worker both held claims"
    assert summary["reclaimed_then_succeeded"] >= 2, "every reclaimed task is re-run elsewhere and succeeds"
    # Woken up, the paused worker's runs either present their results and are refused, or learn first
    # that their claims were taken and stop: no late result is recorded either way.
    fenced = summary["late_results_rejected"] + summary["late_runs_stopped"]
    assert fenced >= 1, "the paused worker's late work must be fenced off"
    assert summary["detection_latency_s"]["max"] <= 2 + 1.0


def test_demo_agents_coordinate_through_corral_mcp_and_a_killed_agents_claim_is_taken_over(
    subprocess_env: dict[str, str],
) -> None:
    summary = _summary(subprocess_env, "demo-agents", "--tasks", "4")
    assert (summary["tasks"], summary["results"], summary["unfinished"]) == (4, 4, 0)
    # builder-2 was SIGKILLed holding a claim: builder-1 took it over once its presence lapsed
    assert summary["killed_claim_taken_over_s"] is not None
    assert summary["killed_claim_taken_over_s"] <= summary["presence_ttl_s"] + 3.0
    assert summary["mail_wake_ms"] < 1000, "the long-poll read is woken by the message itself"
    assert summary["thread_refused_owner"] == "lead"
