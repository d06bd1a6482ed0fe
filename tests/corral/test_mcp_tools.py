"""Every ``corral mcp`` tool through the SDK's in-memory client, against a real nats-server."""

from __future__ import annotations

import asyncio
import time

import pytest
from mcp import Client

import coord
from coord.server import NatsServer
from coord.settings import Settings
from coord.tasks import TaskStatus
from corral.mcp import AgentSession, Notifier, build_server
from tests.corral.helpers_mcp import agent, call, refused

pytestmark = pytest.mark.timeout(60)


async def test_fleet_shows_each_agent_with_role_tags_harness_and_holdings(coord_conn: coord.Coord) -> None:
    async with (
        agent(coord_conn, "boss", role="parent", harness="claude-code") as boss,
        agent(coord_conn, "hand", tags=["builders"], harness="codex") as hand,
    ):
        task = await call(boss, "task_submit", queue="build", title="compile")
        claimed = await call(hand, "task_claim", queue="build", wait=5)
        assert claimed["task"]["task_id"] == task["task_id"]
        fleet = {a["info"]["id"]: a for a in (await call(boss, "fleet_list"))["agents"]}
        assert fleet["hand"]["info"]["tags"] == ["builders"]
        assert fleet["hand"]["info"]["harness"] == "codex"
        assert fleet["boss"]["info"]["role"] == "parent"
        assert fleet["hand"]["holds"] == [task["task_id"]]
        one = await call(boss, "fleet_agent", agent_id="hand")
        assert one["info"]["harness"] == "codex"
        assert one["holds"] == [task["task_id"]]
        assert "not present" in await refused(boss, "fleet_agent", agent_id="nobody")
        schemas = {t.name: t for t in (await boss.list_tools()).tools}
        assert "AgentInfo" in str(schemas["fleet_list"].output_schema)


async def test_mail_delivered_enqueued_keyed_by_tag_and_acknowledged(coord_conn: coord.Coord) -> None:
    async with agent(coord_conn, "alice") as alice, agent(coord_conn, "bob", tags=["reviewers"]) as bob:
        # A live recipient that reads and acknowledges: delivered.
        sending = asyncio.create_task(call(alice, "mail_send", to_agent="bob", body="hello", wait=10))
        inbox = await call(bob, "mail_read", wait=5)
        assert [m["body"] for m in inbox["messages"]] == ["hello"]
        assert inbox["messages"][0]["sender"] == "alice"
        await call(bob, "mail_ack", ids=[inbox["messages"][0]["id"]])
        assert (await sending)["outcome"] == "delivered"
        assert (await call(bob, "mail_read"))["messages"] == []
        # Keyed: latest wins, enqueued at once.
        first = await call(alice, "mail_send", to_agent="bob", body="v1", key="status")
        await call(alice, "mail_send", to_agent="bob", body="v2", key="status")
        assert first["outcome"] == "enqueued"
        # By tag, without waiting.
        await call(alice, "mail_send", to_tag="reviewers", body="please review", wait=0)
        bodies = sorted(m["body"] for m in (await call(bob, "mail_read"))["messages"])
        assert bodies == ["please review", "v2"]
        # An absent agent: enqueued; a TTL under a second is refused and nothing is sent.
        assert (await call(alice, "mail_send", to_agent="carol", body="later", ttl=60))["outcome"] == "enqueued"
        assert "ttl" in await refused(alice, "mail_send", to_agent="carol", body="x", ttl=0.5)
        assert len(await coord_conn.mailbox.read_pending("carol")) == 1
        assert "mail_read first" in await refused(alice, "mail_ack", ids=["msg-unknown"])


async def test_long_poll_is_woken_by_the_message(coord_conn: coord.Coord) -> None:
    async with agent(coord_conn, "alice") as alice, agent(coord_conn, "bob") as bob:
        reading = asyncio.create_task(call(bob, "mail_read", wait=10))
        await asyncio.sleep(0.5)
        sent = time.monotonic()
        await call(alice, "mail_send", to_agent="bob", body="wake up", wait=0)
        inbox = await reading
        woke = time.monotonic() - sent
        assert [m["body"] for m in inbox["messages"]] == ["wake up"]
        assert woke < 0.5, f"the reader woke {woke:.3f}s after the send"
        empty = await call(bob, "mail_read", wait=0.3)
        assert empty["messages"][0]["body"] == "wake up"  # not acknowledged: still there
        assert empty["waited_ms"] < 300


