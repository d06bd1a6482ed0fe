"""``corral events``: emit from a shell, tail (text and JSON), and show the descendant tree."""

from __future__ import annotations

import json

import coord
from coord.events import ShutDown
from coord.server import NatsServer
from tests.corral.helpers_cli import corral


async def test_emit_then_tail_and_tree_show_the_events(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    def cli(*args: str):  # type: ignore[no-untyped-def]
        return corral(nats_server.url, namespace, subprocess_env, *args)

    turn = await cli(
        "events", "emit", "turn-ended", "--to", "boss", "--agent", "kid", "--turn", "3", "--text", "tests pass"
    )
    assert turn.code == 0 and turn.out.rstrip().endswith("`kid` finished turn 3: tests pass."), turn
    sub = await cli(
        "events",
        "emit",
        "scope_sub_delegated",
        "--to",
        "boss",
        "--agent",
        "kid",
        "--sub-agent",
        "grandkid",
        "--scope",
        "src",
    )
    assert sub.code == 0, sub
    assert await coord_conn.events.emit("other", ShutDown(agent="x"))

    text = await cli("events", "tail", "--agent", "boss", "--no-follow")
    lines = text.out.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("kid→boss  `kid` finished turn 3: tests pass.")
    assert lines[1].endswith("`kid` spawned `grandkid` and delegated scope to it [src].")
    everything = [json.loads(line) for line in (await cli("events", "tail", "--no-follow", "--json")).out.splitlines()]
    assert [(e["to"], e["kind"]) for e in everything] == [
        ("boss", "turn_ended"),
        ("boss", "scope_sub_delegated"),
        ("other", "shut_down"),
    ]

    async with coord_conn.events.listener("boss") as listener:
        await listener.catch_up()
    tree = json.loads((await cli("events", "tree", "boss", "--json")).out)
    assert {(d["agent"], d["parent"]) for d in tree} == {("kid", "boss"), ("grandkid", "kid")}


async def test_emit_rejects_unknown_kinds_and_missing_fields(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    unknown = await corral(
        nats_server.url, namespace, subprocess_env, "events", "emit", "exploded", "--to", "b", "--agent", "k"
    )
    assert unknown.code == 2 and unknown.err.startswith("error: KIND: must be one of turn_ended, errored")
    missing = await corral(
        nats_server.url, namespace, subprocess_env, "events", "emit", "scope-sub-delegated", "--to", "b", "--agent", "k"
    )
    assert missing.code == 2 and missing.err == "error: --sub-agent: is required for scope_sub_delegated"
    bad = await corral(
        nats_server.url, namespace, subprocess_env, "events", "emit", "progress", "--to", "b", "--agent", "k k"
    )
    assert bad.code == 2 and "--agent" in bad.err and "not allowed" in bad.err and "Traceback" not in bad.err
    selfish = await corral(
        nats_server.url, namespace, subprocess_env,
        "events", "emit", "scope-sub-delegated", "--to", "b", "--agent", "k", "--sub-agent", "k",
    )  # fmt: skip
    assert selfish.code == 2 and selfish.err.startswith("error: --sub-agent: ") and "itself" in selfish.err, selfish
    assert len(selfish.err.strip().splitlines()) == 1 and "Traceback" not in selfish.err


async def test_tree_without_a_listener_is_built_from_the_stored_events(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    def cli(*args: str):  # type: ignore[no-untyped-def]
        return corral(nats_server.url, namespace, subprocess_env, *args)

    for args in (
        ("turn-ended", "--agent", "kid", "--turn", "2", "--text", "half way"),
        ("scope-sub-delegated", "--agent", "kid", "--sub-agent", "grandkid", "--scope", "docs"),
        ("errored", "--agent", "grandkid", "--text", "disk full"),
    ):
        done = await cli("events", "emit", args[0], "--to", "root", *args[1:])
        assert done.code == 0, done
    tree = json.loads((await cli("events", "tree", "root", "--json")).out)
    assert [(d["agent"], d["parent"], d["last_turn"], d["last_error"]) for d in tree] == [
        ("grandkid", "kid", None, "disk full"),
        ("kid", "root", 2, None),
    ]
    table = await cli("events", "tree", "root")
    assert "2 descendant(s) of root, from the events stream" in table.out and "disk full" in table.out
    assert await coord_conn.events.descendants("root") == {}  # reading wrote nothing

    async with coord_conn.events.listener("root") as listener:
        await listener.catch_up()
    table = await cli("events", "tree", "root")
    assert "2 descendant(s) of root, from its listener's registry" in table.out
    forced = await cli("events", "tree", "root", "--from-stream")
    assert "from the events stream" in forced.out
