"""``corral mcp`` as real processes: the SDK's stdio client launches ``python -m corral mcp`` and drives it.

Parent and worker sessions in separate processes; a worker SIGKILLed while it holds a claim; mail
waking a waiting reader; a thread held by a live session and freed by its death.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

import coord
from coord.server import NatsServer, free_port
from coord.settings import Settings
from coord.tasks import TaskStatus
from tests.corral.helpers_cli import corral, start_corral
from tests.corral.helpers_mcp import call, stdio_agent

pytestmark = pytest.mark.timeout(120)


class Fleet:
    """Starts ``corral mcp`` processes for one test and can SIGKILL them."""

    def __init__(self, server: NatsServer, namespace: str, env: dict[str, str], stack: contextlib.AsyncExitStack):
        self.server, self.namespace, self.env, self.stack = server, namespace, env, stack

    async def start(self, agent_id: str, *args: str) -> Client:
        return await self.stack.enter_async_context(
            stdio_agent(self.server.url, self.namespace, self.env, agent_id, *args)
        )

    @staticmethod
    async def kill(observer: Client, agent_id: str) -> float:
        """SIGKILL ``agent_id``'s ``corral mcp`` process (its pid from its presence); when it died."""
        pid = (await call(observer, "fleet_agent", agent_id=agent_id))["info"]["pid"]
        os.kill(pid, signal.SIGKILL)
        return time.monotonic()


@contextlib.asynccontextmanager
async def fleet(nats_server: NatsServer, namespace: str, env: dict[str, str]) -> AsyncIterator[Fleet]:
    stack = contextlib.AsyncExitStack()
    try:
        yield Fleet(nats_server, namespace, env, stack)
    finally:
        with contextlib.suppress(Exception, BaseExceptionGroup):  # a killed process's stdio ends abruptly
            await stack.aclose()


async def test_parent_session_gets_each_result_from_a_worker_session(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    async with fleet(nats_server, namespace, subprocess_env) as agents:
        parent = await agents.start("lead", "--harness", "test-harness")
        worker = await agents.start("builder")
        ids = [(await call(parent, "task_submit", queue="build", payload={"n": n}))["task_id"] for n in range(3)]
        waiting = asyncio.create_task(call(parent, "task_wait", task_ids=ids, timeout=60))
        for _ in ids:
            claim = await call(worker, "task_claim", queue="build", wait=10)
            n = claim["task"]["payload"]["n"]
            await call(worker, "task_complete", task_id=claim["task"]["task_id"], output={"square": n * n})
        waited = await waiting
        assert waited["unfinished"] == []
        squares = {t["task_id"]: t["result"]["output"]["square"] for t in waited["finished"]}
        assert squares == {ids[n]: n * n for n in range(3)}
        lead = await call(worker, "fleet_agent", agent_id="lead")
        assert lead["info"]["harness"] == "test-harness"


async def test_killed_worker_session_loses_its_claim_within_ttl_and_a_second_agent_completes_it(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str], coord_conn: coord.Coord
) -> None:
    ttl = Settings.load().presence_ttl
    async with fleet(nats_server, namespace, subprocess_env) as agents:
        parent = await agents.start("lead")
        doomed = await agents.start("doomed")
        task_id = (await call(parent, "task_submit", queue="build", title="risky"))["task_id"]
        claim = await call(doomed, "task_claim", queue="build", wait=10)
        assert claim["task"]["task_id"] == task_id
        killed = await agents.kill(parent, "doomed")
        while True:
            record = await coord_conn.tasks.get(task_id)
            if record.status is not TaskStatus.CLAIMED:
                break
            assert time.monotonic() - killed < ttl + 5, "the claim was never reclaimed"
            await asyncio.sleep(0.02)
        reclaimed_after = time.monotonic() - killed
        print(f"\nclaim of a SIGKILLed corral mcp reclaimed after {reclaimed_after:.2f}s (TTL {ttl}s)")
        assert reclaimed_after <= ttl + 0.5
        assert record.status is TaskStatus.PENDING and record.error is not None
        rescuer = await agents.start("rescuer")
        again = await call(rescuer, "task_claim", queue="build", wait=10)
        assert again["task"]["task_id"] == task_id and again["epoch"] == 2
        await call(rescuer, "task_complete", task_id=task_id, summary="done on the second try")
        waited = await call(parent, "task_wait", task_ids=[task_id], timeout=30)
        assert waited["finished"][0]["result"]["summary"] == "done on the second try"
        assert waited["finished"][0]["worker"] == "rescuer"


