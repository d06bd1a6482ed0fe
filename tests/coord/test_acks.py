"""Acknowledged publishes over one reply subscription: sequences, refusals and silence, on a real server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest

from coord.acks import AckedPublisher
from coord.server import NatsServer
from tests.coord.helpers_security import users_block


async def test_each_publish_returns_its_stream_sequence_also_when_pipelined(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="ACKS_SEQ", subjects=["acks-seq.>"])
        acks = AckedPublisher(nc)
        first = await acks.publish("acks-seq.a", b"one")
        rest = await asyncio.gather(*(acks.publish(f"acks-seq.{i}", b"x", headers={"H": str(i)}) for i in range(300)))
        assert sorted(rest) == list(range(first + 1, first + 301))
        stored = await js.get_msg("ACKS_SEQ", rest[7])
        assert stored.data == b"x"
        assert stored.headers is not None and stored.headers["H"] == str(rest.index(rest[7]))
    finally:
        await nc.close()


async def test_a_wrong_expected_last_sequence_is_the_streams_own_refusal(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(name="ACKS_CAS", subjects=["acks-cas.>"])
        acks = AckedPublisher(nc)
        seq = await acks.publish("acks-cas.k", b"v1")
        with pytest.raises(nats.js.errors.APIError) as refused:
            await acks.publish("acks-cas.k", b"v2", headers={"Nats-Expected-Last-Subject-Sequence": str(seq - 1)})
        assert refused.value.err_code == 10071
        assert await acks.publish("acks-cas.k", b"v2", headers={"Nats-Expected-Last-Subject-Sequence": str(seq)})
    finally:
        await nc.close()


async def test_a_subject_no_stream_takes_is_said_at_once(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        started = time.monotonic()
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await AckedPublisher(nc).publish("nobody.stores.this", b"x", timeout=5)
        assert time.monotonic() - started < 1
    finally:
        await nc.close()


async def test_a_silent_server_is_a_timeout_and_the_publisher_works_after_it(own_server: NatsServer) -> None:
    nc = await nats.connect(own_server.url)
    try:
        await nc.jetstream().add_stream(name="ACKS_SILENT", subjects=["acks-silent.>"])
        acks = AckedPublisher(nc)
        await acks.publish("acks-silent.a", b"x")
        own_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(nats.errors.TimeoutError):
                await acks.publish("acks-silent.b", b"x", timeout=0.5)
            assert 0.4 < time.monotonic() - started < 2
        finally:
            own_server.resume()
        assert await acks.publish("acks-silent.c", b"x") > 0
    finally:
        await nc.close()


async def test_replies_come_under_the_connections_own_inbox_prefix(tmp_path: Path) -> None:
    """A role may subscribe only under its own prefix (``corral auth`` grants no more): publishes and
    direct gets are answered there, so they work under that grant and nothing else is subscribed.
    (An earlier version spied on ``_INBOX.>`` from a second connection; under a loaded full suite the
    spy's copy sometimes came later than its 2 s, while this connection's reply never failed.)"""
    only_own = '{ user: w7, password: w7, permissions: { subscribe: { allow: "_INBOX.ns1.w7.>" } } }'
    with NatsServer(store_dir=tmp_path, config_extra=users_block(only_own)) as server:
        refused: list[Exception] = []

        async def on_error(err: Exception) -> None:
            refused.append(err)

        nc = await nats.connect(server.url, user="w7", password="w7", inbox_prefix="_INBOX.ns1.w7", error_cb=on_error)
        try:
            await nc.jetstream().add_stream(name="ACKS_INBOX", subjects=["acks-inbox.>"], allow_direct=True)
            acks = AckedPublisher(nc)
            seq = await acks.publish("acks-inbox.a", b"x", timeout=2)
            answer = await acks.request("$JS.API.DIRECT.GET.ACKS_INBOX", b'{"seq": %d}' % seq, timeout=2)
            assert answer.data == b"x"
            await nc.flush()
            assert refused == []  # a subscription outside the prefix is a permissions violation here
        finally:
            await nc.close()


async def test_a_cancelled_first_publish_leaves_the_publisher_working_and_the_rest_share_one_start(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(name="ACKS_START", subjects=["acks-start.>"])
        acks = AckedPublisher(nc)
        first = asyncio.create_task(acks.publish("acks-start.a", b"x"))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        seqs = await asyncio.gather(*(acks.publish(f"acks-start.{i}", b"x") for i in range(50)))
        assert len(set(seqs)) == 50
    finally:
        await nc.close()


async def test_a_short_timeout_fires_on_time_behind_longer_ones_and_thousands_of_answered_publishes(
    own_server: NatsServer,
) -> None:
    """Deadlines share one sweep: a later publish with a shorter timeout must still end at its own."""
    nc = await nats.connect(own_server.url)
    try:
        await nc.jetstream().add_stream(name="ACKS_SWEEP", subjects=["acks-sweep.>"])
        acks = AckedPublisher(nc)
        for _ in range(20):  # 10,000 answered long ago; their deadlines (60 s) are still ahead
            await asyncio.gather(*(acks.publish(f"acks-sweep.{i % 7}", b"x", timeout=60) for i in range(500)))
        own_server.pause()
        try:
            slow = asyncio.create_task(acks.publish("acks-sweep.slow", b"x", timeout=30))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(nats.errors.TimeoutError):
                await acks.publish("acks-sweep.fast", b"x", timeout=0.5)
            assert 0.45 < time.monotonic() - started < 1.5
            assert not slow.done()
        finally:
            own_server.resume()
        assert await slow > 0
        assert await acks.publish("acks-sweep.after", b"x") > 0
    finally:
        await nc.close()


async def test_a_batched_request_returns_every_answer_up_to_the_last_over_the_shared_subscription(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(nats.js.api.StreamConfig(name="ACKS_BATCH", subjects=["acks-batch.>"], allow_direct=True))
        acks = AckedPublisher(nc)
        for key in ("a", "b", "c"):
            await acks.publish(f"acks-batch.{key}", key.encode())
        request = b'{"multi_last":["acks-batch.a","acks-batch.c","acks-batch.zzz"],"batch":3}'
        subs_before = len(nc._subs)
        msgs = await acks.request_batch(
            "$JS.API.DIRECT.GET.ACKS_BATCH", request, last=lambda m: not (m.headers and "Nats-Subject" in m.headers)
        )
        assert [m.data for m in msgs[:-1]] == [b"a", b"c"]
        assert msgs[-1].headers is not None and msgs[-1].headers.get("Status") == "204"
        assert len(nc._subs) == subs_before  # no subscription of its own
        with pytest.raises(nats.errors.TimeoutError):  # never a last answer: the request times out
            await acks.request_batch("$JS.API.DIRECT.GET.ACKS_BATCH", request, last=lambda m: False, timeout=0.3)
        assert await acks.publish("acks-batch.d", b"d") > 0
    finally:
        await nc.close()
