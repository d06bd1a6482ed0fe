"""``corral mcp`` with per-agent credentials (``corral auth``) on a real nats-server that enforces them.

An agent minted ``agent+parent+worker`` can use every tool; one with the ``agent`` role only gets
fleet, mail, events and threads, and a task tool answers with the refusal in one line.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.coord.helpers_security import Secured, secured_server
from tests.corral.helpers_mcp import agent, call, refused

pytestmark = pytest.mark.timeout(90)

NAMESPACE = "mcpperm"
GRANTS = ["provisioner:admin", "agent+parent+worker:lead", "agent+parent+worker:hand", "agent:chat"]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    with secured_server(tmp_path_factory.mktemp("mcp-secured"), NAMESPACE, GRANTS) as server:
        yield server


@pytest.fixture
async def provisioned(secured: Secured) -> AsyncIterator[Secured]:
    async with secured.connect("admin", provision="apply"):
        pass
    yield secured


async def test_agent_parent_worker_credentials_are_enough_for_every_tool(provisioned: Secured) -> None:
    async with (
        provisioned.connect("lead") as lead_conn,
        provisioned.connect("hand") as hand_conn,
        agent(lead_conn, "lead") as lead,
        agent(hand_conn, "hand", tags=["builders"], parent="lead") as hand,
    ):
        task = await call(lead, "task_submit", queue="build", payload={"n": 2})
        waiting = asyncio.create_task(call(lead, "task_wait", task_ids=[task["task_id"]], timeout=30))
        claim = await call(hand, "task_claim", queue="build", wait=10)
        await call(hand, "task_heartbeat", task_id=claim["task"]["task_id"], progress="half")
        await call(hand, "task_complete", task_id=claim["task"]["task_id"], output=4)
        assert (await waiting)["finished"][0]["result"]["output"] == 4
        await call(lead, "mail_send", to_tag="builders", body="thanks", wait=0)
        assert [m["body"] for m in (await call(hand, "mail_read", wait=5))["messages"]] == ["thanks"]
        assert await call(hand, "event_report", kind="turn_ended", text="done") is True
        assert (await call(hand, "thread_reserve", thread="main"))["state"] == "reserved"
        assert (await call(lead, "thread_reserve", thread="main"))["owner"] == "hand"
        assert {a["info"]["id"] for a in (await call(lead, "fleet_list"))["agents"]} >= {"lead", "hand"}


async def test_an_agent_only_credential_gets_messaging_and_a_one_line_refusal_for_tasks(
    provisioned: Secured,
) -> None:
    async with (
        provisioned.connect("lead") as lead_conn,
        provisioned.connect("chat") as chat_conn,
        agent(lead_conn, "lead") as lead,
        agent(chat_conn, "chat") as chat,
    ):
        await call(chat, "mail_send", to_agent="lead", body="hi", wait=0)
        assert [m["body"] for m in (await call(lead, "mail_read", wait=5))["messages"]] == ["hi"]
        error = await refused(chat, "task_submit", queue="chatq")
        assert error.startswith("task_submit:") and "refused" in error and "mcpperm_tasks" in error, error
        assert await call(lead, "task_list", queue="chatq") == {"tasks": [], "more": False}
