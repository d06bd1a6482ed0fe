"""``corral schema``: the emitted JSON Schemas accept the real messages a real nats-server carries."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import jsonschema
import nats
from nats.aio.msg import Msg

import coord
from coord.limits.models import Rate
from coord.server import NatsServer
from tests.conftest import PYTHON
from tests.corral.helpers_cli import corral, start_corral

NAMES = [
    "spec", "result", "task-record", "notification", "result-push", "event", "mail", "presence", "control",
    "dead-letter", "queue-limits", "limit-slot", "limit-rate",
]  # fmt: skip


def _check(schema: dict[str, Any], value: Any) -> None:
    jsonschema.Draft202012Validator(schema).validate(value)


async def test_schema_lists_every_wire_model_and_prints_each_as_json_schema(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    listed = await corral(nats_server.url, namespace, subprocess_env, "schema")
    assert listed.code == 0 and all(name in listed.out for name in NAMES)
    every = json.loads((await corral(nats_server.url, namespace, subprocess_env, "schema", "--json")).out)
    assert list(every) == NAMES
    for name, document in every.items():
        jsonschema.Draft202012Validator.check_schema(document)
        assert document["$schema"].endswith("/2020-12/schema") and document["x-corral-where"], name
    one = await corral(nats_server.url, namespace, subprocess_env, "schema", "spec")
    assert json.loads(one.out) == every["spec"]
    unknown = await corral(nats_server.url, namespace, subprocess_env, "schema", "specs")
    assert unknown.code == 2 and "MODEL must be one of spec, result" in unknown.err


async def test_real_messages_from_a_real_server_match_the_emitted_schemas(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    emitted = await corral(nats_server.url, namespace, subprocess_env, "schema", "--json")
    schemas: dict[str, dict[str, Any]] = json.loads(emitted.out)
    seen: dict[str, list[Msg]] = {"dispatch": [], "results": [], "events": [], "inbox": []}

    async def capture(msg: Msg) -> None:
        seen[msg.subject.split(".")[1]].append(msg)

    nc = await nats.connect(nats_server.url)
    try:
        for kind in seen:
            await nc.subscribe(f"{namespace}.{kind}.>", cb=capture)
        await nc.flush()

        def cli(*args: str):  # type: ignore[no-untyped-def]
            return corral(nats_server.url, namespace, subprocess_env, *args)

        worker = await start_corral(
            nats_server.url, namespace, subprocess_env, "worker", "-q", "wire", "--id", "w-wire", "--",
            PYTHON, "-c", "print('{\"kind\": \"success\", \"summary\": \"wired\", \"output\": {\"n\": 1}}')",
        )  # fmt: skip
        try:
            done = await cli(
                "submit", "-q", "wire", "--id", "wired1", "--title", "a wire test", "--payload", '{"x": [1, 2]}',
                "--file", "/tmp/a.txt", "--wait", "--wait-timeout", "20",
            )  # fmt: skip
            assert done.code == 0 and "wired" in done.out, done
            js = nc.jetstream()
            present = await (await js.key_value(f"{namespace}_presence")).get("w-wire")
            assert present.value is not None
            _check(schemas["presence"], json.loads(present.value))
        finally:
            worker.send_signal(signal.SIGTERM)
            await asyncio.wait_for(worker.wait(), 30)
        emitted_event = await cli("events", "emit", "scope_sub_delegated", "--to", "boss", "--agent", "kid",
                                  "--sub-agent", "grandkid", "--scope", "src")  # fmt: skip
        assert emitted_event.code == 0, emitted_event
        for args in (("--to", "bob", "hello bob"), ("--tag", "reviewers", "--key", "k1", "for any reviewer")):
            sent = await cli("msg", "send", *args)
            assert sent.code == 0, sent
        await nc.flush()
        async with asyncio.timeout(10):
            while not all(seen.values()) or len(seen["inbox"]) < 2:
                await asyncio.sleep(0.05)

        record_entry = await (await js.key_value(f"{namespace}_tasks")).get("wired1")
        assert record_entry.value is not None
        record = json.loads(record_entry.value)
        _check(schemas["task-record"], record)
        _check(schemas["spec"], record["spec"])
        _check(schemas["result"], record["result"])
        assert record["spec"]["payload"] == {"x": [1, 2]} and record["result"]["summary"] == "wired"

        for name, kind in (("notification", "dispatch"), ("result-push", "results"), ("event", "events")):
            for msg in seen[kind]:
                _check(schemas[name], json.loads(msg.data))
                _check(schemas[name]["x-corral-headers"], dict(msg.headers or {}))
        for msg in seen["inbox"]:
            _check(schemas["mail"], dict(msg.headers or {}))
        assert json.loads(seen["events"][0].data)["kind"] == "scope_sub_delegated"
    finally:
        await nc.close()


async def test_control_hints_dead_letters_limits_and_write_headers_match_the_emitted_schemas(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    schemas = json.loads((await corral(nats_server.url, namespace, subprocess_env, "schema", "--json")).out)
    names = coord_conn.names
    hints: list[Msg] = []

    async def hint(msg: Msg) -> None:
        hints.append(msg)

    await coord_conn.nc.subscribe(f"{namespace}.control.>", cb=hint)
    await coord_conn.tasks.schedule("c1", queue="wire", spec={"x": 1})
    claim = await coord_conn.tasks.claim("c1", "w-wire")
    claimed = await coord_conn.js.get_last_msg(f"KV_{names.tasks_bucket}", f"$KV.{names.tasks_bucket}.c1")
    _check(schemas["task-record"]["x-corral-headers"], dict(claimed.headers or {}))
    await coord_conn.tasks.cancel("c1")
    finished = await coord_conn.js.get_last_msg(f"KV_{names.tasks_bucket}", f"$KV.{names.tasks_bucket}.c1")
    assert "Nats-TTL" in (finished.headers or {})
    _check(schemas["task-record"]["x-corral-headers"], dict(finished.headers or {}))
    async with asyncio.timeout(5):
        while not hints:
            await asyncio.sleep(0.02)
    assert hints[0].subject == f"{namespace}.control.w-wire"
    _check(schemas["control"], json.loads(hints[0].data))
    assert json.loads(hints[0].data)["claim_id"] == claim.claim_id
    await coord_conn.dead_letters.record("late-result", "refused", body='{"kind": "success"}', task_id="c1")
    letter = await coord_conn.js.get_last_msg(names.events_stream, names.deadletter_subject("late-result"))
    _check(schemas["dead-letter"], json.loads(letter.data or b""))
    await coord_conn.limits.set("wire", concurrency=2, rate=Rate(count=5, per="s"))
    limit = await coord_conn.js.get_last_msg(f"KV_{names.limits_bucket}", f"$KV.{names.limits_bucket}.limit.wire")
    _check(schemas["queue-limits"], json.loads(limit.data or b""))
