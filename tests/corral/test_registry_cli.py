"""``corral registry``: reserve against a live holder process, then reap it once it is killed."""

from __future__ import annotations

import json
import signal

import coord
from coord.server import NatsServer
from tests.coord.helpers_presence import HoldProcess
from tests.corral.helpers_cli import corral


async def test_reserve_prints_reserved_or_live_owner_and_reaps_a_killed_owner(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    def cli(*args: str):  # type: ignore[no-untyped-def]
        return corral(nats_server.url, namespace, subprocess_env, *args)

    holder = HoldProcess(nats_server.url, namespace, subprocess_env, "owner", "--ttl", "1", "--interval", "0.3")
    try:
        await holder.expect("joined")
        first = await cli("registry", "reserve", "t1", "--as", "owner", "--path", "/repo")
        assert first.code == 0 and first.out.startswith("Reserved t1: session "), first
        session_id = first.out.split()[3]

        busy = await cli("registry", "reserve", "t1", "--as", "other")
        assert busy.code == 3
        assert busy.out.strip() == f"LiveOwner t1: session {session_id} of live agent owner"

        listed = json.loads((await cli("registry", "ls", "--alive-only", "--json")).out)
        assert [(s["id"], s["agent_id"], s["alive"], s["path"]) for s in listed] == [
            (session_id, "owner", True, "/repo")
        ]

        holder.signal(signal.SIGKILL)
        assert await coord_conn.presence.wait_absent("owner", 5)
    finally:
        holder.kill()
    taken = await cli("registry", "reserve", "t1", "--as", "other", "--json")
    assert taken.code == 0
    outcome = json.loads(taken.out)
    assert outcome["outcome"] == "reserved" and outcome["reaped"]["id"] == session_id
    table = (await cli("registry", "ls")).out
    assert "abandoned" in table and session_id in table
    assert json.loads((await cli("registry", "ls", "--alive-only", "--json")).out) == []


async def test_registry_cli_rejects_bad_ids_with_a_clear_message(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    bad = await corral(nats_server.url, namespace, subprocess_env, "registry", "reserve", "no/slash", "--as", "a")
    assert bad.code == 2
    assert "THREAD: 'no/slash'" in bad.err and "not allowed" in bad.err and "Traceback" not in bad.err
    missing = await corral(nats_server.url, namespace, subprocess_env, "registry", "chain", "nope")
    assert missing.code == 1 and "not found" in missing.err
