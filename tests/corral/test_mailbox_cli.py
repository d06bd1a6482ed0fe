"""``corral msg``: send (direct, keyed, tag, stream) and read (pending, follow) through the real CLI."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

import coord
from coord.mailbox import Agent
from coord.presence import AgentInfo
from coord.server import NatsServer
from tests.conftest import PYTHON
from tests.corral.helpers_cli import corral, start_corral


async def test_send_enqueues_for_an_absent_agent_and_read_consumes_oldest_first(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    def cli(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
        return corral(nats_server.url, namespace, subprocess_env, *args, stdin=stdin)

    sent = await cli("msg", "send", "--to", "bob", "--from", "alice", "hello bob")
    assert sent.code == 0 and sent.out.startswith("enqueued msg-") and "(agent:bob)" in sent.out
    for status in ("working", "done"):
        keyed = await cli("msg", "send", "--to", "bob", "--key", "status", "-", stdin=status)
        assert keyed.code == 0, keyed

    peek = [
        json.loads(line) for line in (await cli("msg", "read", "--agent", "bob", "--peek", "--json")).out.splitlines()
    ]
    assert [(m["text"], m["sender"], m["key"]) for m in peek] == [
        ("hello bob", "alice", None),
        ("done", None, "status"),
    ]
    read = await cli("msg", "read", "--agent", "bob")
    assert read.out.splitlines() == [f"{peek[0]['id']} from alice: hello bob", f"{peek[1]['id']} from ? [status]: done"]
    assert (await cli("msg", "read", "--agent", "bob")).out == ""


async def test_read_follow_makes_the_agent_live_so_senders_get_delivered(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    reader = await start_corral(
        nats_server.url, namespace, subprocess_env, "msg", "read", "--agent", "carol", "-f", "--json"
    )
    try:
        assert await coord_conn.presence.wait_present("carol", 15) is not None
        sent = await corral(nats_server.url, namespace, subprocess_env, "msg", "send", "--to", "carol", "hi carol")
        assert sent.code == 0 and sent.out.startswith("delivered msg-"), sent
        assert reader.stdout is not None
        shown = json.loads(await asyncio.wait_for(reader.stdout.readline(), 10))
        assert (shown["id"], shown["text"]) == (sent.out.split()[1], "hi carol")
    finally:
        reader.kill()
        await reader.wait()


async def test_send_stream_prints_chunks_and_tag_binding_moves_waiting_mail(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    async def serve() -> None:
        async with coord_conn.presence.join(AgentInfo(id="poet")), coord_conn.mailbox.inbox("poet") as inbox:
            async for msg in inbox:
                for word in msg.text.split():
                    await msg.chunk(word.upper() + " ")

    server = asyncio.create_task(serve())
    try:
        assert await coord_conn.presence.wait_present("poet", 5) is not None
        streamed = await corral(
            nats_server.url, namespace, subprocess_env, "msg", "send", "--to", "poet", "--stream", "roses are red"
        )
        assert streamed.code == 0, streamed
        assert streamed.out == "ROSES ARE RED \n"
        items = await corral(
            nats_server.url, namespace, subprocess_env, "msg", "send", "--to", "poet", "--stream", "--json", "hi"
        )
        assert [json.loads(line)["type"] for line in items.out.splitlines()] == ["id", "chunk", "end"]
    finally:
        server.cancel()

    queued = await corral(nats_server.url, namespace, subprocess_env, "msg", "send", "--tag", "oncall", "page")
    assert "(tag:oncall)" in queued.out
    bound = await corral(nats_server.url, namespace, subprocess_env, "msg", "bind", "oncall", "--agent", "dan")
    assert bound.out.strip() == "bound #oncall to dan; moved 1 waiting message(s)"
    assert [m.text for m in await coord_conn.mailbox.read_pending("dan")] == ["page"]
    assert (
        await corral(nats_server.url, namespace, subprocess_env, "msg", "unbind", "oncall", "--agent", "dan")
    ).code == 0


async def test_send_refuses_ambiguous_or_bad_targets(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    both = await corral(nats_server.url, namespace, subprocess_env, "msg", "send", "--to", "a", "--tag", "t", "x")
    assert both.code == 2 and both.err == "error: give exactly one of --to AGENT_ID or --tag TAG"
    bad = await corral(nats_server.url, namespace, subprocess_env, "msg", "send", "--to", "a b", "x")
    assert bad.code == 2 and bad.err.startswith("error: --to: 'a b' has characters") and "Traceback" not in bad.err
    assert await coord_conn.mailbox.read_pending("a") == []
    assert isinstance(Agent(id="a"), Agent)


async def _read_into(url: str, namespace: str, env: dict[str, str], stdout: int, *args: str) -> tuple[int, str]:
    """Run ``corral msg read ARGS`` with ``stdout`` as its standard output; exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "corral", "--server", url, "--namespace", namespace, "msg", "read", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.parametrize("sink", ["closed pipe", "/dev/full"])
async def test_read_removes_no_mail_it_could_not_print(
    sink: str, coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    sent = [await coord_conn.mailbox.send(Agent(id="zed"), f"note {i}", sender="a") for i in range(3)]
    for args in (["--agent", "zed"], ["--agent", "zed", "--json"], ["--agent", "zed", "--follow", "--no-join"]):
        if sink == "/dev/full":
            stdout = os.open("/dev/full", os.O_WRONLY)
        else:
            read_end, stdout = os.pipe()
            os.close(read_end)  # nobody will ever read what the CLI prints
        try:
            code, err = await _read_into(nats_server.url, namespace, subprocess_env, stdout, *args)
        finally:
            os.close(stdout)
        assert code == 1, (args, err)
        line = err.strip()
        if "--json" in args:
            line = json.loads(line)["error"]
        assert line.startswith(("error: cannot write to stdout", "cannot write to stdout")), (args, err)
        assert len(err.strip().splitlines()) == 1, (args, err)
        assert "Traceback" not in err and "Exception ignored" not in err
        pending = await coord_conn.mailbox.read_pending("zed")
        assert [m.id for m in pending] == [s.id for s in sent], (args, "mail that was never shown was removed")


async def test_send_reports_mail_that_expired_unread_as_expired(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    async with coord_conn.presence.join(AgentInfo(id="napper"), interval=0.3, ttl=1.0):  # present, never reads
        sent = await corral(
            nats_server.url, namespace, subprocess_env,
            "msg", "send", "--to", "napper", "--ttl", "1", "--timeout", "3", "wake up",
        )  # fmt: skip
    assert sent.code == 0 and sent.out.startswith("expired msg-"), sent
    assert await coord_conn.mailbox.read_pending("napper") == []