async def test_parent_submits_waits_cancels_lists_and_worker_claims_heartbeats_completes(
    coord_conn: coord.Coord,
) -> None:
    async with agent(coord_conn, "boss") as boss, agent(coord_conn, "hand") as hand:
        one = await call(boss, "task_submit", queue="build", title="one", payload={"n": 1}, files=["/src/a.py"])
        two = await call(boss, "task_submit", queue="build", title="two", priority="high")
        three = await call(boss, "task_submit", queue="build", title="three", delay=3600)
        assert one["files"] == ["/src/a.py"] and one["status"] == "pending"
        # The urgent one first; the delayed one is not claimable.
        first = await call(hand, "task_claim", queue="build", wait=5)
        assert first["task"]["task_id"] == two["task_id"] and first["epoch"] == 1
        second = await call(hand, "task_claim", queue="build", wait=5)
        assert second["task"]["payload"] == {"n": 1}
        assert await call(hand, "task_claim", queue="build", wait=0.5) is None
        beat = await call(hand, "task_heartbeat", task_id=one["task_id"], progress={"done": 0.5})
        assert beat["task"]["progress"] == {"done": 0.5}
        waiting = asyncio.create_task(call(boss, "task_wait", task_ids=[one["task_id"], two["task_id"]], timeout=20))
        await call(hand, "task_complete", task_id=two["task_id"], summary="built", output={"ok": True})
        await call(hand, "task_complete", task_id=one["task_id"], outcome="fork", branch="feat", rev="abc123")
        waited = await waiting
        assert waited["unfinished"] == []
        results = {t["task_id"]: t["result"] for t in waited["finished"]}
        assert results[two["task_id"]]["output"] == {"ok": True}
        assert results[one["task_id"]]["kind"] == "fork" and results[one["task_id"]]["branch"] == "feat"
        status = await call(boss, "task_status", task_id=one["task_id"])
        assert status["status"] == "succeeded"
        # any-of with a timeout returns what has not finished.
        partial = await call(boss, "task_wait", task_ids=[three["task_id"]], mode="any", timeout=0.5)
        assert partial == {"finished": [], "unfinished": [three["task_id"]]}
        cancelled = await call(boss, "task_cancel", task_id=three["task_id"])
        assert cancelled["status"] == "cancelled"
        mine = await call(boss, "task_list", mine=True)
        assert {t["task_id"] for t in mine["tasks"]} == {one["task_id"], two["task_id"], three["task_id"]}
        done = await call(hand, "task_list", queue="build", status="succeeded", limit=1)
        assert len(done["tasks"]) == 1 and done["more"] is True


async def test_worker_fails_a_task_for_good(coord_conn: coord.Coord) -> None:
    async with agent(coord_conn, "boss") as boss, agent(coord_conn, "hand") as hand:
        task = await call(boss, "task_submit", queue="q")
        await call(hand, "task_claim", queue="q", wait=5)
        failed = await call(hand, "task_complete", task_id=task["task_id"], outcome="fail", error="cannot build")
        assert failed["status"] == "failed"
        assert failed["result"]["error"]["message"] == "cannot build"
        assert "holds no claim" in await refused(hand, "task_complete", task_id=task["task_id"])


async def test_bad_input_gets_one_clear_error_and_changes_nothing(nats_server: NatsServer, namespace: str) -> None:
    # The one size rule at its least: specs up to 1 MiB (larger ones than a record holds go to blobs).
    small = Settings(max_blob_bytes=1 << 20)
    async with (
        coord.connect(nats_server.url, namespace=namespace, settings=small) as coord_conn,
        agent(coord_conn, "boss") as boss,
        agent(coord_conn, "hand") as hand,
    ):
        assert "queue" in await refused(boss, "task_submit", queue="no/such queue")
        assert "queue" in await refused(hand, "task_claim", queue="a.b")
        huge = "x" * 2_000_000
        assert "bytes" in await refused(boss, "task_submit", queue="q", payload=huge)
        assert await coord_conn.tasks.list() == []
        assert "300" in await refused(boss, "task_wait", task_ids=["t-1"], timeout=365 * 86_400)
        assert "no task 't-1'" in await refused(boss, "task_wait", task_ids=["t-1"], timeout=1)
        assert "300" in await refused(hand, "task_claim", queue="q", wait=365 * 86_400)
        assert "300" in await refused(hand, "mail_read", wait=365 * 86_400)
        task = await call(boss, "task_submit", queue="q")
        before = await coord_conn.tasks.get(task["task_id"])
        assert "holds no claim" in await refused(hand, "task_complete", task_id=task["task_id"])
        assert "holds no claim" in await refused(hand, "task_heartbeat", task_id=task["task_id"], progress=1)
        after = await coord_conn.tasks.get(task["task_id"])
        assert after.revision == before.revision and after.status is TaskStatus.PENDING
        assert "exactly one" in await refused(boss, "mail_send", body="x", to_agent="a", to_tag="b")
        assert "unknown" in (await refused(boss, "no_such_tool")).lower()