async def test_mail_between_sessions_wakes_a_waiting_reader_within_100ms(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    async with fleet(nats_server, namespace, subprocess_env) as agents:
        sender = await agents.start("sender")
        reader = await agents.start("reader")
        # This test process is the harness: the MCP client imports jsonschema when it first validates a
        # tool's result (26 of the 37 ms of a first call, profiled), which is not corral's wake-up path.
        for client in (sender, reader):
            assert (await call(client, "mail_read", wait=0))["messages"] == []
        latencies: list[float] = []
        for n in range(5):
            reading = asyncio.create_task(call(reader, "mail_read", wait=10))
            await asyncio.sleep(0.5)  # the reader is waiting
            sent = time.monotonic()
            await call(sender, "mail_send", to_agent="reader", body=f"ping {n}", wait=0)
            inbox = await reading
            latencies.append(time.monotonic() - sent)
            assert [m["body"] for m in inbox["messages"]] == [f"ping {n}"]
            await call(reader, "mail_ack", ids=[inbox["messages"][0]["id"]])
        print(
            f"\nmail wake-up from the send call to the reader's answer: median "
            f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms (5 sends: "
            f"{', '.join(f'{x * 1000:.1f}' for x in latencies)})"
        )
        assert max(latencies) < 0.1


async def test_thread_refused_while_its_holder_lives_and_granted_after_it_is_killed(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    ttl = Settings.load().presence_ttl
    async with fleet(nats_server, namespace, subprocess_env) as agents:
        holder = await agents.start("holder")
        other = await agents.start("other")
        assert (await call(holder, "thread_reserve", thread="repo"))["state"] == "reserved"
        refusal = await call(other, "thread_reserve", thread="repo")
        assert refusal["state"] == "held" and refusal["owner"] == "holder"
        killed = await agents.kill(other, "holder")
        while (answer := await call(other, "thread_reserve", thread="repo"))["state"] == "held":
            assert time.monotonic() - killed < ttl + 5, "the thread was never freed"
            await asyncio.sleep(0.05)
        assert answer["state"] == "reserved" and answer["owner"] == "other"
        assert time.monotonic() - killed <= ttl + 1.0


def _alive(pid: int) -> bool:
    """True while process ``pid`` runs (an exited child not yet reaped is a zombie: not alive)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_http_serves_on_loopback_only_with_the_bearer_token(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str], coord_conn: coord.Coord
) -> None:
    refused = await corral(nats_server.url, namespace, subprocess_env, "mcp", "--http", "--host", "0.0.0.0")
    assert refused.code == 2 and "loopback" in refused.err and "Traceback" not in refused.err
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    server = await start_corral(
        nats_server.url, namespace, subprocess_env,
        "mcp", "--agent-id", "web", "--http", "--port", str(port), "--token", "s3cret", "--harness", "http-test",
    )  # fmt: skip
    try:
        assert await coord_conn.presence.wait_present("web", 20) is not None
        async with aiohttp.ClientSession() as web:
            for _ in range(100):  # the presence is up before the HTTP listener: wait for the port
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with web.post(url, json={}) as answer:
                        assert answer.status == 401
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("corral mcp --http never listened")
            async with web.post(url, json={}, headers={"Authorization": "Bearer wrong"}) as answer:
                assert answer.status == 401
        async with (
            httpx2.AsyncClient(headers={"Authorization": "Bearer s3cret"}) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            me = await call(client, "fleet_agent", agent_id="web")
            assert me["info"]["harness"] == "http-test"
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 15)
    assert await coord_conn.presence.wait_absent("web", 5)


async def test_a_second_process_with_a_live_agents_id_is_refused_in_one_line(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    async with fleet(nats_server, namespace, subprocess_env) as agents:
        await agents.start("only-one")
        second = await corral(nats_server.url, namespace, subprocess_env, "mcp", "--agent-id", "only-one")
        assert second.code == 1 and "only-one" in second.err and "Traceback" not in second.err, second


async def test_when_the_harness_goes_away_the_agent_gives_its_claims_back_at_once(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str], coord_conn: coord.Coord
) -> None:
    ttl = Settings.load().presence_ttl
    async with fleet(nats_server, namespace, subprocess_env) as agents:
        parent = await agents.start("lead")
        task_id = (await call(parent, "task_submit", queue="build"))["task_id"]
        async with stdio_agent(nats_server.url, namespace, subprocess_env, "leaving") as leaving:
            assert (await call(leaving, "task_claim", queue="build", wait=10))["task"]["task_id"] == task_id
            closed = time.monotonic()
        record = await coord_conn.tasks.get(task_id)
        gone = time.monotonic() - closed
        assert record.status is TaskStatus.PENDING and record.attempt == 0, record  # released, not reclaimed
        assert gone < ttl
        assert await coord_conn.presence.get("leaving") is None


async def test_sigterm_makes_the_stdio_server_give_its_claims_back_and_leave(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str], coord_conn: coord.Coord
) -> None:
    ttl = Settings.load().presence_ttl
    async with fleet(nats_server, namespace, subprocess_env) as agents:
        parent = await agents.start("lead")
        task_id = (await call(parent, "task_submit", queue="build"))["task_id"]
        leaving = await agents.start("terminated")
        assert (await call(leaving, "task_claim", queue="build", wait=10))["task"]["task_id"] == task_id
        pid = (await call(parent, "fleet_agent", agent_id="terminated"))["info"]["pid"]
        os.kill(pid, signal.SIGTERM)
        sent = time.monotonic()
        while (record := await coord_conn.tasks.get(task_id)).status is TaskStatus.CLAIMED:
            assert time.monotonic() - sent < ttl + 5, "the claim was never given back"
            await asyncio.sleep(0.02)
        given_back = time.monotonic() - sent
        # Released by the process itself (no attempt counted, no reclaim error), before its presence could expire.
        assert record.status is TaskStatus.PENDING and record.attempt == 0 and record.error is None, record
        assert given_back < ttl, f"given back after {given_back:.2f}s: the reclaimer's doing, not the process's"
        assert await coord_conn.presence.wait_absent("terminated", ttl)
        while _alive(pid):  # and the process exits
            assert time.monotonic() - sent < 15, "corral mcp did not exit after SIGTERM"
            await asyncio.sleep(0.05)


async def test_a_killed_agent_gives_its_limits_slot_back_through_the_reclaimer(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str], coord_conn: coord.Coord
) -> None:
    ttl = Settings.load().presence_ttl
    await coord_conn.limits.set("one", concurrency=1)
    async with fleet(nats_server, namespace, subprocess_env) as agents:
        parent = await agents.start("lead")  # its dispatcher's reclaimer heals claims and slots
        first = (await call(parent, "task_submit", queue="one", title="first"))["task_id"]
        second = (await call(parent, "task_submit", queue="one", title="second"))["task_id"]
        doomed = await agents.start("doomed")
        assert (await call(doomed, "task_claim", queue="one", wait=10))["task"]["task_id"] == first
        holders = [s.holder.worker_id for s in await coord_conn.limits.slots("one") if s.holder]
        assert holders == ["doomed"]
        rescuer = await agents.start("rescuer")
        assert await call(rescuer, "task_claim", queue="one", wait=1) is None  # the queue's one slot is taken
        killed = await agents.kill(parent, "doomed")
        again = await call(rescuer, "task_claim", queue="one", wait=ttl + 10)
        took = time.monotonic() - killed
        assert again is not None and again["task"]["task_id"] in (first, second)
        assert took <= ttl + 3.0, f"the slot came back {took:.2f}s after the kill"
        holders = [s.holder.worker_id for s in await coord_conn.limits.slots("one") if s.holder]
        assert holders == ["rescuer"]
