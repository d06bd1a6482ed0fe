"""The dashboard's JSON API and event stream, without a browser: a real nats-server, the dashboard in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import coord
from coord.authconfig import parse_grant, write_auth
from coord.deadletter import LATE_RESULT
from coord.events import Errored, ScopeSubDelegated
from coord.limits import parse_rate
from coord.naming import Names, kv_stream_name
from coord.presence import AgentInfo
from coord.priority import Priority
from coord.roles import inbox_prefix
from coord.schedules import Schedule, TaskTemplate
from coord.server import NatsServer
from coord.tasks import ScheduleRequest
from corral.ui import Dashboard
from tests.corral.helpers_cli import corral
from tests.helpers_wait import eventually

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def token_of(http: aiohttp.ClientSession, dashboard: Dashboard) -> dict[str, str]:
    """The action header as the dashboard's own page sends it: the token read from the served page."""
    async with http.get(dashboard.url) as answer:
        page = await answer.text()
    match = re.search(r'<meta name="corral-token" content="([^"]+)">', page)
    assert match is not None, "the page carries the action token"
    return {"X-Corral-Action": match.group(1)}


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url) as answer:
        return answer.status, await answer.json()


async def first_frame(stream: aiohttp.ClientResponse) -> bytes:
    """The event stream's first event (after its ``retry:`` line): the snapshot."""
    assert (await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 10)).startswith(b"retry:")
    return await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 10)


async def test_ten_thousand_tasks_are_paginated_server_side_and_streamed_as_aggregates(
    coord_conn: coord.Coord, http: aiohttp.ClientSession
) -> None:
    await coord_conn.tasks.schedule_many(
        [ScheduleRequest(task_id=f"t{i:05d}", queue="bulk" if i % 2 else "other") for i in range(10_000)]
    )
    async with Dashboard(coord_conn, port=0) as dashboard:
        started = time.monotonic()
        status, page = await get(http, dashboard.url + "api/tasks?status=pending&queue=bulk&limit=50&offset=100")
        elapsed = time.monotonic() - started
        assert status == 200 and page["total"] == 5_000 and page["offset"] == 100
        rows = page["rows"]
        assert isinstance(rows, list) and len(rows) == 50
        assert all(row["queue"] == "bulk" and row["status"] == "pending" for row in rows)
        assert elapsed < 2, f"one page of 10,000 tasks took {elapsed:.2f}s"

        async with http.get(dashboard.url + "api/stream") as stream:
            snapshot = await first_frame(stream)
            assert b"event: snapshot" in snapshot
            assert len(snapshot) < 20_000, "the snapshot carries aggregates, not task records"
            data = json.loads(snapshot.split(b"data: ", 1)[1])
            assert data["counts"]["pending"] == 10_000
            assert {q["name"]: q["depth"] for q in data["queues"]} == {"bulk": 5_000, "other": 5_000}

            await coord_conn.tasks.cancel("t00001")
            frame = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 10)
            while b"event: delta" not in frame or b'"cancelled":1' not in frame:
                frame = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 10)
            assert len(frame) < 5_000, "a change is pushed as a small delta"
            assert b"t00003" not in frame, "no record travels with a delta"


async def test_one_set_of_watches_serves_every_browser(
    coord_conn: coord.Coord, http: aiohttp.ClientSession, namespace: str
) -> None:
    stream_name = kv_stream_name(coord_conn.names.tasks_bucket)
    async with Dashboard(coord_conn, port=0) as dashboard:
        before = (await coord_conn.js.stream_info(stream_name)).state.consumer_count
        streams = [await http.get(dashboard.url + "api/stream") for _ in range(10)]
        try:
            for stream in streams:
                assert b"event: snapshot" in await first_frame(stream)
            await eventually(lambda: len(dashboard.hub.clients) == 10, 5, "ten connected browsers")
            after = (await coord_conn.js.stream_info(stream_name)).state.consumer_count
        finally:
            for stream in streams:
                stream.close()
    assert after == before, "browsers share the dashboard's one watch of the tasks"


