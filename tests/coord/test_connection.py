"""Connecting, provisioning and refusing what corral cannot work with."""

from __future__ import annotations

import time

import pytest

import coord
from coord.errors import ConfigConflict, ConnectionFailed, InvalidId, ServerUnsupported
from coord.server import NatsServer


async def test_provisioning_twice_with_the_same_config_is_a_no_op(nats_server: NatsServer, namespace: str) -> None:
    async with coord.connect(nats_server.url, namespace=namespace) as first:
        before = {s.config.name async for s in _streams(first)}
    async with coord.connect(nats_server.url, namespace=namespace) as second:
        after = {s.config.name async for s in _streams(second)}
    assert before == after
    assert {
        f"KV_{namespace}_presence",
        f"KV_{namespace}_tasks",
        f"KV_{namespace}_registry",
        f"{namespace}_dispatch",
        f"{namespace}_events",
        f"{namespace}_inbox",
    } <= after


async def _streams(conn: coord.Coord):  # type: ignore[no-untyped-def]
    for info in await conn.js.streams_info():
        if info.config.name and conn.namespace in info.config.name:
            yield info


async def test_conflicting_existing_stream_is_a_clear_error(nats_server: NatsServer, namespace: str) -> None:
    async with coord.connect(nats_server.url, namespace=namespace) as conn:
        info = await conn.js.stream_info(f"{namespace}_inbox")
        await conn.js.update_stream(info.config.evolve(max_msgs_per_subject=5))
    with pytest.raises(ConfigConflict, match=rf"{namespace}_inbox.*max_msgs_per_subject"):
        await coord.connect(nats_server.url, namespace=namespace)


async def test_unreachable_server_fails_with_the_url_in_the_message() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match=r"nats://127\.0\.0\.1:1\b"):
        await coord.connect("nats://127.0.0.1:1", connect_timeout=1)
    assert time.monotonic() - started < 3


async def test_server_without_jetstream_is_refused() -> None:
    with NatsServer(jetstream=False) as plain, pytest.raises(ServerUnsupported, match="JetStream"):
        await coord.connect(plain.url, connect_timeout=3)


@pytest.mark.parametrize("bad", ["", "a.b", "sp ace", "x" * 33, "star*", "gt>"])
async def test_bad_namespace_is_rejected_before_any_network_io(bad: str) -> None:
    with pytest.raises(InvalidId, match="namespace"):
        coord.connect("nats://127.0.0.1:1", namespace=bad)


async def test_replicas_beyond_a_single_node_is_a_clear_error(nats_server: NatsServer, namespace: str) -> None:
    with pytest.raises(ServerUnsupported, match="replicas"):
        await coord.connect(nats_server.url, namespace=namespace, replicas=3)


async def test_credentials_pass_straight_to_nats_and_a_wrong_password_is_a_clear_error() -> None:
    with NatsServer(extra_args=["--user", "agent", "--pass", "s3cret"]) as secured:
        async with coord.connect(secured.url, user="agent", password="s3cret") as conn:
            assert conn.nc.is_connected
        with pytest.raises(ConnectionFailed, match=secured.url.replace(".", r"\.")):
            await coord.connect(secured.url, user="agent", password="wrong", connect_timeout=2)
