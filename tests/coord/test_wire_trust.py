"""Nothing steers state from the wire unchecked: the substrate side (batched reads, mail headers,
mail and event senders, presence values that corral did not write)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

import coord
from coord.errors import PresenceLost
from coord.events import Errored, ScopeSubDelegated, ShutDown, TurnEnded
from coord.kv import Bucket
from coord.naming import is_reply_subject
from coord.presence import AgentInfo, Joined, PresenceEvent


def _tasks_bucket(conn: coord.Coord) -> Bucket:
    return conn.tasks.bucket


async def test_a_batched_read_returns_the_stored_entry_of_every_key_and_skips_missing_ones(
    coord_conn: coord.Coord,
) -> None:
    bucket = _tasks_bucket(coord_conn)
    revisions = {f"k{i}": await bucket.put(f"k{i}", f"v{i}".encode()) for i in range(300)}
    await bucket.delete("k7")
    found = await bucket.get_many([*revisions, "nope", "k1"])
    assert set(found) == set(revisions)
    assert found["k1"].value == b"v1" and found["k1"].revision == revisions["k1"]
    assert found["k299"].value == b"v299" and found["k299"].time is not None
    assert found["k7"].deleted
    assert await bucket.get_many(["nothing", "here"]) == {}
    assert await bucket.get_many([]) == {}


# --- mailbox: reply headers are honoured only under corral's inbox prefix ------------------------
async def _raw_mail(conn: coord.Coord, agent: str, message_id: str, headers: dict[str, str]) -> None:
    await conn.js.publish(
        conn.names.inbox_message_subject(agent, None, message_id),
        b"please ack",
        headers={"Corral-Id": message_id, "Nats-Msg-Id": message_id, **headers},
    )


async def test_an_ack_to_or_stream_to_header_cannot_make_the_recipient_purge_a_stream(
    coord_conn: coord.Coord, caplog: pytest.LogCaptureFixture
) -> None:
    await coord_conn.tasks.schedule("t1", queue="q")
    purge_tasks = f"$JS.API.STREAM.PURGE.{coord_conn.tasks.bucket.stream}"
    purge_events = f"$JS.API.STREAM.PURGE.{coord_conn.names.events_stream}"
    await _raw_mail(coord_conn, "victim", "msg-a", {"Corral-Ack-To": purge_tasks})
    await _raw_mail(coord_conn, "victim", "msg-b", {"Corral-Stream-To": purge_events})
    await _raw_mail(coord_conn, "victim", "msg-c", {"Corral-Ack-To": "_INBOX.*", "Corral-Stream-To": "_INBOX.>"})
    before = (await coord_conn.js.stream_info(coord_conn.names.events_stream)).state.messages
    received = []
    with caplog.at_level(logging.WARNING, logger="corral.mailbox"):
        async with coord_conn.mailbox.inbox("victim") as inbox:
            for _ in range(3):
                msg = await anext(inbox)
                received.append(msg)
                await msg.ack()
    assert [m.id for m in received] == ["msg-a", "msg-b", "msg-c"]
    assert all(m.ack_to is None and m.stream_to is None for m in received)
    assert (await coord_conn.js.stream_info(coord_conn.tasks.bucket.stream)).state.messages == 1
    assert (await coord_conn.js.stream_info(coord_conn.names.events_stream)).state.messages >= before
    assert (await coord_conn.tasks.get("t1")).task_id == "t1"
    warnings = [r for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(warnings) == 3


async def test_a_reply_subject_under_the_inbox_prefix_is_still_honoured(coord_conn: coord.Coord) -> None:
    inbox_subject = coord_conn.nc.new_inbox()
    sub = await coord_conn.nc.subscribe(inbox_subject)
    await _raw_mail(coord_conn, "r1", "msg-ok", {"Corral-Ack-To": inbox_subject})
    async with coord_conn.mailbox.inbox("r1") as inbox:
        msg = await anext(inbox)
        assert msg.ack_to == inbox_subject
        await msg.ack()
    ack = await sub.next_msg(timeout=2)
    assert (ack.headers or {}).get("Corral-Id") == "msg-ok"
    await sub.unsubscribe()


@pytest.mark.parametrize(
    "subject",
    ["$JS.API.STREAM.PURGE.x", "_INBOX.", "_INBOX", "_INBOX.a b", "_INBOX.*", "_INBOX.>", "_INBOX..x", "_INBOX.x\n"],
)
def test_only_literal_subjects_under_the_prefix_are_reply_subjects(subject: str) -> None:
    assert not is_reply_subject(subject)
    assert is_reply_subject("_INBOX.abc.def")
    assert is_reply_subject("_R_.abc", "_R_.") and not is_reply_subject("_INBOX.abc", "_R_.")


# --- presence: a value corral did not write is not a takeover ------------------------------------
def _forged_presence(agent: str) -> bytes:
    return json.dumps(
        {"id": agent, "instance": "attacker", "host": "evil", "pid": 1, "started_at": "2026-01-01T00:00:00+00:00"}
    ).encode()


async def test_an_unconditional_write_to_a_presence_key_does_not_evict_its_live_holder(
    coord_conn: coord.Coord,
) -> None:
    losses: list[PresenceLost] = []
    events: list[PresenceEvent] = []
    async with coord_conn.presence.watch() as watcher:

        async def follow() -> None:
            async for event in watcher:
                events.append(event)

        following = asyncio.create_task(follow())
        async with coord_conn.presence.join(
            AgentInfo(id="victim"), interval=0.2, ttl=2, on_lost=losses.append
        ) as membership:
            instance = membership.instance
            await asyncio.sleep(0.3)
            subject = coord_conn.presence._store.subject("victim")
            await coord_conn.js.publish(subject, _forged_presence("victim"))  # no Nats-TTL, no CAS
            await asyncio.sleep(1.5)
            assert losses == [] and not membership.is_lost and membership.present.is_set()
            assert membership.instance == instance and membership.generation == 0
            latest = await coord_conn.presence._store.latest("victim", leader=True)
            assert latest is not None and latest.record is not None and latest.record.instance == instance
            info = await coord_conn.presence.get("victim")
            assert info is not None and info.host != "evil"
            assert [type(e) for e in events] == [Joined]  # no departure, no second holder
        following.cancel()


async def test_observers_treat_a_presence_value_without_a_ttl_as_absent(coord_conn: coord.Coord) -> None:
    subject = coord_conn.presence._store.subject("ghost")
    await coord_conn.js.publish(subject, _forged_presence("ghost"))
    assert await coord_conn.presence.get("ghost") is None
    assert "ghost" not in await coord_conn.presence.present_ids()


# --- events: senders are bound to what they may report -------------------------------------------
async def test_an_agent_cannot_shut_down_an_unrelated_agent_but_a_parent_can_shut_down_its_child(
    coord_conn: coord.Coord,
) -> None:
    events = coord_conn.events
    assert await events.emit("root", TurnEnded(agent="a", turn=1))
    assert await events.emit("root", TurnEnded(agent="v", turn=1))
    assert await events.emit("root", TurnEnded(agent="x", turn=1))
    assert await events.emit("root", ScopeSubDelegated(agent="a", sub_agent="b"))
    async with events.listener("root") as listener:
        await listener.catch_up()
        # x, a direct child of root, tries to stop its sibling, to report for it, and to adopt it
        assert await events.emit("root", ShutDown(agent="v", reason="forged"), sender="x")
        assert await events.emit("root", Errored(agent="v", message="forged"), sender="x")
        assert await events.emit("root", ScopeSubDelegated(agent="x", sub_agent="v"))
        assert await events.emit("root", ShutDown(agent="v", reason="forged again"), sender="x")
        # a legitimately shuts down the child it delegated to
        assert await events.emit("root", ShutDown(agent="b", reason="done"), sender="a")
        await listener.catch_up()
    tree = await events.descendants("root")
    assert tree["v"].status == "active" and tree["v"].last_error is None and tree["v"].delegated_by is None
    assert tree["v"].parent("root") == "root"  # x's adoption was accepted but loses to v's earlier claim
    assert tree["b"].status == "shut_down" and tree["b"].delegated_by == "a"
    reasons = [d.reason for d in await coord_conn.dead_letters.read("events")]
    assert len(reasons) == 3 and all("rejected" in r for r in reasons)  # the two shut_downs and the errored


async def test_an_event_about_an_agent_nobody_delegated_is_dead_lettered_after_bounded_retries(
    coord_conn: coord.Coord,
) -> None:
    events = coord_conn.events
    assert await events.emit("root", ShutDown(agent="stranger"), sender="x")
    handled: list[str] = []
    async with events.listener("root", on_event=lambda r: handled.append(r.event.id)) as listener:
        await listener.catch_up(timeout=30)
    assert handled == []
    assert "stranger" not in await events.descendants("root")
    reasons = [d.reason for d in await coord_conn.dead_letters.read("events")]
    assert len(reasons) == 1 and "not known as an ancestor" in reasons[0]
