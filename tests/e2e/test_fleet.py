"""End-to-end behaviour of a fleet: real worker processes, real server, real signals."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from pydantic import JsonValue

import coord
from coord.server import NatsServer
from coord.tasks import TaskRecord, TaskStatus
from coord.wire import Spec
from dispatch import Dispatcher, SpawnedWorker, build_worker_command, result_of
from dispatch.spawn import corral_argv
from tests.conftest import PYTHON
from tests.e2e.conftest import WorkerFactory, log_of
from tests.helpers_wait import eventually

TTL = 1.5


def output_of(record: TaskRecord) -> dict[str, JsonValue]:
    """The output ``helpers_handlers.sleepy`` returned for ``record`` (an object naming the worker)."""
    output = result_of(record).output
    assert isinstance(output, dict), output
    return output


def executions(marks: Path, task_id: str, phase: str = "done") -> list[str]:
    return sorted(p.name for p in marks.glob(f"{task_id}.*.{phase}"))


async def w1_running_t1_with_w2_standing_by(
    coord_conn: coord.Coord,
    dispatcher: Dispatcher,
    spawn_worker: WorkerFactory,
    marks: Path,
    seconds: float,
    *,
    extra: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Worker w1 has started task t1 (which takes ``seconds``); worker w2 is present and idle."""
    w1 = spawn_worker("w1", concurrency=1, ttl=TTL, extra=extra)
    assert await coord_conn.presence.wait_present("w1", 20)
    await dispatcher.submit(Spec(task_id="t1", queue="q", payload={"seconds": seconds, "marks": str(marks)}))
    await eventually(lambda: bool(executions(marks, "t1", "start")), 15, "w1 to start t1")
    spawn_worker("w2", concurrency=1, ttl=TTL)
    assert await coord_conn.presence.wait_present("w2", 20)
    # A worker process takes a second or more to start on a loaded machine: t1 must outlast that.
    assert not executions(marks, "t1"), f"t1 ({seconds}s) ended on w1 before w2 was present"
    return w1


