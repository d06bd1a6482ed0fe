"""The acknowledged-batch bench: both ways store every write and the report has a median for each.

A tiny real run (one atomic batch of 1,000 creates and as many pipelined acked creates per round) on a
real nats-server. It checks the report's shape and that an atomic batch costs this process fewer µs
per write than the pipelined writes (one pub ack per 1,000 instead of one each; a generous bound:
the bench measures how much fewer).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.test_cluster_benches import bench


def test_atomic_batches_and_pipelined_writes_are_measured_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "batch.json"
    done = bench("batch_publish", "--batches", "1", "--rounds", "4", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["writes_per_round"] == 1000 and set(report["median"]) == {"pipelined", "atomic"}
    assert all(len(rounds) == 4 for rounds in report["rounds"].values())
    median = report["median"]
    assert all(m["client_us"] > 0 and m["wall_us"] > 0 for m in median.values())
    assert median["atomic"]["client_us"] < median["pipelined"]["client_us"], median
    assert "pipelined" in done.stdout and "atomic" in done.stdout


def test_a_bad_option_is_one_line_naming_it() -> None:
    done = bench("batch_publish", "--batches", "0")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--batches" in done.stderr
