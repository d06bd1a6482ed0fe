"""Pins, against a real nats-server, each nats-py internal corral relies on (coord/natscompat.py).

A nats-py release that changes one of them fails here, loudly, instead of corral silently doing
something else (a watch restarting from the wrong revision, headers parsed by nats-py's slow parser,
replies under the wrong prefix, pulls that never answer).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api as js_api

from coord import natscompat
from coord.client import CorralClient
from coord.ids import new_id
from coord.natscompat import NatsCompatError
from coord.server import NatsServer


async def _stream(nc: NATS) -> tuple[str, str]:
    name = new_id("S").replace("-", "")[:16].upper()
    subject = f"compat.{name}"
    await nc.jetstream().add_stream(name=name, subjects=[f"{subject}.>"])
    return name, subject


async def test_the_restart_sequence_is_where_a_recreated_ordered_consumer_starts(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        stream, subject = await _stream(nc)
        for i in range(1, 4):
            await js.publish(f"{subject}.k", str(i).encode())
        got: list[bytes] = []
        arrived = asyncio.Event()

        async def collect(msg: Msg) -> None:
            got.append(msg.data)
            arrived.set()

        sub = await js.subscribe(
            f"{subject}.>",
            stream=stream,
            ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.NEW,
            idle_heartbeat=0.3,
            cb=collect,
        )
        natscompat.set_restart_sequence(sub, 1)
        name = (await sub.consumer_info()).name
        await js.delete_consumer(stream, name)  # nats-py notices the missing heartbeats and re-creates it
        async with asyncio.timeout(10):
            while len(got) < 2:
                arrived.clear()
                await arrived.wait()
        assert got == [b"2", b"3"]  # restarted after sequence 1, not from the start (0) nor from "new"
        await sub.unsubscribe()
    finally:
        await nc.close()


def test_the_restart_sequence_guard_names_nats_py_when_the_internal_is_gone() -> None:
    class NotASubscription:
        pass

    with pytest.raises(NatsCompatError, match=r"nats-py .*_sseq"):
        natscompat.set_restart_sequence(NotASubscription(), 1)  # type: ignore[arg-type]


async def test_the_installed_header_parser_parses_what_arrives(nats_server: NatsServer) -> None:
    calls: list[bytes] = []

    def counting(raw: bytes) -> dict[str, str]:
        calls.append(raw)
        return {"Parsed-By": "corral"}

    class Counting(NATS):
        pass

    natscompat.install_header_parser(Counting, counting)
    nc = Counting()
    await nc.connect(nats_server.url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(inbox, b"x", headers={"A": "1"})
        msg = await sub.next_msg(timeout=2)
        assert calls and msg.headers == {"Parsed-By": "corral"}
    finally:
        await nc.close()
    assert issubclass(CorralClient, NATS) and CorralClient._parse_header_lines is not NATS._parse_header_lines


def test_the_header_parser_is_never_installed_on_nats_py_itself() -> None:
    with pytest.raises(TypeError):
        natscompat.install_header_parser(NATS, lambda raw: {})


async def test_the_inbox_prefix_is_the_one_connected_with(nats_server: NatsServer) -> None:
    plain = await nats.connect(nats_server.url)
    custom = await nats.connect(nats_server.url, inbox_prefix="_INBOX.ns.me")
    try:
        assert natscompat.inbox_prefix(plain) == "_INBOX"
        assert natscompat.inbox_prefix(custom) == "_INBOX.ns.me"
        assert custom.new_inbox().startswith("_INBOX.ns.me.")
    finally:
        await plain.close()
        await custom.close()


def test_the_inbox_prefix_guard_names_nats_py_when_the_internal_is_gone() -> None:
    with pytest.raises(NatsCompatError, match="inbox prefix"):
        natscompat.inbox_prefix(object())  # type: ignore[arg-type]


async def test_a_raw_pull_request_answers_what_is_there_then_ends_with_a_status(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        stream, subject = await _stream(nc)
        await js.add_consumer(stream, js_api.ConsumerConfig(durable_name="d", ack_policy=js_api.AckPolicy.EXPLICIT))
        for i in range(2):
            await js.publish(f"{subject}.k", str(i).encode())
        answers: list[Msg] = []
        ended = asyncio.Event()

        async def receive(msg: Msg) -> None:
            answers.append(msg)
            if not msg.data and msg.headers and msg.headers.get("Status"):
                ended.set()

        inbox = nc.new_inbox()
        await nc.subscribe(f"{inbox}.*", cb=receive)
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.d"
        await natscompat.request_next(nc, next_subject, f"{inbox}.1", batch=5, wait=None)
        async with asyncio.timeout(5):
            await ended.wait()
        data = [m for m in answers if m.data]
        assert [m.data for m in data] == [b"0", b"1"]
        assert answers[-1].headers is not None and answers[-1].headers["Status"] == "404"
        assert data[0].metadata.num_delivered == 1  # the delivery count is readable on a raw pull's answer

        # an idle pull (with an expiry) is answered as soon as a message arrives
        ended.clear()
        answers.clear()
        await natscompat.request_next(nc, next_subject, f"{inbox}.2", batch=5, wait=5.0)
        await asyncio.sleep(0.2)
        await js.publish(f"{subject}.k", b"late")
        async with asyncio.timeout(3):
            while not answers:
                await asyncio.sleep(0.01)
        assert answers[0].data == b"late"
    finally:
        await nc.close()


async def test_the_pull_request_is_the_documented_json(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        seen: list[dict[str, Any]] = []
        sub = await nc.subscribe("compat.next")
        await natscompat.request_next(nc, "compat.next", "r", batch=3, wait=1.5)
        seen.append(json.loads((await sub.next_msg(timeout=2)).data))
        assert seen == [{"batch": 3, "no_wait": True, "expires": 1_500_000_000}]
    finally:
        await nc.close()