async def test_sigkilled_worker_task_is_reclaimed_rerun_elsewhere_and_recorded_once(
    coord_conn: coord.Coord, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    async with Dispatcher(coord_conn) as dispatcher:
        assert dispatcher.reclaimer is not None
        w1 = await w1_running_t1_with_w2_standing_by(coord_conn, dispatcher, spawn_worker, tmp_path, 4.0)
        w1.kill()
        killed_at = time.monotonic()
        event = await asyncio.wait_for(dispatcher.reclaimer.events.get(), TTL + 5)
        detected = time.monotonic() - killed_at
        record = await dispatcher.wait("t1", 20)
    assert event.task_id == "t1" and event.worker_id == "w1"
    assert detected <= TTL + 1.0, f"reclaim took {detected:.2f}s after SIGKILL (TTL {TTL}s)"
    assert record.status is TaskStatus.SUCCEEDED
    assert output_of(record) == {"worker": "w2", "epoch": 2, "pid": output_of(record)["pid"]}
    assert executions(tmp_path, "t1") == ["t1.2.w2.done"]
    succeeded = [e for e in await coord_conn.tasks.journal("t1") if e.status is TaskStatus.SUCCEEDED]
    assert len(succeeded) == 1


async def test_sigstopped_worker_late_result_is_rejected_and_with_exit_on_loss_it_exits_4(
    coord_conn: coord.Coord, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    async with Dispatcher(coord_conn) as dispatcher:
        assert dispatcher.reclaimer is not None
        w1 = await w1_running_t1_with_w2_standing_by(
            coord_conn, dispatcher, spawn_worker, tmp_path, 4.0, extra=["--exit-on-loss"]
        )
        w1.send_signal(signal.SIGSTOP)
        event = await asyncio.wait_for(dispatcher.reclaimer.events.get(), TTL + 5)
        record = await dispatcher.wait("t1", 20)
        w1.send_signal(signal.SIGCONT)
        code = await asyncio.to_thread(w1.wait, 20)
    assert event.worker_id == "w1"
    assert record.status is TaskStatus.SUCCEEDED
    assert output_of(record)["worker"] == "w2"
    log = log_of(w1)
    # Woken up, w1 either tries to record its late result and is refused, or first hears that its
    # claim ended and stops the handler: either way nothing of its run is written.
    assert "rejected (StaleClaim" in log or "succeeded elsewhere; stopping its handler" in log, log
    assert code == 4, f"w1 should fail closed (exit 4), got {code}: {log}"
    after = await coord_conn.tasks.get("t1")
    assert after.revision == record.revision, "the late completion must not have written anything"
    assert "t1.2.w2.done" in executions(tmp_path, "t1")


async def test_sigstopped_worker_fails_closed_then_rejoins_and_takes_new_work(
    coord_conn: coord.Coord, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    async with Dispatcher(coord_conn) as dispatcher:
        assert dispatcher.reclaimer is not None
        w1 = await w1_running_t1_with_w2_standing_by(coord_conn, dispatcher, spawn_worker, tmp_path, 4.0)
        w1.send_signal(signal.SIGSTOP)
        event = await asyncio.wait_for(dispatcher.reclaimer.events.get(), TTL + 5)
        assert event.worker_id == "w1"
        assert (await dispatcher.wait("t1", 20)).status is TaskStatus.SUCCEEDED
        w1.send_signal(signal.SIGCONT)
        assert await coord_conn.presence.wait_present("w1", 10) is not None  # joined again, still running
        await eventually(
            lambda: "rejected (StaleClaim" in log_of(w1) or "stopping its handler" in log_of(w1),
            10,
            "w1 to find its late result refused or its claim gone",
        )
        # Two workers of concurrency 1 and two 2-second tasks at once: each worker takes one.
        await dispatcher.submit_many(
            [Spec(task_id=t, queue="q", payload={"seconds": 2, "marks": str(tmp_path)}) for t in ("t2", "t3")]
        )
        done = [await dispatcher.wait(t, 20) for t in ("t2", "t3")]
    assert w1.poll() is None, log_of(w1)
    assert {output_of(r)["worker"] for r in done} == {"w1", "w2"}
    assert executions(tmp_path, "t1") == ["t1.1.w1.done", "t1.2.w2.done"]


async def test_spawned_worker_that_exits_without_result_is_reclaimed_without_waiting_for_ttl(
    coord_conn: coord.Coord, nats_server: NatsServer, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    spec = Spec(task_id="t1", queue="q", worker_agent_id="child-1", payload={"seconds": 30, "marks": str(tmp_path)})
    await coord_conn.tasks.schedule("t1", queue="q", spec=spec.model_dump(mode="json"))
    argv = build_worker_command(
        corral_argv(),
        spec,
        server=nats_server.url,
        namespace=coord_conn.namespace,
        handler="tests.e2e.helpers_handlers:sleepy",
    )
    assert argv[-6:] == [
        "--task-id",
        "t1",
        "--worker-agent-id",
        "child-1",
        "--handler",
        "tests.e2e.helpers_handlers:sleepy",
    ]
    child = await SpawnedWorker(coord_conn, spec, argv, env=subprocess_env).start()
    await eventually(lambda: bool(executions(tmp_path, "t1", "start")), 20, "the child to start t1")
    child.kill()
    killed = time.monotonic()
    outcome = await child.wait()
    elapsed = time.monotonic() - killed
    assert outcome.reclaimed and outcome.record is not None
    assert outcome.record.status is TaskStatus.PENDING
    assert elapsed < 1.0, f"reclaim after process exit took {elapsed:.2f}s; the presence TTL is 3s"


async def test_spawned_worker_crashing_by_itself_is_reclaimed_at_once(
    coord_conn: coord.Coord, nats_server: NatsServer, subprocess_env: dict[str, str]
) -> None:
    spec = Spec(task_id="t2", queue="q", worker_agent_id="child-2")
    await coord_conn.tasks.schedule("t2", queue="q", spec=spec.model_dump(mode="json"))
    argv = build_worker_command(
        corral_argv(),
        spec,
        server=nats_server.url,
        namespace=coord_conn.namespace,
        handler="tests.e2e.helpers_handlers:exits",
    )
    outcome = await (await SpawnedWorker(coord_conn, spec, argv, env=subprocess_env).start()).wait()
    assert outcome.returncode == 3
    assert outcome.reclaimed
    assert outcome.record is not None and outcome.record.status is TaskStatus.PENDING
    assert await coord_conn.presence.wait_absent("child-2", 5)


async def test_graceful_shutdown_mid_run_then_new_workers_lose_and_duplicate_nothing(
    coord_conn: coord.Coord, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    first = [spawn_worker(f"a{i}", concurrency=4, extra=["--grace", "0.3"]) for i in range(2)]
    for i in range(2):
        assert await coord_conn.presence.wait_present(f"a{i}", 20)
    async with Dispatcher(coord_conn) as dispatcher:
        ids = await dispatcher.submit_many(
            [Spec(task_id=f"t{i}", queue="q", payload={"seconds": 0.6, "marks": str(tmp_path)}) for i in range(40)]
        )
        await eventually(lambda: len(list(tmp_path.glob("*.done"))) >= 8, 30, "some tasks to finish")
        for proc in first:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(p.wait, 20) for p in first]
        assert codes == [0, 0], [log_of(p) for p in first]
        between = await coord_conn.tasks.list()
        assert not [r for r in between if r.status is TaskStatus.CLAIMED], "graceful stop must release its claims"
        for i in range(2):
            spawn_worker(f"b{i}", concurrency=4)
        records = [r async for r in dispatcher.as_completed(ids, timeout=60)]
    assert sorted(r.task_id for r in records) == sorted(ids)
    assert all(r.status is TaskStatus.SUCCEEDED for r in records)
    done = Counter(name.split(".")[0] for name in (p.name for p in tmp_path.glob("*.done")))
    assert done == Counter({task_id: 1 for task_id in ids}), "every task must finish exactly once"


PARENT_SCRIPT = """
import asyncio, sys
import coord
from coord.wire import Spec
from dispatch import Dispatcher

async def main():
    async with coord.connect(sys.argv[1], namespace=sys.argv[2]) as c:
        async with Dispatcher(c, parent_id="parent-1") as d:
            await d.submit_many([Spec(task_id=f"t{i}", queue="q", payload={"seconds": 0.2}) for i in range(30)])
            print("submitted", flush=True)
            await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_parent_killed_mid_run_recovers_every_result_after_restart(
    coord_conn: coord.Coord, nats_server: NatsServer, spawn_worker: WorkerFactory, subprocess_env: dict[str, str]
) -> None:
    parent = subprocess.Popen(
        [PYTHON, "-c", PARENT_SCRIPT, nats_server.url, coord_conn.namespace], env=subprocess_env, stdout=subprocess.PIPE
    )
    assert parent.stdout is not None
    line = await asyncio.to_thread(parent.stdout.readline)
    assert line.strip() == b"submitted"
    spawn_worker("w1", concurrency=4)
    await asyncio.sleep(0.5)
    parent.kill()
    parent.wait()
    async with Dispatcher(coord_conn, parent_id="parent-1") as again:
        records = [r async for r in again.as_completed([f"t{i}" for i in range(30)], timeout=60)]
    assert len(records) == 30
    assert all(r.status is TaskStatus.SUCCEEDED for r in records)


async def test_malformed_notification_and_invalid_spec_are_dead_lettered_and_the_worker_keeps_running(
    coord_conn: coord.Coord, spawn_worker: WorkerFactory
) -> None:
    worker = spawn_worker("w1", concurrency=1)
    assert await coord_conn.presence.wait_present("w1", 20)
    await coord_conn.js.publish(coord_conn.names.notification_subject("q", "t0"), b"{not json")
    await coord_conn.tasks.schedule("bad", queue="q", spec={"task_id": "bad", "queue": "q", "max_attempts": "lots"})
    async with Dispatcher(coord_conn) as dispatcher:
        await dispatcher.submit(Spec(task_id="good", queue="q"))
        good = await dispatcher.wait("good", 20)
        bad = await dispatcher.wait("bad", 20)
    assert good.status is TaskStatus.SUCCEEDED
    assert bad.status is TaskStatus.FAILED
    assert "max_attempts" in (bad.error or "")
    assert result_of(bad).error is not None and result_of(bad).error.substrate_fault  # type: ignore[union-attr]
    dispatch_letters = await coord_conn.dead_letters.read("dispatch")
    spec_letters = await coord_conn.dead_letters.read("spec")
    assert len(dispatch_letters) == 1 and "malformed notification" in dispatch_letters[0].reason
    assert len(spec_letters) == 1 and spec_letters[0].task_id == "bad"
    assert worker.poll() is None, "the worker must keep running"


async def test_thousand_tasks_over_four_worker_processes_all_succeed_none_twice(
    coord_conn: coord.Coord, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    for i in range(4):
        spawn_worker(f"w{i}", concurrency=8)
    for i in range(4):
        assert await coord_conn.presence.wait_present(f"w{i}", 20)
    async with Dispatcher(coord_conn) as dispatcher:
        ids = await dispatcher.submit_many(
            [Spec(task_id=f"t{i}", queue="q", payload={"marks": str(tmp_path)}) for i in range(1000)]
        )
        records = [r async for r in dispatcher.as_completed(ids, timeout=120)]
    assert len(records) == 1000
    assert all(r.status is TaskStatus.SUCCEEDED for r in records)
    assert all(r.epoch == 1 for r in records), "no task may have been claimed twice"
    done = Counter(p.name.split(".")[0] for p in tmp_path.glob("*.done"))
    assert len(done) == 1000 and set(done.values()) == {1}
    workers = Counter(output_of(r)["worker"] for r in records)
    assert len(workers) >= 2, f"work should spread over the fleet: {workers}"


def test_python_module_entry_point_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "corral", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("corral ")
