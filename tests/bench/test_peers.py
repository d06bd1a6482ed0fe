"""The peer benchmark runs end to end at tiny sizes, and a system that cannot be imported is a row, not a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.peers.common import Scenario
from bench.peers.runner import Peer, main, run_peers, select, table

TINY = Scenario(tasks=60, rounds=2, latency=3)


def test_corral_and_nats_floor_rows_have_positive_rates() -> None:
    missing = Peer("ghost", "a peer that is not installed", "bench.peers.no_such_module", "run", "nats")
    report = run_peers(TINY, [*select("corral,nats-reply"), missing])
    rows = {r.system: r for r in report.results}
    assert list(rows) == ["corral", "nats-reply", "ghost"]
    for key in ("corral", "nats-reply"):
        r = rows[key]
        assert r.ok, r.reason
        assert r.median_rate is not None and r.median_rate > 0
        assert r.p50_ms is not None and r.p50_ms > 0
        assert len(r.latencies_ms) == TINY.latency
        # every round's CPU per task, all processes: what tells a parent doing more work per task in
        # later rounds from a machine that only ran slower (a tiny round may read 0: CPU times tick in 10 ms)
        assert len(r.round_cpu_ms) == TINY.rounds and all(ms >= 0 for ms in r.round_cpu_ms)
    assert sum(rows["corral"].round_cpu_ms) > 0
    ghost = rows["ghost"]
    assert ghost.status == "unavailable"
    assert "no_such_module" in ghost.reason
    rendered = table(report)
    assert rendered.row_count == 3
    assert json.loads(json.dumps(report.to_json()))["results"][2]["reason"] == ghost.reason


def test_unimportable_only_run_writes_json_without_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.peers.runner as runner

    monkeypatch.setattr(runner, "PEERS", [Peer("ghost", "ghost", "bench.peers.no_such_module", "run", "redis")])
    out = tmp_path / "peers.json"
    assert main(["--systems", "ghost", "--json", str(out), "-q"]) == 0
    data = json.loads(out.read_text())
    assert data["results"][0]["status"] == "unavailable"
    assert "not installed" in data["results"][0]["reason"]