async def test_events_reach_the_parent_and_form_its_tree(coord_conn: coord.Coord) -> None:
    async with agent(coord_conn, "lead") as lead, agent(coord_conn, "helper", parent="lead") as helper:
        assert await call(helper, "event_report", kind="turn_ended", text="read the code", turn=1) is True
        assert await call(helper, "event_report", kind="errored", text="tests fail") is True
        tree: list[dict[str, object]] = []
        for _ in range(100):
            tree = (await call(lead, "event_tree"))["descendants"]
            if tree and tree[0].get("last_error") == "tests fail":
                break
            await asyncio.sleep(0.05)
        assert tree[0]["agent"] == "helper" and tree[0]["last_turn"] == 1 and tree[0]["last_error"] == "tests fail"
        delegated = await call(helper, "event_report", kind="sub_delegated", sub_agent="grandchild", scope=["/src"])
        assert delegated is True
        assert await call(helper, "event_report", kind="shut_down", text="finished") is True
        below: dict[str, dict[str, object]] = {}
        for _ in range(100):
            below = {d["agent"]: d for d in (await call(lead, "event_tree"))["descendants"]}
            if "grandchild" in below and below["helper"]["status"] == "shut_down":
                break
            await asyncio.sleep(0.05)
        assert below["grandchild"]["delegated_by"] == "helper" and below["grandchild"]["scope"] == ["/src"]
        assert below["helper"]["status"] == "shut_down"
        assert "sub_agent" in await refused(helper, "event_report", kind="sub_delegated")
        assert "no parent" in await refused(lead, "event_report", kind="shut_down")


async def test_threads_reserved_refused_with_owner_released(coord_conn: coord.Coord) -> None:
    async with agent(coord_conn, "first") as first, agent(coord_conn, "second") as second:
        assert (await call(first, "thread_reserve", thread="repo-main"))["state"] == "reserved"
        refusal = await call(second, "thread_reserve", thread="repo-main")
        assert refusal["state"] == "held" and refusal["owner"] == "first"
        assert (await call(second, "thread_owner", thread="repo-main"))["owner"] == "first"
        assert "not held by this agent" in await refused(second, "thread_release", thread="repo-main")
        assert (await call(first, "thread_release", thread="repo-main"))["state"] == "released"
        assert (await call(second, "thread_owner", thread="repo-main"))["state"] == "free"
        assert (await call(second, "thread_reserve", thread="repo-main"))["state"] == "reserved"


async def test_resources_push_updates_when_mail_arrives_and_a_watched_task_ends(coord_conn: coord.Coord) -> None:
    async with agent(coord_conn, "boss") as boss, agent(coord_conn, "hand") as hand:
        listed = {str(r.uri) for r in (await boss.list_resources()).resources}
        assert {"corral://inbox", "corral://tasks", "corral://fleet"} <= listed
        task = await call(boss, "task_submit", queue="q")
        wanted = {"corral://inbox", "corral://tasks", f"corral://task/{task['task_id']}", "corral://fleet"}
        async with boss.listen(resource_subscriptions=sorted(wanted)) as events:
            await call(hand, "mail_send", to_agent="boss", body="psst", wait=0)
            await call(hand, "task_claim", queue="q", wait=5)
            await call(hand, "task_complete", task_id=task["task_id"])
            async with agent(coord_conn, "newcomer"):
                seen: set[str] = set()
                async with asyncio.timeout(10):
                    async for event in events:
                        seen.add(str(getattr(event, "uri", "")))
                        if wanted <= seen:
                            break
        inbox = await boss.read_resource("corral://inbox")
        assert "psst" in str(inbox.contents[0])
        tasks = await boss.read_resource("corral://tasks")
        assert "succeeded" in str(tasks.contents[0])


async def test_the_server_keeps_a_held_claims_lease_while_the_agent_lives(coord_conn: coord.Coord) -> None:
    async with agent(coord_conn, "boss") as boss, agent(coord_conn, "hand") as hand:
        task = await call(boss, "task_submit", queue="slow", lease=1.5)
        claim = await call(hand, "task_claim", queue="slow", wait=5)
        await asyncio.sleep(4.5)  # three leases: the sweep would take an unextended claim back
        record = await coord_conn.tasks.get(task["task_id"])
        assert record.status is TaskStatus.CLAIMED and record.epoch == claim["epoch"] == 1
        assert record.claim is not None and record.claim.worker_id == "hand"
        assert record.claim.deadline.isoformat() > claim["deadline"].replace("Z", "+00:00")
        done = await call(hand, "task_complete", task_id=task["task_id"])
        assert done["status"] == "succeeded"


async def test_legacy_resources_subscribe_gets_resource_updated_notifications(coord_conn: coord.Coord) -> None:
    notified: list[str] = []

    async def on_message(message: object) -> None:
        notified.append(repr(message))

    notifier = Notifier()
    session = AgentSession(coord_conn, agent_id="old", changed=notifier.updated)
    async with (
        session,
        agent(coord_conn, "sender") as sender,
        Client(build_server(session, notifier), mode="legacy", message_handler=on_message) as old,
    ):
        assert old.server_capabilities.resources is not None and old.server_capabilities.resources.subscribe
        await old.session.subscribe_resource("corral://inbox")
        await call(sender, "mail_send", to_agent="old", body="news", wait=0)
        async with asyncio.timeout(10):
            while not any("corral://inbox" in n for n in notified):
                await asyncio.sleep(0.02)
