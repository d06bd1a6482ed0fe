"""``corral tasks ls | show | cancel | retry`` as a user runs them: a real process against a real server."""

from __future__ import annotations

import asyncio
import json
import subprocess

import coord
from coord.server import NatsServer
from coord.tasks import TaskStatus
from coord.wire import Result, Spec
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


async def _seed_specs(url: str, namespace: str) -> None:
    async with coord.connect(url, namespace=namespace) as conn:
        tasks = conn.tasks
        for i in range(3):
            spec = Spec(task_id=f"s{i}", queue="gamma", title=f"job {i}", parent_agent_id="p1", payload={"n": i})
            await tasks.schedule(f"s{i}", queue="gamma", spec=spec.model_dump(mode="json"))
        claim = await tasks.claim("s0", "worker-1")
        await tasks.complete(claim, Result.success("all good", output={"rows": 3}).model_dump(mode="json"))


def test_ls_off_a_terminal_keeps_whole_headers_and_notes_without_json(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    asyncio.run(_seed_specs(nats_server.url, namespace))
    env = {k: v for k, v in subprocess_env.items() if k not in ("COLUMNS", "LINES")}
    out = subprocess.run(
        [PYTHON, "-m", "corral", "--server", nats_server.url, "--namespace", namespace, "tasks", "ls"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    [header] = [line for line in out.stdout.splitlines() if "task" in line and "note" in line]
    assert [word for word in header.replace("┃", " ").split()] == [
        "task", "queue", "status", "attempt", "epoch", "worker", "updated", "note",
    ]  # fmt: skip
    [row] = [line for line in out.stdout.splitlines() if " s0 " in line]
    assert "all good" in row and "{" not in row and "…" not in row


def test_ls_json_honours_the_limit(nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]) -> None:
    asyncio.run(_seed_specs(nats_server.url, namespace))
    out = corral(nats_server, namespace, subprocess_env, "tasks", "ls", "--json", "--limit", "2")
    assert out.returncode == 0, out.stderr
    assert [r["task_id"] for r in json.loads(out.stdout)] == ["s1", "s2"]
    out = corral(nats_server, namespace, subprocess_env, "tasks", "ls", "--json")
    assert len(json.loads(out.stdout)) == 3


def test_show_presents_the_users_payload_and_the_typed_result(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    asyncio.run(_seed_specs(nats_server.url, namespace))
    out = corral(nats_server, namespace, subprocess_env, "tasks", "show", "s0", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["payload"] == {"n": 0}
    assert shown["outcome"]["kind"] == "success" and shown["outcome"]["summary"] == "all good"
    assert shown["record"]["spec"]["payload"] == {"n": 0}  # the wire is unchanged
    out = corral(nats_server, namespace, subprocess_env, "tasks", "show", "s0")
    head = out.stdout.split("journal", 1)[0].splitlines()[1:]
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in head if line.strip()}
    assert lines["payload"] == '{"n": 0}' and lines["title"] == "job 0"
    assert lines["result"] == "success: all good" and lines["output"] == '{"rows": 3}'
    pending = corral(nats_server, namespace, subprocess_env, "tasks", "show", "s1", "--json")
    assert json.loads(pending.stdout)["outcome"] is None
