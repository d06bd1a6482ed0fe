"""Lifecycle events: durable, replayed once after downtime, idempotent, order-tolerant, relayed to the root."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import coord
from coord.events import (
    Errored,
    Progress,
    ReceivedEvent,
    ScopeSubDelegated,
    ShutDown,
    TurnEnded,
    parse_event,
    render_event,
)
from coord.server import NatsServer
from tests.conftest import PYTHON
from tests.coord.helpers_mailbox import dead_letters

HERE = Path(__file__).resolve().parent


async def _spawn_parent(
    url: str, namespace: str, agent: str, mode: str, env: dict[str, str]
) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        PYTHON, str(HERE / "helpers_events_parent.py"), url, namespace, agent, mode,
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert await _line(proc) == {"ready": True}
    return proc


async def _line(proc: asyncio.subprocess.Process, wait: float = 15) -> dict[str, object]:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), wait)
    assert raw, "parent process ended early"
    result: dict[str, object] = json.loads(raw)
    return result


async def _rest(proc: asyncio.subprocess.Process) -> list[dict[str, object]]:
    assert proc.stdout is not None
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


async def test_events_emitted_while_the_parent_is_down_reach_it_once_when_it_starts(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    events = [TurnEnded(agent="kid", turn=i) for i in range(5)] + [ShutDown(agent="kid", reason="done")]
    for event in events:
        assert await coord_conn.events.emit("boss", event)

    first = await _spawn_parent(nats_server.url, namespace, "boss", "once", subprocess_env)
    got = await _rest(first)
    assert [e["id"] for e in got] == [e.id for e in events]

    second = await _spawn_parent(nats_server.url, namespace, "boss", "once", subprocess_env)
    assert await _rest(second) == [], "a restarted parent must not see events it already handled"


async def test_a_parent_killed_mid_stream_gets_exactly_what_it_missed_after_restart(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    parent = await _spawn_parent(nats_server.url, namespace, "boss", "follow", subprocess_env)
    before = [Progress(agent="kid", message=f"step {i}") for i in range(3)]
    for event in before:
        assert await coord_conn.events.emit("boss", event)
    assert [(await _line(parent))["id"] for _ in before] == [e.id for e in before]
    await _acked_everything(coord_conn, "boss")  # an event killed between handler and ack would replay once
    parent.send_signal(signal.SIGKILL)
    await parent.wait()

    during = [Progress(agent="kid", message=f"step {i}") for i in range(3, 7)]
    for event in during:
        assert await coord_conn.events.emit("boss", event)

    restarted = await _spawn_parent(nats_server.url, namespace, "boss", "once", subprocess_env)
    assert [e["id"] for e in await _rest(restarted)] == [e.id for e in during]


async def _acked_everything(conn: coord.Coord, agent: str) -> None:
    async with asyncio.timeout(10):
        while True:
            info = await conn.js.consumer_info(conn.names.events_stream, f"events-{agent}")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.05)


def _tree_events() -> list[ReceivedEvent]:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    at = [t0 + timedelta(seconds=i) for i in range(10)]
    return [
        ReceivedEvent(TurnEnded(agent="a", turn=1, at=at[0]), to="root", sender="a"),
        ReceivedEvent(ScopeSubDelegated(agent="a", sub_agent="b", scope=["src/x"], at=at[1]), to="root", sender="a"),
        ReceivedEvent(ScopeSubDelegated(agent="a", sub_agent="b", scope=["docs"], at=at[2]), to="root", sender="a"),
        ReceivedEvent(Errored(agent="a", message="first", at=at[3]), to="root", sender="a"),
        ReceivedEvent(Errored(agent="a", message="second", at=at[4]), to="root", sender="a"),
        ReceivedEvent(TurnEnded(agent="a", turn=2, at=at[5]), to="root", sender="a"),
        ReceivedEvent(ShutDown(agent="a", at=at[6]), to="root", sender="a"),
        ReceivedEvent(TurnEnded(agent="a", turn=3, at=at[7]), to="root", sender="a"),  # arrives after ShutDown
        ReceivedEvent(ScopeSubDelegated(agent="b", sub_agent="c", at=at[8]), to="root", sender="a"),  # relayed
        ReceivedEvent(ShutDown(agent="c", at=at[9]), to="root", sender="a"),
    ]


async def test_shuffled_and_duplicated_deliveries_give_the_same_final_registry(coord_conn: coord.Coord) -> None:
    events = _tree_events()
    in_order = coord_conn.events.listener("root")
    for received in events:
        await in_order.apply(received)
    expected = await in_order.descendants()

    assert set(expected) == {"a", "b", "c"}
    a, b, c = expected["a"], expected["b"], expected["c"]
    assert (a.status, a.last_turn, a.last_error, a.parent("root")) == ("shut_down", 3, "second", "root")
    assert (b.status, b.delegated_by, b.scope) == ("active", "a", ["docs", "src/x"])
    assert (c.status, c.delegated_by) == ("shut_down", "b")

    rng = random.Random(7)
    for trial in range(3):
        mixed = events + rng.sample(events, 5)
        rng.shuffle(mixed)
        listener = coord_conn.events.listener(f"root{trial}")
        for received in mixed:
            await listener.apply(ReceivedEvent(received.event, to=listener.agent, sender=received.sender))
        assert await listener.descendants() == expected


async def test_duplicate_messages_on_the_wire_reach_the_handler_once(coord_conn: coord.Coord) -> None:
    events = [e.event for e in _tree_events()]
    subject_of = {e.id: coord_conn.names.event_subject("root", "a", e.kind) for e in events}
    wire = events + events[:4]  # re-sent copies with fresh message ids slip past the stream's dedupe
    random.Random(3).shuffle(wire)
    for i, event in enumerate(wire):
        await coord_conn.js.publish(
            subject_of[event.id], event.model_dump_json().encode(), headers={"Nats-Msg-Id": f"copy-{i}"}
        )
    handled: list[str] = []
    async with coord_conn.events.listener("root", on_event=lambda r: handled.append(r.event.id)) as listener:
        await listener.catch_up()
    assert sorted(handled) == sorted(e.id for e in events)
    tree = await coord_conn.events.descendants("root")
    assert tree["a"].status == "shut_down" and tree["a"].last_turn == 3
    assert tree["c"].delegated_by == "b"


async def test_sub_delegation_deep_in_the_tree_reaches_the_root(coord_conn: coord.Coord) -> None:
    # root <- mid <- leaf <- x: each level listens and relays to its own parent.
    events = coord_conn.events
    async with (
        events.listener("root") as root,
        events.listener("mid", parent="root") as mid,
        events.listener("leaf", parent="mid") as leaf,
    ):
        assert await events.emit("root", ScopeSubDelegated(agent="mid", sub_agent="leaf", scope=["pkg"]))
        assert await events.emit("mid", ScopeSubDelegated(agent="leaf", sub_agent="x", scope=["pkg/x"]))
        assert await events.emit("leaf", ScopeSubDelegated(agent="x", sub_agent="y"))
        for listener in (leaf, mid, root, mid, root):  # relays land after their source is processed
            await listener.catch_up()
    tree = await events.descendants("root")
    assert {name: d.delegated_by for name, d in tree.items() if d.delegated_by} == {
        "leaf": "mid",
        "x": "leaf",
        "y": "x",
    }
    assert tree["mid"].direct
    assert set(await events.descendants("mid")) == {"leaf", "x", "y"}


async def test_malformed_events_are_dead_lettered_and_the_listener_keeps_going(coord_conn: coord.Coord) -> None:
    ns = coord_conn.namespace
    await coord_conn.js.publish(f"{ns}.events.root.kid.turn_ended", b"{not json")
    await coord_conn.js.publish(f"{ns}.events.root.kid.errored", b'{"agent": "kid", "kind": "errored"}')
    good = TurnEnded(agent="kid", turn=4)
    assert await coord_conn.events.emit("root", good)
    handled: list[str] = []
    async with coord_conn.events.listener("root", on_event=lambda r: handled.append(r.event.id)) as listener:
        await listener.catch_up()
    assert handled == [good.id]
    letters = await dead_letters(coord_conn, "events")
    assert len(letters) == 2
    assert any("message" in letter.reason for letter in letters)


async def test_a_failing_on_event_callback_does_not_stop_the_listener(coord_conn: coord.Coord) -> None:
    seen: list[int | None] = []

    def flaky(received: ReceivedEvent) -> None:
        assert isinstance(received.event, TurnEnded)
        seen.append(received.event.turn)
        if received.event.turn == 0:
            raise RuntimeError("boom")

    for turn in range(3):
        assert await coord_conn.events.emit("root", TurnEnded(agent="kid", turn=turn))
    async with coord_conn.events.listener("root", on_event=flaky) as listener:
        await listener.catch_up()
    assert seen == [0, 1, 2]


async def test_emit_to_an_unreachable_server_returns_false_quickly(own_server: NatsServer, namespace: str) -> None:
    async with coord.connect(own_server.url, namespace=namespace) as conn:
        own_server.stop()
        started = time.monotonic()
        assert not await conn.events.emit("boss", TurnEnded(agent="kid"), timeout=0.5)
        assert time.monotonic() - started < 2.5


async def test_emit_rejects_bad_ids_before_sending(coord_conn: coord.Coord) -> None:
    with pytest.raises(ValueError, match="to"):
        await coord_conn.events.emit("bad.parent", TurnEnded(agent="kid"))
    with pytest.raises(ValueError, match="agent"):
        TurnEnded(agent="no spaces")
    assert not await coord_conn.events.emit(None, TurnEnded(agent="kid"))


async def test_emit_nowait_and_flush_store_the_event(coord_conn: coord.Coord) -> None:
    event = ShutDown(agent="kid", reason="bye")
    task = coord_conn.events.emit_nowait("boss", event)
    assert await coord_conn.events.flush()
    assert task.result()
    got = [r async for r in coord_conn.events.tail("boss", follow=False)]
    assert [r.event for r in got] == [event]
    assert got[0].sender == "kid"


def test_render_event_gives_one_short_line_per_kind() -> None:
    lines = [
        render_event(TurnEnded(agent="a", turn=2, summary="fixed\nthe bug")),
        render_event(Errored(agent="a", message="x" * 500)),
        render_event(ShutDown(agent="a")),
        render_event(ScopeSubDelegated(agent="a", sub_agent="b", scope=["src"])),
        render_event(Progress(agent="a", fraction=0.5, message="halfway")),
    ]
    assert lines[0] == "`a` finished turn 2: fixed the bug."
    assert lines[2] == "`a` has stopped."
    assert lines[3] == "`a` spawned `b` and delegated scope to it [src]."
    assert lines[4] == "`a` progress 50%: halfway"
    assert all("\n" not in line and len(line) < 200 for line in lines)


def test_events_parse_by_kind_and_name_the_bad_field() -> None:
    event = ScopeSubDelegated(agent="a", sub_agent="b")
    assert parse_event(event.model_dump_json()) == event
    with pytest.raises(ValueError, match="sub_agent"):
        parse_event('{"kind": "scope_sub_delegated", "agent": "a"}')
    with pytest.raises(ValueError, match="fraction"):
        Progress(agent="a", fraction=2)


def test_a_self_delegation_is_refused_naming_the_sub_agent() -> None:
    with pytest.raises(ValueError, match=r"sub_agent\n.*must differ from agent"):
        ScopeSubDelegated(agent="a", sub_agent="a")
    with pytest.raises(ValueError, match="sub_agent"):  # also when it arrives on the wire
        parse_event('{"kind": "scope_sub_delegated", "agent": "a", "sub_agent": "a"}')


async def test_a_child_emitting_while_the_server_restarts_still_reaches_a_running_listener(
    own_server: NatsServer, namespace: str
) -> None:
    async with coord.connect(own_server.url, namespace=namespace) as conn:
        handled: list[str] = []
        async with conn.events.listener("boss", on_event=lambda r: handled.append(r.event.id)) as listener:
            first = TurnEnded(agent="kid", turn=1)
            assert await conn.events.emit("boss", first)
            await listener.catch_up()
            own_server.stop()
            second = TurnEnded(agent="kid", turn=2)
            pending = conn.events.emit_nowait("boss", second, timeout=30)  # retried in the background
            await asyncio.sleep(0.5)
            await asyncio.to_thread(own_server.start)
            assert await asyncio.wait_for(pending, 30)
            async with asyncio.timeout(20):
                while len(handled) < 2:
                    await asyncio.sleep(0.05)
        assert handled == [first.id, second.id]
