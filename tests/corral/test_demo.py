"""`corral demo`: the README's main job, run exactly as a user would (embedded server, real processes)."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import PYTHON


def test_demo_kills_and_pauses_workers_and_every_task_still_succeeds_once(subprocess_env: dict[str, str]) -> None:
    out = subprocess.run(
        [PYTHON, "-m", "corral", "demo", "--json", "--workers", "3", "--tasks", "24", "--ttl", "2"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["succeeded"] == 24 and summary["failed"] == 0
    assert summary["reclaimed"] >= 2, "the killed and the paused worker both held claims"
    assert summary["reclaimed_then_succeeded"] >= 2, "every reclaimed task is re-run elsewhere and succeeds"
    # Woken up, the paused worker's runs either present their results and are refused, or learn first
    # that their claims were taken and stop: no late result is recorded either way.
    fenced = summary["late_results_rejected"] + summary["late_runs_stopped"]
    assert fenced >= 1, "the paused worker's late work must be fenced off"
    assert summary["detection_latency_s"]["max"] <= 2 + 1.0