async def test_task_detail_gives_its_record_journal_attempts_and_trace_link(
    coord_conn: coord.Coord, http: aiohttp.ClientSession
) -> None:
    await coord_conn.tasks.schedule("t1", queue="q", spec={"title": "traced"}, meta={"traceparent": TRACEPARENT})
    claim = await coord_conn.tasks.claim("t1", "w1")
    await coord_conn.tasks.reclaim("t1", claim.claim_id, reason="w1 departed")
    claim = await coord_conn.tasks.claim("t1", "w2")
    await coord_conn.tasks.complete(claim, {"ok": True})
    template = "http://127.0.0.1:16686/trace/{trace_id}"
    async with Dashboard(coord_conn, port=0, trace_url=template) as dashboard:
        status, detail = await get(http, dashboard.url + "api/tasks/t1")
        assert status == 200
        assert detail["trace_link"] == f"http://127.0.0.1:16686/trace/{TRACE_ID}"
        attempts = detail["attempts"]
        assert isinstance(attempts, list)
        assert [(a["epoch"], a["worker"], a["outcome"]) for a in attempts] == [
            (1, "w1", "reclaimed"),
            (2, "w2", "completed"),
        ]
        journal = detail["journal"]
        assert isinstance(journal, list)
        assert [e["transition"] for e in journal] == ["scheduled", "claimed", "reclaimed", "claimed", "completed"]
        _, page = await get(http, dashboard.url + "api/tasks?q=traced")
        rows = page["rows"]
        assert isinstance(rows, list) and rows[0]["trace_link"] == detail["trace_link"]
        status, missing = await get(http, dashboard.url + "api/tasks/nope")
        assert status == 404 and "nope" in str(missing["error"])


async def test_bad_listing_parameters_are_refused_naming_the_parameter(
    coord_conn: coord.Coord, http: aiohttp.ClientSession
) -> None:
    async with Dashboard(coord_conn, port=0) as dashboard:
        status, answer = await get(http, dashboard.url + "api/tasks?status=bogus")
        assert status == 400 and str(answer["error"]).startswith("status: must be one of pending")
        status, answer = await get(http, dashboard.url + "api/tasks?limit=0")
        assert status == 400 and "limit: must be 1..500" in str(answer["error"])


async def test_actions_need_allow_actions_and_the_action_header_and_honour_the_store(
    coord_conn: coord.Coord, http: aiohttp.ClientSession
) -> None:
    await coord_conn.tasks.schedule("t1", queue="q", max_attempts=1)
    claim = await coord_conn.tasks.claim("t1", "w1")
    await coord_conn.tasks.fail(claim, "boom")  # attempts spent: dead
    async with (
        Dashboard(coord_conn, port=0) as read_only,
        http.post(read_only.url + "api/tasks/t1/retry", headers={"X-Corral-Action": "1"}) as answer,
    ):
        assert answer.status == 403 and "read-only" in (await answer.json())["error"]
    assert (await coord_conn.tasks.get("t1")).status.value == "dead"
    async with Dashboard(coord_conn, port=0, allow_actions=True) as dashboard:
        token = await token_of(http, dashboard)
        for wrong in ({}, {"X-Corral-Action": "1"}, {"X-Corral-Action": token["X-Corral-Action"][:-1]}):
            async with http.post(dashboard.url + "api/tasks/t1/retry", headers=wrong) as answer:
                assert answer.status == 403 and "token" in (await answer.json())["error"], wrong
        assert (await coord_conn.tasks.get("t1")).status.value == "dead", "no refused action changed anything"
        async with http.post(dashboard.url + "api/tasks/t1/cancel", headers=token) as answer:
            assert answer.status == 409, "a dead task cannot be cancelled: the store's transition decides"
        async with http.post(dashboard.url + "api/tasks/t1/retry", headers=token) as answer:
            assert answer.status == 200 and (await answer.json())["record"]["status"] == "pending"
        async with http.post(dashboard.url + "api/tasks/t1/cancel", headers=token) as answer:
            assert answer.status == 200 and (await answer.json())["record"]["status"] == "cancelled"
    assert (await coord_conn.tasks.get("t1")).status.value == "cancelled"


