"""``corral provision`` and the CLI's connection errors: one clear line, the right exit code, at once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coord.naming import Names
from coord.provision import stream_configs
from coord.server import NatsServer
from coord.settings import Settings
from tests.coord.helpers_security import new_user_seed, public_key, users_block
from tests.corral.helpers_cli import CliResult, corral

STREAM_ADMIN = '["$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.DELETE.>"]'
SEED = new_user_seed()


@pytest.fixture(scope="module")
def roles_server() -> Iterator[NatsServer]:
    """``admin`` may do anything, ``worker`` may not create/update/delete streams, ``U...`` is an nkey user."""
    block = users_block(
        "{ user: admin, password: admin }",
        f'{{ user: worker, password: worker, permissions: {{ publish: {{ allow: ">", deny: {STREAM_ADMIN} }} }} }}',
        f"{{ nkey: {public_key(SEED)} }}",
    )
    with NatsServer(config_extra=block) as server:
        yield server


def _streams(namespace: str) -> list[str]:
    return [c.name for c in stream_configs(Names(namespace), Settings.load()) if c.name]


def _states(done: CliResult) -> dict[str, str]:
    assert done.code == 0, done.err
    data = json.loads(done.out)
    return {s["stream"]: s["state"] for s in data["streams"]}


def _one_line_error(done: CliResult) -> str:
    assert "Traceback" not in done.err, done.err
    assert done.err.startswith("error: "), done.err
    return done.err


async def test_provision_creates_reports_unchanged_updates_and_checks(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    url = nats_server.url
    fresh = await corral(url, namespace, subprocess_env, "provision", "--check")
    assert fresh.code == 1
    assert f"corral provision --namespace {namespace}" in _one_line_error(fresh) and "missing" in fresh.err

    assert _states(await corral(url, namespace, subprocess_env, "provision", "--json")) == dict.fromkeys(
        _streams(namespace), "created"
    )
    again = await corral(url, namespace, subprocess_env, "provision", "--json")
    assert set(_states(again).values()) == {"unchanged"}
    assert set(_states(await corral(url, namespace, subprocess_env, "provision", "--check", "--json")).values()) == {
        "unchanged"
    }

    smaller = await corral(url, namespace, subprocess_env, "provision", "--max-bytes", str(64 << 20), "--json")
    assert set(_states(smaller).values()) == {"updated"}
    differs = await corral(url, namespace, subprocess_env, "provision", "--check")
    assert differs.code == 1, "the streams now differ from the default size limit"
    assert "outdated" in differs.out and "run corral provision" in _one_line_error(differs)


async def test_a_role_without_stream_rights_is_told_to_run_provision_then_works(
    roles_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    worker = ("--user", "worker", "--password", "worker")
    started = time.monotonic()
    refused = await corral(roles_server.url, namespace, subprocess_env, *worker, "tasks", "ls", "--json")
    assert refused.code == 1
    assert time.monotonic() - started < 10, "a refusal, not a timeout (interpreter start-up included)"
    assert "Traceback" not in refused.err
    error = json.loads(refused.err)  # with --json, the error too is one JSON object
    assert (error["code"], error["field"]) == (1, None)
    message = error["error"]
    assert "not provisioned" in message and f"corral provision --namespace {namespace}" in message

    admin = ("--user", "admin", "--password", "admin")
    other = f"{namespace[:18]}x"  # --namespace of the command wins over the global one
    provisioned = await corral(roles_server.url, other, subprocess_env, *admin, "provision", "-n", namespace, "--json")
    assert set(_states(provisioned).values()) == {"created"}
    listed = await corral(roles_server.url, namespace, subprocess_env, *worker, "tasks", "ls", "--json")
    assert (listed.code, json.loads(listed.out)) == (0, [])


async def test_the_nkey_option_connects_with_a_seed_file(
    roles_server: NatsServer, namespace: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "user.nk").write_bytes(SEED)
    done = await corral(roles_server.url, namespace, subprocess_env, "--nkey", str(tmp_path / "user.nk"), "provision")
    assert done.code == 0, done.err
    assert "created" in done.out


async def test_a_wrong_password_is_one_line_naming_the_url_and_the_credential(
    roles_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    started = time.monotonic()
    done = await corral(
        roles_server.url, namespace, subprocess_env, "--user", "admin", "--password", "nope", "tasks", "ls"
    )
    assert time.monotonic() - started < 10
    assert done.code == 1
    message = _one_line_error(done)
    assert roles_server.url in message and "user/password" in message and "Authorization Violation" in message


async def test_a_missing_ca_file_is_one_line_naming_it(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    missing = str(tmp_path / "ca.pem")
    done = await corral(nats_server.url, namespace, subprocess_env, "--tls-ca", missing, "tasks", "ls")
    assert done.code == 1
    assert missing in _one_line_error(done) and "--tls-ca" in done.err


async def test_provision_usage_errors_exit_2_naming_the_flag_or_variable(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    bad_flag = await corral(nats_server.url, namespace, subprocess_env, "provision", "--replicas", "9")
    assert bad_flag.code == 2 and "--replicas" in bad_flag.err
    bad_env = await corral(nats_server.url, namespace, {**subprocess_env, "CORRAL_MAX_BYTES": "lots"}, "provision")
    assert bad_env.code == 2 and "CORRAL_MAX_BYTES" in _one_line_error(bad_env)


async def test_provision_queue_creates_checks_and_sets_back_the_queues_consumers(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    url = nats_server.url
    consumers = ["qhigh-jobs", "q-jobs", "qlow-jobs"]
    await corral(url, namespace, subprocess_env, "provision")
    missing = await corral(url, namespace, subprocess_env, "provision", "--check", "--queue", "jobs", "--json")
    assert missing.code == 1
    assert {k: v for k, v in _states_any(missing).items() if k in consumers} == dict.fromkeys(consumers, "missing")
    made = await corral(url, namespace, subprocess_env, "provision", "--queue", "jobs", "--json")
    assert {k: v for k, v in _states(made).items() if k in consumers} == dict.fromkeys(consumers, "created")
    same = await corral(url, namespace, subprocess_env, "provision", "--queue", "jobs", "--check", "--json")
    assert {k: v for k, v in _states(same).items() if k in consumers} == dict.fromkeys(consumers, "unchanged")
    bad = await corral(url, namespace, subprocess_env, "provision", "--queue", "no good")
    assert bad.code == 2 and "--queue" in _one_line_error(bad)


def _states_any(done: CliResult) -> dict[str, str]:
    data = json.loads(done.out)
    return {s["stream"]: s["state"] for s in data["streams"]}
