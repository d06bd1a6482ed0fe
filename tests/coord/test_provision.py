"""Provisioning apart from connecting: ``provision`` creates or updates, ``connect`` only checks or fills gaps."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import pytest

import coord
from coord.errors import ConfigConflict, InvalidInput, NotProvisioned, PermissionDenied, ReplicasUnavailable
from coord.naming import Names
from coord.provision import Provision, StreamState, check, provision, stream_configs, survey
from coord.server import NatsCluster, NatsServer
from coord.settings import Placement
from tests.coord.helpers_security import users_block


class Login(TypedDict):
    """The ``user=``/``password=`` keywords ``coord.connect`` passes on to :class:`~coord.Auth`."""

    user: str
    password: str


ADMIN: Login = {"user": "admin", "password": "admin"}
WORKER: Login = {"user": "worker", "password": "worker"}
STREAM_ADMIN = '["$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.DELETE.>"]'


@pytest.fixture(scope="module")
def roles_server() -> Iterator[NatsServer]:
    """A server with a provisioner (``admin``) and a ``worker`` that may not create, update or delete streams."""
    block = users_block(
        "{ user: admin, password: admin }",
        f'{{ user: worker, password: worker, permissions: {{ publish: {{ allow: ">", deny: {STREAM_ADMIN} }} }} }}',
        '{ user: blind, password: blind, permissions: { publish: { allow: ">", deny: "$JS.API.STREAM.INFO.>" } } }',
    )
    with NatsServer(config_extra=block) as server:
        yield server


def _all_streams(namespace: str) -> list[str]:
    return [c.name for c in stream_configs(Names(namespace), coord.Settings.load()) if c.name]


async def test_a_role_without_stream_rights_gets_not_provisioned_at_once_naming_streams_and_command(
    roles_server: NatsServer, namespace: str
) -> None:
    started = time.monotonic()
    with pytest.raises(NotProvisioned) as caught:
        await coord.connect(roles_server.url, namespace=namespace, **WORKER)
    assert time.monotonic() - started < 2, "a refusal, not a timeout"
    message = str(caught.value)
    assert all(name in message for name in _all_streams(namespace))
    assert f"corral provision --namespace {namespace}" in message and "$JS.API.STREAM.CREATE." in message
    with pytest.raises(NotProvisioned, match="missing"):  # the worker created nothing
        await coord.connect(roles_server.url, namespace=namespace, provision="check", **ADMIN)


async def test_after_provisioning_the_role_without_rights_connects_and_works(
    roles_server: NatsServer, namespace: str
) -> None:
    async with coord.connect(roles_server.url, namespace=namespace, provision=Provision.APPLY, **ADMIN) as admin:
        assert {s.name: s.state for s in admin.streams} == dict.fromkeys(_all_streams(namespace), StreamState.CREATED)
    async with coord.connect(roles_server.url, namespace=namespace, **WORKER) as worker:
        assert {s.state for s in worker.streams} == {StreamState.UNCHANGED}
        await worker.presence.list()


async def test_a_role_that_may_not_read_stream_info_is_refused_at_once_naming_the_subject(
    roles_server: NatsServer, namespace: str
) -> None:
    started = time.monotonic()
    with pytest.raises(PermissionDenied, match=rf"\$JS\.API\.STREAM\.INFO\.KV_{namespace}_presence"):
        await coord.connect(roles_server.url, namespace=namespace, user="blind", password="blind")
    assert time.monotonic() - started < 2


async def test_check_mode_creates_nothing_and_names_every_missing_stream(
    nats_server: NatsServer, namespace: str
) -> None:
    with pytest.raises(NotProvisioned, match=rf"corral provision --namespace {namespace}") as caught:
        await coord.connect(nats_server.url, namespace=namespace, provision="check")
    assert "refused" not in str(caught.value)
    assert all(name in str(caught.value) for name in _all_streams(namespace))
    with pytest.raises(NotProvisioned):  # still nothing there
        await coord.connect(nats_server.url, namespace=namespace, provision="check")


async def test_connect_creates_only_missing_streams_and_never_updates_existing_ones(
    nats_server: NatsServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    names = Names(namespace)
    async with coord.connect(nats_server.url, namespace=namespace) as conn:
        assert {s.state for s in conn.streams} == {StreamState.CREATED}
        await conn.js.delete_stream(names.events_stream)
        info = await conn.js.stream_info(names.inbox_stream)
        await conn.js.update_stream(info.config.evolve(max_bytes=32 << 20))  # a growth bound only
    with caplog.at_level(logging.WARNING, logger="corral.provision"):
        async with coord.connect(nats_server.url, namespace=namespace) as conn:
            states = {s.name: s.state for s in conn.streams}
            assert states[names.events_stream] is StreamState.CREATED
            assert states[names.inbox_stream] is StreamState.OUTDATED
            assert (await conn.js.stream_info(names.inbox_stream)).config.max_bytes == 32 << 20, "left as it was"
    assert any(names.inbox_stream in r.message and "run corral provision to apply" in r.message for r in caplog.records)
    async with coord.connect(nats_server.url, namespace=namespace, provision="apply") as conn:
        states = {s.name: s.state for s in conn.streams}
        assert states[names.inbox_stream] is StreamState.UPDATED
        assert {v for k, v in states.items() if k != names.inbox_stream} == {StreamState.UNCHANGED}
        assert (await conn.js.stream_info(names.inbox_stream)).config.max_bytes == conn.settings.max_bytes


async def test_check_and_survey_read_only_and_report_fixed_differences_as_conflicts(coord_conn: coord.Coord) -> None:
    names, settings, js = coord_conn.names, coord_conn.settings, coord_conn.js
    assert {s.state for s in await check(js, names, settings)} == {StreamState.UNCHANGED}
    info = await js.stream_info(names.inbox_stream)
    await js.update_stream(info.config.evolve(max_msgs_per_subject=5))
    surveyed = {s.name: s for s in await survey(js, names, settings)}
    assert surveyed[names.inbox_stream].state is StreamState.CONFLICT
    assert "max_msgs_per_subject" in surveyed[names.inbox_stream].differences[0]
    with pytest.raises(ConfigConflict, match=rf"{names.inbox_stream}.*max_msgs_per_subject"):
        await check(js, names, settings)
    with pytest.raises(ConfigConflict, match=rf"{names.inbox_stream}.*max_msgs_per_subject"):
        await provision(js, names, settings)
    assert (await js.stream_info(names.inbox_stream)).config.max_msgs_per_subject == 5, "never changed"


async def test_provisioning_again_reports_every_stream_unchanged(coord_conn: coord.Coord) -> None:
    again = await provision(coord_conn.js, coord_conn.names, coord_conn.settings)
    assert [s.as_dict() for s in again] == [
        {"stream": name, "state": "unchanged", "differences": []} for name in _all_streams(coord_conn.namespace)
    ]


async def test_an_unknown_provision_mode_is_an_input_error_naming_the_choices() -> None:
    with pytest.raises(InvalidInput, match="provision must be one of 'check', 'missing', 'apply'"):
        coord.connect("nats://127.0.0.1:1", provision="sometimes")


async def test_connect_waits_for_a_joining_server_to_place_replicas_and_names_what_cannot_be_placed(
    tmp_path: Path,
) -> None:
    """A cluster still forming answers 'no suitable peers for placement': connect tries again within its
    patience (the CI saw a fresh 3-node cluster give that answer once), and a placement that can never
    be met is a one-line error naming the stream, the replicas and the server's reason."""
    cluster = NatsCluster(3, store_root=tmp_path)
    try:
        for node in cluster.nodes[:2]:
            node.launch()
        for node in cluster.nodes[:2]:
            node.wait_ready(30)

        async def connect_r3() -> list[int]:
            async with coord.connect(cluster.nodes[0].url, namespace="joining", replicas=3, connect_timeout=2) as conn:
                infos = [await conn.js.stream_info(s.name) for s in conn.streams]
                return [info.config.num_replicas or 0 for info in infos]

        async def connect_nowhere() -> str:
            settings = coord.Settings(placement=Placement(tags=("nowhere",)))
            url = cluster.nodes[0].url
            with pytest.raises(ReplicasUnavailable) as caught:
                async with coord.connect(url, namespace="nowhere", settings=settings, connect_timeout=2):
                    pass
            return str(caught.value)

        r3 = asyncio.ensure_future(connect_r3())
        nowhere = asyncio.ensure_future(connect_nowhere())
        await asyncio.sleep(2.0)
        assert not r3.done(), "an R3 namespace was made with two servers up"
        await asyncio.to_thread(cluster.nodes[2].launch)
        assert set(await asyncio.wait_for(r3, 20)) == {3}
        message = await asyncio.wait_for(nowhere, 20)
        assert "\n" not in message
        assert "replicas=1" in message and "tags not matched" in message and "'nowhere'" in message
    finally:
        cluster.stop()