async def test_a_foreign_host_or_origin_is_refused_reads_included_and_actions_need_the_process_token(
    coord_conn: coord.Coord, http: aiohttp.ClientSession
) -> None:
    """DNS rebinding: a page at evil.example rebound to 127.0.0.1 sends its own name as Host and Origin."""
    await coord_conn.tasks.schedule("t1", queue="q", max_attempts=1)
    claim = await coord_conn.tasks.claim("t1", "w1")
    await coord_conn.tasks.fail(claim, "boom")
    async with (
        Dashboard(coord_conn, port=0, allow_actions=True, allowed_hosts=["dash.example.com", "proxy.lan:9000"]) as d,
        Dashboard(coord_conn, port=0) as read_only,
    ):
        port = d.port
        token = await token_of(http, d)
        evil = {"Host": f"evil.example:{port}"}
        reads = ("", "api/tasks", "api/state", "api/tasks/t1", "api/stream")
        for url in [d.url + path for path in reads] + [read_only.url + "api/tasks"]:
            async with http.get(url, headers=evil) as answer:
                error = (await answer.json())["error"]
                assert answer.status == 421 and "evil.example" in error and "--allowed-host" in error, url
        async with http.post(d.url + "api/tasks/t1/retry", headers={**evil, **token}) as answer:
            assert answer.status == 421, "a rebinding page is refused even if it had the token"
        for origin in ("http://evil.example", f"http://evil.example:{port}", "null", f"http://127.0.0.1:{port + 1}"):
            async with http.get(d.url + "api/tasks", headers={"Origin": origin}) as answer:
                assert answer.status == 403 and "Origin" in (await answer.json())["error"], origin
            async with http.post(d.url + "api/tasks/t1/retry", headers={"Origin": origin, **token}) as answer:
                assert answer.status == 403, origin
        assert (await coord_conn.tasks.get("t1")).status.value == "dead", "nothing refused changed the task"

        # The names it serves: its address, localhost on loopback, and the configured ones.
        for host, origin in (
            (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"),
            (f"localhost:{port}", f"http://localhost:{port}"),
            ("dash.example.com", "https://dash.example.com"),
            ("proxy.lan:9000", "http://proxy.lan:9000"),
        ):
            async with http.get(d.url + "api/tasks", headers={"Host": host, "Origin": origin}) as answer:
                assert answer.status == 200, host
        async with http.get(d.url + "api/tasks", headers={"Host": "proxy.lan:9001"}) as answer:
            assert answer.status == 421, "an allowed name with a port allows that port only"
        same_origin = {"Origin": f"http://127.0.0.1:{port}", **token}
        async with http.post(d.url + "api/tasks/t1/retry", headers=same_origin) as answer:
            assert answer.status == 200 and (await answer.json())["record"]["status"] == "pending"
        assert token != await token_of(http, read_only), "each process has its own token"


async def test_rejected_late_results_and_departures_go_on_the_timeline(
    coord_conn: coord.Coord, http: aiohttp.ClientSession
) -> None:
    async with Dashboard(coord_conn, port=0) as dashboard:
        async with coord_conn.presence.join(AgentInfo(id="a1", role="worker"), interval=0.3, ttl=1):
            await eventually(lambda: "a1" in dashboard.model.agents, 10, "a1 present")
        await coord_conn.dead_letters.record(LATE_RESULT, "late result from a1 (epoch 1) rejected", task_id="t9")

        def kinds() -> list[str]:
            return [item.kind for item in dashboard.model.timeline]

        await eventually(lambda: "late_result" in kinds() and "left" in kinds(), 10, "both on the timeline")
        _, state = await get(http, dashboard.url + "api/state")
        timeline = state["timeline"]
        assert isinstance(timeline, list)
        assert [i["kind"] for i in timeline] == ["joined", "left", "late_result"]
        assert timeline[2]["task_id"] == "t9" and "rejected" in timeline[2]["text"]
        departures = state["departures"]
        assert isinstance(departures, list) and departures[0]["id"] == "a1" and departures[0]["reason"] == "graceful"


async def test_corral_ui_refuses_a_bad_trace_url_a_busy_port_and_a_bad_host_in_one_line(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    bad = await corral(nats_server.url, namespace, subprocess_env, "ui", "--trace-url", "http://x/trace")
    assert bad.code == 2 and "--trace-url: must be an http(s) URL containing {trace_id}" in bad.err
    assert "Traceback" not in bad.err and len(bad.err.strip().splitlines()) == 1
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        busy = await corral(nats_server.url, namespace, subprocess_env, "ui", "--port", str(port))
    assert busy.code == 1 and f"--port: cannot listen on 127.0.0.1:{port}" in busy.err
    assert "Traceback" not in busy.err
    nowhere = await corral(nats_server.url, namespace, subprocess_env, "ui", "--host", "256.1.1.1")
    assert nowhere.code == 1 and "--host: cannot listen on 256.1.1.1:8470" in nowhere.err


async def test_an_observer_credential_sees_the_fleet_and_its_actions_are_refused_by_the_server(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    names = Names("perm")
    write_auth(tmp_path / "creds", names, [parse_grant("provisioner:admin"), parse_grant("observer:o1")])
    server = NatsServer(store_dir=tmp_path / "store", config_extra=(tmp_path / "creds" / "auth.conf").read_text())
    server.start()
    try:

        def auth(identity: str) -> coord.Auth:
            return coord.Auth(
                nkeys_seed=str(tmp_path / "creds" / f"{identity}.nk"), inbox_prefix=inbox_prefix(names, identity)
            )

        async with coord.connect(server.url, namespace="perm", auth=auth("admin"), provision="apply") as admin:
            await admin.tasks.schedule("t1", queue="q", max_attempts=1)
            claim = await admin.tasks.claim("t1", "w1")
            await admin.tasks.fail(claim, "boom")
            async with (
                coord.connect(server.url, namespace="perm", auth=auth("o1")) as observer,
                Dashboard(observer, port=0, allow_actions=True) as dashboard,
            ):
                _, page = await get(http, dashboard.url + "api/tasks?status=dead")
                assert page["total"] == 1, "an observer reads everything the dashboard shows"
                token = await token_of(http, dashboard)
                async with http.post(dashboard.url + "api/tasks/t1/retry", headers=token) as answer:
                    assert answer.status == 403
                    assert "permission" in (await answer.json())["error"].lower()
            assert (await admin.tasks.get("t1")).status.value == "dead"
    finally:
        server.stop(remove_store=True)


async def test_a_hundred_agents_renewing_cost_no_delta(coord_conn: coord.Coord, http: aiohttp.ClientSession) -> None:
    """The dashboard follows the presence change feed: renewals reach neither it nor its browsers."""
    async with contextlib.AsyncExitStack() as stack:
        for i in range(100):
            info = AgentInfo(id=f"w{i:03d}", role="worker", queues=["q"], capacity=4)
            await stack.enter_async_context(coord_conn.presence.join(info, interval=1, ttl=5))
        async with Dashboard(coord_conn, port=0) as dashboard, http.get(dashboard.url + "api/stream") as stream:
            snapshot = json.loads((await first_frame(stream)).split(b"data: ", 1)[1])
            assert len(snapshot["agents"]) == 100
            assert all(agent["since"] > 0 for agent in snapshot["agents"])
            loop = asyncio.get_running_loop()
            until = loop.time() + 3.5  # three renewals of every agent
            while (left := until - loop.time()) > 0:
                try:
                    frame = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), left)
                except TimeoutError:
                    break
                if frame.startswith(b"event: delta"):
                    delta = json.loads(frame.split(b"data: ", 1)[1])
                    assert delta["versions"]["agents"] == snapshot["versions"]["agents"], "a renewal is no change"
                    assert "agents" not in delta or delta["agents"]["upsert"], "no agent section without a change"
            await stack.aclose()  # all leave gracefully: one delta removes them
            assert await eventually_removed(stream, 100)


async def eventually_removed(stream: aiohttp.ClientResponse, count: int) -> bool:
    removed: set[str] = set()
    async with asyncio.timeout(10):
        while len(removed) < count:
            frame = await stream.content.readuntil(b"\n\n")
            if frame.startswith(b"event: delta"):
                agents = json.loads(frame.split(b"data: ", 1)[1]).get("agents")
                removed |= set(agents["remove"]) if agents else set()
    return True


async def test_event_trees_and_registry_threads_are_served_as_they_change(
    coord_conn: coord.Coord, http: aiohttp.ClientSession
) -> None:
    async with (
        Dashboard(coord_conn, port=0) as dashboard,
        coord_conn.presence.join(AgentInfo(id="planner"), interval=0.3, ttl=2),
    ):
        events = coord_conn.events
        await events.emit("planner", ScopeSubDelegated(agent="planner", sub_agent="coder", scope=["src"]))
        await events.emit("planner", Errored(agent="coder", message="lint failed"))
        await events.emit("coder", ScopeSubDelegated(agent="coder", sub_agent="tester", scope=["tests"]))
        reserved = await coord_conn.registry.reserve_thread("main", agent_id="planner")
        await eventually(
            lambda: len(dashboard.model.events) == 3 and "main" in dashboard.model.threads, 10, "events and thread"
        )
        _, answer = await get(http, dashboard.url + "api/events")
        trees = {t["root"]: {n["agent"]: n for n in t["nodes"]} for t in answer["trees"]}
        assert trees["planner"]["coder"]["last_error"] == "lint failed"
        assert trees["planner"]["coder"]["parent"] == "planner" and trees["planner"]["coder"]["scope"] == ["src"]
        assert trees["coder"]["tester"]["parent"] == "coder", "the page draws coder's own tree under it"
        _, registry = await get(http, dashboard.url + "api/registry")
        assert [(t["thread"], t["agent_id"], t["alive"]) for t in registry["threads"]] == [("main", "planner", True)]
        sessions = registry["sessions"]
        assert isinstance(sessions, list) and sessions[0]["id"] == reserved.session.id


async def test_queue_limits_delayed_and_prioritised_tasks_and_schedules_are_served_live(
    coord_conn: coord.Coord, http: aiohttp.ClientSession
) -> None:
    async with Dashboard(coord_conn, port=0) as dashboard:
        await coord_conn.limits.set("api", concurrency=2, rate=parse_rate("20/s"))
        await coord_conn.tasks.schedule_many(
            [
                ScheduleRequest(task_id="later", queue="api", delay=600),
                ScheduleRequest(task_id="urgent", queue="api", priority=Priority.HIGH),
            ]
        )
        await coord_conn.schedules.add(Schedule(name="nightly", cron="0 3 * * *", task=TaskTemplate(queue="api")))

        def served() -> bool:
            queues = {q["name"]: q for q in dashboard.model.queues_json()}
            return "api" in queues and queues["api"]["depth"] == 2 and bool(dashboard.model.schedules)

        await eventually(served, 10, "the limits, the tasks and the schedule")
        _, state = await get(http, dashboard.url + "api/state")
        [api] = [q for q in state["queues"] if q["name"] == "api"]
        assert api["limits"] == {"concurrency": 2, "rate": "20/s", "held": 0}
        assert (api["depth"], api["delayed"]) == (2, 1), "one of the two pending tasks may not start yet"
        [nightly] = state["schedules"]
        assert (nightly["name"], nightly["queue"], nightly["paused"]) == ("nightly", "api", False)
        assert nightly["next_tick"] > time.time() and nightly["last_tick"] is None
        _, page = await get(http, dashboard.url + "api/tasks?queue=api")
        rows = {r["task_id"]: r for r in page["rows"]}
        assert rows["later"]["visible_at"] > time.time() + 500 and rows["later"]["priority"] == "normal"
        assert rows["urgent"]["priority"] == "high" and rows["urgent"]["visible_at"] is None

        await coord_conn.limits.set("api", concurrency=None, rate=None)
        await eventually(lambda: not dashboard.model.limits, 10, "the limits removed")
        _, state = await get(http, dashboard.url + "api/state")
        assert [q["limits"] for q in state["queues"] if q["name"] == "api"] == [None]
