"""The shipped per-role permissions, on a real nats-server started with the users `corral auth` writes:
each role does its job with its own credential and is refused, at once and by name, what it must not do."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from subprocess import DEVNULL, PIPE

import nats
import nats.aio.client
import pytest

from coord.authconfig import parse_grant
from coord.consumer import CHECK_INTERVAL, queue_consumer_config
from coord.errors import InvalidInput, PermissionDenied
from coord.events import Progress
from coord.lease import LEADER, Lease, LeaseRecord
from coord.limits import Rate, SlotHolder
from coord.mailbox import Agent
from coord.naming import Names
from coord.permissions import permission_log
from coord.presence import AgentInfo
from coord.provision import queue_consumers
from coord.roles import Role, inbox_prefix, permissions_for
from coord.schedules import Schedule, TaskTemplate
from coord.wire import Result, Spec
from dispatch import Dispatcher, Reclaimer
from dispatch.scheduler import Scheduler
from tests.coord.helpers_security import Secured, secured_server
from workers import Worker

NAMESPACE = "perm"
GRANTS = [
    "provisioner:admin",
    "worker:w1",
    "worker:w2",
    "parent:p1",
    "parent:p2",
    "reclaimer:r1",
    "scheduler:s1",
    "observer:o1",
    "agent:a1",
    "agent:a2",
]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    with secured_server(tmp_path_factory.mktemp("secured"), NAMESPACE, GRANTS) as server:
        yield server


@pytest.fixture
async def provisioned(secured: Secured) -> AsyncIterator[Secured]:
    """The namespace provisioned, and queue ``jobs`` with it (``corral provision --queue jobs``)."""
    async with secured.connect("admin", provision="apply") as admin:
        await queue_consumers(admin.nc, admin.js, admin.names, "jobs", apply=True)
    yield secured


async def ok(spec: Spec, ctx: object) -> Result:
    return Result.success(summary=f"ran {spec.task_id}")


async def refused_at_once(call: object, within: float = 2.0) -> PermissionDenied:
    started = time.monotonic()
    with pytest.raises(PermissionDenied) as caught:
        await asyncio.wait_for(call, within)  # type: ignore[arg-type]
    assert time.monotonic() - started < within
    return caught.value


def test_permissions_are_built_from_the_namespace_and_bind_the_identity() -> None:
    names = Names(NAMESPACE)
    worker = permissions_for(names, "w1", {Role.worker})
    assert worker is not None
    assert "$KV.perm_presence.w1" in worker.publish_allow
    assert [s for s in worker.publish_allow if s.startswith("$KV.perm_presence.")] == ["$KV.perm_presence.w1"]
    assert "$JS.API.STREAM.PURGE.>" in worker.publish_deny
    assert worker.subscribe_allow == ["_INBOX.perm.w1.>", "perm.control.w1"]
    observer = permissions_for(names, "o1", {Role.observer})
    assert observer is not None
    assert not any(s.startswith("$KV.") or s.startswith("perm.") for s in observer.publish_allow)
    assert permissions_for(names, "admin", {Role.provisioner}) is None
    with pytest.raises(InvalidInput, match="unknown role 'wizard'"):
        parse_grant("wizard:w9")
    with pytest.raises(InvalidInput, match="ROLE"):
        parse_grant("w9")


async def test_a_worker_a_parent_and_an_observer_do_their_jobs_with_their_own_credentials(
    provisioned: Secured,
) -> None:
    async with (
        provisioned.connect("w1") as wconn,
        provisioned.connect("p1") as pconn,
        provisioned.connect("o1") as oconn,
    ):
        worker = Worker(wconn, ["jobs"], ok, concurrency=4, worker_id="w1")
        running = asyncio.create_task(worker.run())
        try:
            assert await pconn.presence.wait_present("w1", 10)
            dispatcher = await Dispatcher(pconn, parent_id="p1").start()
            try:
                ids = await dispatcher.submit_many(
                    [Spec(task_id=f"job{i}", title=f"job {i}", queue="jobs") for i in range(10)]
                )
                results = [await asyncio.wait_for(dispatcher.result(i), 15) for i in ids]
            finally:
                await dispatcher.stop()
            assert [r.summary for r in results] == [f"ran job{i}" for i in range(10)]
            listed = {r.task_id for r in await oconn.tasks.list()}
            assert {f"job{i}" for i in range(10)} <= listed
            assert "w1" in {a.id for a in await oconn.presence.list()}
        finally:
            worker.stop()
            await running
        for conn in (wconn, pconn, oconn):
            assert permission_log(conn.nc).refusals == [], f"{conn.nc.options['name']} was refused something"


async def test_large_specs_and_results_go_through_the_blob_bucket_with_each_roles_own_credentials(
    provisioned: Secured,
) -> None:
    big = "b" * (1 << 20)

    async def echo(spec: Spec, ctx: object) -> Result:
        return Result.success(summary=f"{len(str(spec.payload))}", output=spec.payload)

    async with (
        provisioned.connect("w2") as wconn,
        provisioned.connect("p2") as pconn,
        provisioned.connect("o1") as oconn,
    ):
        worker = Worker(wconn, ["jobs"], echo, worker_id="w2")  # a provisioned queue: its consumers exist
        running = asyncio.create_task(worker.run())
        try:
            async with Dispatcher(pconn, parent_id="p2") as dispatcher:
                result = await asyncio.wait_for(dispatcher.result(await dispatcher.submit(Spec(
                    task_id="big1", queue="jobs", payload=big))), 30)  # fmt: skip
            assert result.output == big
            stored = await oconn.tasks.get("big1")
            assert stored.spec_blob is not None and stored.result_blob is not None
            assert (await oconn.tasks.resolved(stored)).result["output"] == big  # the observer reads blobs
        finally:
            worker.stop()
            await running
        for conn in (wconn, pconn, oconn):
            assert permission_log(conn.nc).refusals == [], f"{conn.nc.options['name']} was refused something"
    names = Names(NAMESPACE)
    observer = permissions_for(names, "o1", {Role.observer})
    assert observer is not None and not any(s.startswith("$O.") for s in observer.publish_allow)


async def test_a_worker_cannot_purge_or_delete_streams_or_consumers(provisioned: Secured) -> None:
    async with provisioned.connect("w1") as conn:
        names = conn.names
        tasks_stream = f"KV_{names.tasks_bucket}"
        await conn.tasks.schedule(task_id="keep-me", queue="jobs", spec=None)
        raw = await nats.connect(provisioned.server.url, nkeys_seed=str(provisioned.creds / "w1.nk"))
        log = permission_log(raw)

        async def remember(err: Exception) -> None:
            log.record(str(err))

        raw._error_cb = remember
        try:
            js = raw.jetstream(timeout=1)
            for attempt, subject in (
                (js.purge_stream(tasks_stream), f"$JS.API.STREAM.PURGE.{tasks_stream}"),
                (js.delete_stream(names.events_stream), f"$JS.API.STREAM.DELETE.{names.events_stream}"),
                (
                    js.delete_consumer(names.dispatch_stream, names.queue_consumer("jobs")),
                    f"$JS.API.CONSUMER.DELETE.{names.dispatch_stream}.{names.queue_consumer('jobs')}",
                ),
            ):
                started = time.monotonic()
                with pytest.raises(nats.errors.TimeoutError):
                    await attempt
                refusal = log.since(started)
                assert refusal is not None and refusal.subject == subject.lower()
        finally:
            await raw.close()
        assert await conn.tasks.get("keep-me") is not None  # nothing was purged
        assert (await conn.js.stream_info(names.events_stream)).config.name == names.events_stream


async def test_a_worker_cannot_write_another_agents_presence_key(provisioned: Secured) -> None:
    async with provisioned.connect("w1") as conn:
        error = await refused_at_once(conn.presence.join(AgentInfo(id="w2")).__aenter__())
        assert "$kv.perm_presence.w2" in str(error)


async def test_a_worker_cannot_take_the_reclaimer_lease_and_a_reclaimer_can(provisioned: Secured) -> None:
    record = LeaseRecord(holder="w1", instance="x").model_dump_json().encode()
    async with provisioned.connect("w1") as worker, provisioned.connect("r1") as reclaimer:
        error = await refused_at_once(worker.roster.create(LEADER, record, ttl=3))
        assert "$kv.perm_roster.leader" in str(error)
        async with Lease(worker.roster, LEADER, "w1", ttl=3, interval=1) as refused:
            await asyncio.sleep(0.5)
            assert not refused.held  # its attempts are refused; it never holds the lease
        async with Reclaimer(reclaimer) as active:
            assert active.active and active.holder is not None and active.holder.record.holder == active.id


async def test_a_parent_cannot_publish_results_or_hear_another_parents_results(provisioned: Secured) -> None:
    async with provisioned.connect("p1") as conn:
        log = permission_log(conn.nc)
        started = time.monotonic()
        await conn.nc.publish(conn.names.results_subject("p2"), b"{}")
        await conn.nc.subscribe(conn.names.results_subject("p2"))
        await conn.nc.flush()
        for _ in range(50):
            if len([r for r in log.refusals if r.at >= started]) >= 2:
                break
            await asyncio.sleep(0.02)
        refused = {(r.operation, r.subject) for r in log.refusals if r.at >= started}
        assert refused == {("publish", "perm.results.p2"), ("subscription", "perm.results.p2")}


async def test_an_observer_is_refused_every_write_at_once(provisioned: Secured) -> None:
    async with provisioned.connect("o1") as conn:
        await refused_at_once(conn.tasks.schedule(task_id="nope", queue="jobs", spec=None))
        await refused_at_once(conn.presence.join(AgentInfo(id="o1")).__aenter__())
        await refused_at_once(conn.registry.create_session("o1", session_id="s1"))


async def test_a_scheduler_keeps_schedules_and_submits_ticks_and_other_roles_may_not_write_schedules(
    provisioned: Secured,
) -> None:
    every_second = Schedule(name="perm-beat", cron="* * * * * *", task=TaskTemplate(queue="jobs"))
    async with provisioned.connect("s1") as sconn, provisioned.connect("w1") as wconn:
        await sconn.schedules.add(every_second, replace=True)
        try:
            async with Scheduler(sconn) as scheduler:
                tick = await asyncio.wait_for(scheduler.events.get(), 10)
            assert (await sconn.tasks.get(tick.task_id)).queue == "jobs"
            assert (await sconn.schedules.get("perm-beat")).last_tick == tick.tick
            error = await refused_at_once(wconn.schedules.pause("perm-beat"))
            assert "$kv.perm_schedules.perm-beat" in str(error)
        finally:
            await sconn.schedules.remove("perm-beat")
        assert permission_log(sconn.nc).refusals == []
    async with provisioned.connect("p1") as pconn:
        await refused_at_once(pconn.schedules.add(every_second))


async def test_an_agent_can_mail_and_report_only_as_itself(provisioned: Secured) -> None:
    async with provisioned.connect("a1") as a1, provisioned.connect("a2") as a2:
        await a1.mailbox.send(Agent(id="a2"), "hello", sender="a1")
        received = await a2.mailbox.read_pending("a2", consume=True)
        assert [(m.sender, m.body) for m in received] == [("a1", b"hello")]
        error = await refused_at_once(a1.mailbox.send(Agent(id="a2"), "it's a2 here", sender="a2"))
        assert "perm.inbox.a2.m.a2." in str(error)
        await refused_at_once(a1.mailbox.send(Agent(id="a2"), "anonymous"))
        assert await a2.mailbox.read_pending("a2") == []
        # lifecycle events: as itself, yes; as another agent, refused (emit reports False, stores nothing)
        assert await a1.events.emit("a2", Progress(agent="a1", message="working"), sender="a1") is True
        started = time.monotonic()
        assert await a1.events.emit("a2", Progress(agent="a2", message="forged"), sender="a2") is False
        assert time.monotonic() - started < 2.0
        assert permission_log(a1.nc).since(started, "perm.events.a2.a2.") is not None


def role_env(secured: Secured, identity: str, base: dict[str, str]) -> dict[str, str]:
    """``base`` plus the {id}.env `corral auth` wrote, as a process would load it."""
    env = dict(base)
    for line in (secured.creds / f"{identity}.env").read_text().splitlines():
        name, _, value = line.partition("=")
        env[name] = value
    env["CORRAL_URL"] = secured.server.url
    return env


async def run_corral(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral", *args, env=env, stdout=PIPE, stderr=PIPE, stdin=DEVNULL
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_cli_roles_run_with_the_env_files_corral_auth_wrote(
    provisioned: Secured, subprocess_env: dict[str, str]
) -> None:
    """What compose and the k8s manifests run: the operator's provision of the queue, a worker, a reclaimer,
    a parent's submit, an observer's ls."""
    code, out, err = await run_corral(role_env(provisioned, "admin", subprocess_env), "provision", "--queue", "cli")
    assert code == 0, err
    assert "q-cli" in out
    worker_env = role_env(provisioned, "w2", subprocess_env)
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral", "worker", "--id", "w2", "-q", "cli", "--handler", "corral.cli.demo:work",
        env=worker_env, stdout=DEVNULL, stderr=PIPE, stdin=DEVNULL,
    )  # fmt: skip
    reclaimer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral", "reclaimer",
        env=role_env(provisioned, "r1", subprocess_env), stdout=DEVNULL, stderr=PIPE, stdin=DEVNULL,
    )  # fmt: skip
    try:
        async with provisioned.connect("o1") as observer:
            assert await observer.presence.wait_present("w2", 20)
        code, out, err = await run_corral(
            role_env(provisioned, "p1", subprocess_env),
            "submit", "--parent", "p1", "-q", "cli", "--id", "cli1", "--payload", '{"seconds": 0}', "--wait",
            "--wait-timeout", "30", "--json",
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out.splitlines()[-1])["status"] == "succeeded"
        code, out, err = await run_corral(role_env(provisioned, "o1", subprocess_env), "tasks", "ls", "--json")
        assert code == 0, err
        assert "cli1" in out
        assert worker.returncode is None and reclaimer.returncode is None, "a role exited"
    finally:
        for proc in (worker, reclaimer):
            if proc.returncode is None:
                proc.terminate()
        for proc in (worker, reclaimer):
            _, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
            assert b"Permissions Violation" not in err_bytes and b"permissions violation" not in err_bytes


async def test_a_worker_takes_slots_and_start_times_but_only_the_provisioner_sets_limits(provisioned: Secured) -> None:
    async with (
        provisioned.connect("admin") as admin,
        provisioned.connect("w1") as worker,
        provisioned.connect("r1") as reclaimer,
        provisioned.connect("o1") as observer,
    ):
        await admin.limits.set("limited", concurrency=1, rate=Rate(count=10, per="s"))
        holder = SlotHolder(task_id="gone", epoch=1, worker_id="w1", at=datetime.now(UTC) - timedelta(minutes=1))
        slot = await worker.limits.take_slot("limited", 0, over=0, holder=holder)
        assert (await worker.limits.reserve("limited", Rate(count=10, per="s"), want=1, horizon=1.0)).times
        assert (await observer.limits.all()).keys() == {"limited"}
        assert await reclaimer.limits.heal([slot], grace=0.0) == [slot]  # no such task: given back
        error = await refused_at_once(worker.limits.set("limited", concurrency=5))
        assert "$kv.perm_limits.limit.limited" in str(error)
        await refused_at_once(reclaimer.limits.set("limited", rate=None))
        await refused_at_once(observer.limits.take_slot("limited", 0, over=0, holder=holder))
        assert (await admin.limits.get("limited")).concurrency == 1  # type: ignore[union-attr]
        await admin.limits.clear("limited")


# --- the queues' durable consumers: only trusted roles make them -------------------------------


async def _raw(secured: Secured, identity: str) -> tuple[nats.aio.client.Client, object]:
    raw = await nats.connect(
        secured.server.url,
        nkeys_seed=str(secured.creds / f"{identity}.nk"),
        inbox_prefix=inbox_prefix(Names(NAMESPACE), identity),  # answers could reach it
    )
    log = permission_log(raw)

    async def remember(err: Exception) -> None:
        log.record(str(err))

    raw._error_cb = remember
    return raw, log


async def test_a_worker_credential_cannot_create_or_repoint_a_queue_consumer(provisioned: Secured) -> None:
    names = Names(NAMESPACE)
    stream, durable = names.dispatch_stream, names.queue_consumer("jobs")
    hostile = queue_consumer_config(names, "jobs")
    hostile.filter_subject = f"{NAMESPACE}.dispatch.nothing.*"  # all else as configured: an update NATS accepts
    raw, _ = await _raw(provisioned, "w1")
    try:
        body = json.dumps({"stream_name": stream, "config": hostile.as_dict()}).encode()
        for subject in (
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.{hostile.filter_subject}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{stream}",  # allowed (ephemeral consumers), but never a durable one
        ):
            try:
                answer = await raw.request(subject, body, timeout=1)
            except nats.errors.TimeoutError:
                continue  # refused by the server: no answer
            assert "error" in json.loads(answer.data), f"{subject} was accepted"
    finally:
        await raw.close()
    async with provisioned.connect("admin") as admin:
        info = await admin.js.consumer_info(stream, durable)
        assert info.config.filter_subject == names.queue_filter("jobs")


async def test_a_worker_waits_for_a_new_queues_consumers_saying_so_once_and_works_once_a_parent_submits(
    provisioned: Secured, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", "corral.consumer")
    async with provisioned.connect("w1") as wconn, provisioned.connect("p1") as pconn:
        worker = Worker(wconn, ["fresh"], ok, worker_id="w1")
        running = asyncio.create_task(worker.run())
        try:
            started = asyncio.create_task(worker.wait_started())
            await asyncio.sleep(CHECK_INTERVAL + 1.5)  # at least two checks
            assert not started.done(), "wait_started returned before the queue's consumers existed"
            assert len(permission_log(wconn.nc).refusals) == 1, "the worker asked again after being refused"
            waiting = [r.getMessage() for r in caplog.records if "may not create" in r.getMessage()]
            assert len(waiting) == 3  # once per consumer (one per priority level), not once per check
            assert all("corral provision --queue fresh" in line for line in waiting)
            async with Dispatcher(pconn, parent_id="p1") as dispatcher:  # the parent makes them on first submit
                task_id = await dispatcher.submit(Spec(task_id="fresh1", queue="fresh"))
                record = await asyncio.wait_for(dispatcher.result(task_id), 20)
            assert record.summary == "ran fresh1"
            await asyncio.wait_for(started, 5)
        finally:
            worker.stop()
            await running
        assert permission_log(pconn.nc).refusals == []


# --- what a hostile worker can still do (docs/security.md), each shown ----------------------------


async def test_a_hostile_worker_can_take_and_drop_the_notifications_of_any_queue_but_not_the_task(
    provisioned: Secured,
) -> None:
    """It may pull from every queue's consumer and acknowledge: a notification it drops is gone from the
    stream, the task stays pending in its record (the reclaimer's sweep notifies it again)."""
    names = Names(NAMESPACE)
    async with provisioned.connect("admin") as admin:
        await queue_consumers(admin.nc, admin.js, admin.names, "others", apply=True)
    async with provisioned.connect("p1") as pconn, provisioned.connect("w1") as wconn:
        await pconn.tasks.schedule(task_id="stolen", queue="others", spec=None)
        sub = await wconn.js.pull_subscribe_bind(names.queue_consumer("others"), stream=names.dispatch_stream)
        msgs = await sub.fetch(1, timeout=5)
        assert json.loads(msgs[0].data)["task_id"] == "stolen"
        await msgs[0].ack_sync()
        assert (await pconn.tasks.get("stolen")).status.value == "pending"
        assert names.notification_subject("others", "stolen") not in await pconn.tasks.queued_notifications()


async def test_a_hostile_worker_can_forge_notifications_that_only_make_workers_look(provisioned: Secured) -> None:
    """It may publish on any queue's notification subjects; a worker reads the stored record and claims
    nothing the record does not say (a malformed one is dead-lettered, one for no task dropped)."""
    names = Names(NAMESPACE)
    async with provisioned.connect("admin") as admin:
        await queue_consumers(admin.nc, admin.js, admin.names, "forged", apply=True)
    async with provisioned.connect("w1") as hostile, provisioned.connect("w2") as honest:
        for forged in (b"{not json", json.dumps({"task_id": "ghost", "revision": 1, "epoch": 0}).encode()):
            await hostile.js.publish(f"{NAMESPACE}.dispatch.forged.ghost", forged)
        worker = Worker(honest, ["forged"], ok, worker_id="w2")
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.wait_started(), 10)
            async with asyncio.timeout(10):
                while worker.stats.dead_lettered + worker.stats.dropped_notifications < 2:
                    await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await running
        assert worker.stats.claimed == 0
        assert names.notification_subject("forged", "ghost") not in await honest.tasks.queued_notifications()
