"""The dispatch stream takes only the subjects its consumers read; a wider one of an older corral is narrowed."""

from __future__ import annotations

import logging

import nats
import nats.js.errors
import pytest

import coord
from coord.naming import Names
from coord.provision import StreamState, dispatch_stream_subjects, stream_configs
from coord.server import NatsServer


def _dispatch_config(namespace: str):  # type: ignore[no-untyped-def]
    names = Names(namespace)
    [config] = [c for c in stream_configs(names, coord.Settings.load()) if c.name == names.dispatch_stream]
    return config


async def test_the_server_refuses_a_notification_on_a_subject_no_consumer_reads(
    coord_conn: coord.Coord, namespace: str
) -> None:
    names = coord_conn.names
    info = await coord_conn.js.stream_info(names.dispatch_stream)
    assert sorted(info.config.subjects or []) == sorted(
        [f"{namespace}.dispatch.*.*", f"{namespace}.dispatch.*.*.high", f"{namespace}.dispatch.*.*.low"]
    )
    for subject in (f"{namespace}.dispatch.q", f"{namespace}.dispatch.q.t.urgent", f"{namespace}.dispatch.q.t.x.y"):
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await coord_conn.js.publish(subject, b"{}", timeout=2)
    for level in ("normal", "high", "low"):  # every subject a consumer reads is still taken
        ack = await coord_conn.js.publish(names.notification_subject("q", "t1", level), b"{}", timeout=2)
        assert ack.stream == names.dispatch_stream


async def test_an_older_wider_dispatch_stream_is_warned_about_by_connect_and_narrowed_by_provision(
    own_server: NatsServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    names = Names(namespace)
    nc = await nats.connect(own_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(_dispatch_config(namespace).evolve(subjects=[f"{namespace}.dispatch.>"]))
        with caplog.at_level(logging.WARNING):
            async with coord.connect(own_server.url, namespace=namespace) as conn:
                [status] = [s for s in conn.streams if s.name == names.dispatch_stream]
                assert status.state is StreamState.OUTDATED
                assert any("subjects" in d for d in status.differences)
        warned = [r.getMessage() for r in caplog.records if names.dispatch_stream in r.getMessage()]
        assert warned and "corral provision" in warned[0] and "subjects" in warned[0]
        assert (await js.stream_info(names.dispatch_stream)).config.subjects == [f"{namespace}.dispatch.>"], (
            "connect never changes an existing stream"
        )
        async with coord.connect(own_server.url, namespace=namespace, provision="apply") as conn:
            [status] = [s for s in conn.streams if s.name == names.dispatch_stream]
            assert status.state is StreamState.UPDATED
        info = await js.stream_info(names.dispatch_stream)
        assert sorted(info.config.subjects or []) == sorted(dispatch_stream_subjects(names))
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await js.publish(f"{namespace}.dispatch.q", b"{}", timeout=2)
    finally:
        await nc.close()


async def test_subjects_other_than_a_narrowing_are_still_a_conflict(own_server: NatsServer, namespace: str) -> None:
    nc = await nats.connect(own_server.url)
    try:
        await nc.jetstream().add_stream(_dispatch_config(namespace).evolve(subjects=[f"{namespace}.dispatch.*.*"]))
        with pytest.raises(coord.ConfigConflict, match="subjects"):
            await coord.connect(own_server.url, namespace=namespace, provision="apply")
    finally:
        await nc.close()
