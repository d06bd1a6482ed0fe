"""The Redis-based peers a user would pick instead of corral (saq, dramatiq, streaq) run end to end at tiny sizes.

They run as a user runs them: ``python3 dev.py bench peers``, which installs the ``bench`` extra
into the project's virtualenv first, against a real redis-server (the system's, one of
``dev.py``'s NEEDS) on loopback; each row must come back filled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.peers.runner import PEERS, main

ROOT = Path(__file__).resolve().parent.parent.parent
NEW = ["saq", "saq-tuned", "dramatiq", "streaq"]
TASKS, ROUNDS, LATENCY = 40, 2, 3


def run_bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "peers.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), "bench", "peers", "--json", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,  # the first run pip-installs the bench extra
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return report, done.stdout


def test_saq_dramatiq_and_streaq_rows_come_back_filled(tmp_path: Path) -> None:
    report, printed = run_bench(
        tmp_path,
        *("--tasks", str(TASKS), "--rounds", str(ROUNDS), "--latency", str(LATENCY)),
        *("--systems", ",".join(NEW)),
    )
    rows = {r["system"]: r for r in report["results"]}
    assert list(rows) == NEW
    for key, row in rows.items():
        assert row["status"] == "ok", (key, row["reason"])
        assert len(row["rates"]) == ROUNDS and all(rate > 0 for rate in row["rates"]), row
        assert row["last_vs_first"] == pytest.approx(row["rates"][-1] / row["rates"][0])
        assert row["latency_samples"] == LATENCY and 0 < row["p50_ms"] <= row["p99_ms"], row
        per_task = row["cpu_ms_per_task"]
        assert per_task["producer"] > 0 and per_task["workers"] > 0, (key, per_task)
        assert per_task["total"] == pytest.approx(per_task["producer"] + per_task["workers"] + per_task["broker"])
        assert row["versions"], key
    assert len(rows["streaq"]["executions"]) == ROUNDS and all(e > 0 for e in rows["streaq"]["executions"])
    assert rows["saq"]["p50_ms"] > rows["saq-tuned"]["p50_ms"], "0.5 s polling against 5 ms"
    assert {"saq", "dramatiq", "streaq"} <= set(report["machine"]["versions"])
    labels = {p.key: p.label for p in PEERS}
    for key in NEW:
        assert labels[key].split(",")[0] in printed
    assert "executions/s" in printed and "last / first round" in printed


@pytest.mark.parametrize("bad", [["--rounds", "0"], ["--tasks", "-5"], ["--latency", "x"]])
def test_sizes_out_of_range_exit_2_with_one_line(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*bad, "--systems", "saq", "-q"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bench peers: error: argument") and bad[0] in err[-1]
