"""``corral tasks ls | show | cancel | retry`` as a user runs them: a real process against a real server."""

from __future__ import annotations

import asyncio
import json
import subprocess

import coord
from coord.server import NatsServer
from coord.tasks import TaskStatus
from tests.conftest import PYTHON


def corral(server: NatsServer, namespace: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "corral", "--server", server.url, "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=60,
    )


async def _seed(url: str, namespace: str) -> None:
    async with coord.connect(url, namespace=namespace) as conn:
        tasks = conn.tasks
        for i in range(3):
            await tasks.schedule(f"a{i}", queue="alpha", spec={"n": i})
        await tasks.schedule("b0", queue="beta", spec="hello", max_attempts=1)
        claim = await tasks.claim("a0", "worker-1")
        await tasks.heartbeat(claim, progress={"step": 1})
        await tasks.complete(claim, {"answer": 42})
        await tasks.fail(await tasks.claim("b0", "worker-2"), "exploded")


def test_ls_lists_tasks_filtered_by_queue_and_status(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    asyncio.run(_seed(nats_server.url, namespace))
    out = corral(nats_server, namespace, subprocess_env, "tasks", "ls", "--json")
    assert out.returncode == 0, out.stderr
    assert sorted(r["task_id"] for r in json.loads(out.stdout)) == ["a0", "a1", "a2", "b0"]
    out = corral(
        nats_server, namespace, subprocess_env, "tasks", "ls", "--queue", "alpha", "--status", "pending", "--json"
    )
    assert sorted(r["task_id"] for r in json.loads(out.stdout)) == ["a1", "a2"]
    out = corral(nats_server, namespace, subprocess_env, "tasks", "ls")
    assert out.returncode == 0 and "4 task(s)" in out.stdout and "exploded" in out.stdout and "dead" in out.stdout
    out = corral(nats_server, namespace, subprocess_env, "tasks", "ls", "--status", "finished")
    assert out.returncode == 2 and "--status: must be one of pending" in out.stderr and "(got 'finished')" in out.stderr


def test_show_prints_the_record_and_its_journal(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    asyncio.run(_seed(nats_server.url, namespace))
    out = corral(nats_server, namespace, subprocess_env, "tasks", "show", "a0", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["record"]["status"] == "succeeded" and shown["record"]["result"] == {"answer": 42}
    assert [e["transition"] for e in shown["journal"]] == ["scheduled", "claimed", "heartbeat", "completed"]
    assert shown["journal"][-1]["revision"] == shown["record"]["revision"]
    out = corral(nats_server, namespace, subprocess_env, "tasks", "show", "b0")
    assert out.returncode == 0, out.stderr
    for text in ("b0", "dead", "exploded", "journal", "scheduled", "claimed", "failed", "worker-2"):
        assert text in out.stdout


def test_cancel_and_retry_steer_tasks_by_hand(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    asyncio.run(_seed(nats_server.url, namespace))
    out = corral(nats_server, namespace, subprocess_env, "tasks", "cancel", "a1", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "cancelled"
    out = corral(nats_server, namespace, subprocess_env, "tasks", "retry", "b0")
    assert out.returncode == 0 and "pending" in out.stdout

    async def statuses() -> tuple[TaskStatus, TaskStatus]:
        async with coord.connect(nats_server.url, namespace=namespace) as conn:
            return (await conn.tasks.get("a1")).status, (await conn.tasks.get("b0")).status

    assert asyncio.run(statuses()) == (TaskStatus.CANCELLED, TaskStatus.PENDING)
    out = corral(nats_server, namespace, subprocess_env, "tasks", "retry", "a2")
    assert out.returncode == 1 and "only a dead or failed task can be retried" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_and_malformed_ids_are_one_line_errors(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    out = corral(nats_server, namespace, subprocess_env, "tasks", "show", "nope")
    assert out.returncode == 1 and "task 'nope' does not exist" in out.stderr
    out = corral(nats_server, namespace, subprocess_env, "tasks", "cancel", "not.an.id")
    assert out.returncode == 2 and "TASK_ID: 'not.an.id'" in out.stderr and "not allowed" in out.stderr
    assert "Traceback" not in out.stderr
