"""``corral submit --delay/--at/--priority`` and how ``corral tasks ls`` shows delayed and urgent tasks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from coord.server import NatsServer
from tests.corral.helpers_cli import corral

pytestmark = pytest.mark.timeout(60)


async def test_submit_with_a_delay_or_a_time_shows_the_task_as_delayed_in_tasks_ls(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    run = (nats_server.url, namespace, subprocess_env)
    submitted = await corral(*run, "submit", "-q", "idle", "--id", "soon", "--delay", "600", "--priority", "high")
    assert submitted.code == 0 and "submitted soon on queue idle (delay 600.0)" in submitted.out, submitted
    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    later = await corral(*run, "submit", "-q", "idle", "--id", "later", "--at", at.isoformat(), "--json")
    assert json.loads(later.out) == {
        "task_id": "later", "status": "pending", "priority": "normal", "not_before": at.isoformat(), "delay": None
    }  # fmt: skip
    again = await corral(*run, "submit", "-q", "idle", "--id", "soon", "--delay", "600", "--priority", "high")
    assert again.code == 0, again  # the same delay again: idempotent, not a new start
    listed = await corral(*run, "tasks", "ls")
    assert listed.code == 0, listed
    rows = {line.split()[1]: line for line in listed.out.splitlines() if "idle" in line}
    local = datetime.now(UTC).astimezone() + timedelta(seconds=600)
    assert "pending (delayed until" in rows["soon"] and ", high" in rows["soon"], rows
    assert any((local - timedelta(seconds=s)).strftime("%H:%M:") in rows["soon"] for s in (0, 10)), rows
    assert at.astimezone().strftime("%Y-%m-%d %H:%M:%S") in rows["later"], rows
    records = {r["task_id"]: r for r in json.loads((await corral(*run, "tasks", "ls", "--json")).out)}
    assert records["later"]["visible_at"] is not None
    assert datetime.fromisoformat(records["later"]["visible_at"]) == at
    assert records["soon"]["priority"] == "high" and records["soon"]["delay"] == 600
