"""The CLI's errors as a user meets them: one line naming the flag and the rule, the documented exit code.

Each case runs the real ``corral`` process with stderr a pipe and 80 columns (where rich used to
hard-wrap), against a real nats-server whose ``/varz`` proves that a bad flag is refused before
anything connects, so nothing can have been written.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

import coord
from coord.mailbox import Tag
from coord.presence import AgentInfo
from coord.registry import Reserved
from coord.server import NatsServer
from coord.wire import Spec
from corral.cli import app
from tests.coord.helpers_presence import HoldProcess
from tests.corral.helpers_cli import start_corral
from tests.corral.helpers_errors import Raw, connections_made, corral_raw, json_error, one_line

HANDLER = ("--handler", "corral.cli.demo:work")
NOT_ALLOWED = "has characters ' ' that are not allowed (allowed: A-Z a-z 0-9 _ -)"


@pytest.fixture(scope="module")
def quiet_server() -> Iterator[NatsServer]:
    """A server of this module alone: any connection a refused command made would show in its count."""
    with NatsServer() as server:
        yield server


REFUSED_BEFORE_CONNECTING = [
    # submit: each TaskInput rule, named by its flag (not task_id / parent_id), with the value given
    (("submit", "--max-attempts", "0"), "--max-attempts: must be a whole number from 1 to 1000 (got 0)"),
    (("submit", "--timeout", "-1"), "--timeout: must be > 0 and <= 86400 s (got -1)"),
    (("submit", "--file", "relative/path"), "--file: every file must be an absolute path; 'relative/path' is not"),
    (("submit", "--title", "x" * 10_000), "--title: must be at most 500 characters (got 10000 characters)"),
    (("submit", "--id", "has space"), f"--id: 'has space' {NOT_ALLOWED}"),
    (("submit", "--parent", "bad parent"), f"--parent: 'bad parent' {NOT_ALLOWED}"),
    (("submit", "--wait", "--wait-timeout", "-1"), "--wait-timeout: must be > 0 and <= 86400 s (got -1)"),
    (("submit", "--max-attempts", "x"), "--max-attempts: must be a whole number (got x)"),
    (("submit", "--tmeout", "3"), "--tmeout: no such option (did you mean --output or --timeout or --wait-timeout?)"),
    (("submit", "--delay", "-1"), "--delay: must be between 0 and 31622400 s (got -1)"),
    (("submit", "--delay", "3", "--at", "2030-01-01T12:00:00Z"), "--delay: give --delay or --at, not both"),
    (
        ("submit", "--at", "2030-01-01T12:00:00"),
        "--at: '2030-01-01T12:00:00' has no timezone; add one (Z, +02:00, ...)",
    ),
    (("submit", "--at", "tomorrow"), "--at: 'tomorrow' is not an ISO 8601 time (e.g. 2030-01-01T12:00:00Z)"),
    (("submit", "--priority", "urgent"), "--priority: 'urgent' is not a priority (one of: high, normal, low)"),
    # ranges that used to be accepted, or checked only after connecting
    (("reclaimer", "--sweep", "0"), "--sweep: must be between 0.05 and 3600 s (got 0)"),
    (("reclaimer", "--sweep", "-1"), "--sweep: must be between 0.05 and 3600 s (got -1)"),
    (("worker", "-q", "q", *HANDLER, "--lease", "-1"), "--lease: must be > 0 and <= 86400 s (got -1)"),
    (("worker", "-q", "q", *HANDLER, "--grace", "-1"), "--grace: must be between 0 and 86400 s (got -1)"),
    (("worker", "-q", "q", *HANDLER, "--ttl", "0.2"), "--ttl: must be between 1 and 3600 s (got 0.2)"),
    (
        ("worker", "-q", "q", *HANDLER, "--interval", "5"),
        "--interval: interval (5s) must be shorter than the TTL the server enforces "
        "(3s: nats-server truncates ttl=3s to whole seconds); use e.g. interval=1",
    ),
    (
        ("worker", "-q", "q", "--handler", "nosuch_module_x:fn"),
        "--handler: handler 'nosuch_module_x:fn': "
        "cannot import module 'nosuch_module_x': No module named 'nosuch_module_x'",
    ),
    (("worker", *HANDLER), "--queue: is required (repeat it to serve several queues)"),
    (("msg", "send", "--to", "bob", "--ttl", "0.5", "hi"), "--ttl: must be between 1 and 315360000 s (got 0.5)"),
    (("msg", "send", "--to", "bob", ""), "BODY: must not be empty or only whitespace (nothing was sent)"),
    (("msg", "send", "--to", "bob", "--tag", "t", "hi"), "give exactly one of --to AGENT_ID or --tag TAG"),
    (("msg", "bind", "a b", "--agent", "x"), f"TAG: 'a b' {NOT_ALLOWED}"),
    (
        ("events", "emit", "errored", "--to", "p", "--agent", "a"),
        "--text: is required for errored: the error message to report",
    ),
    (("registry", "reserve", "t1", "--as", "bad id"), f"--as: 'bad id' {NOT_ALLOWED}"),
    (("registry", "reserve", "t1"), "--as: is required"),
    (("presence", "hold", "--id", "bad id"), f"--id: 'bad id' {NOT_ALLOWED}"),
    (("presence", "hold", "--id", "a", "--ttl", "0.2"), "--ttl: must be between 1 and 3600 s (got 0.2)"),
    (("provision", "--replicas", "9"), "--replicas: must be a whole number from 1 to 5 (got 9)"),
    (
        ("tasks", "ls", "--status", "finished"),
        "--status: must be one of pending, claimed, succeeded, failed, dead, cancelled (got 'finished')",
    ),
    (("tasks", "show", "a b"), f"TASK_ID: 'a b' {NOT_ALLOWED}"),
    # issue 21: numbers without an upper bound escaped as tracebacks or server errors, or waited for ever
    (("msg", "send", "--to", "bob", "--ttl", "1e11", "hi"), "--ttl: must be between 1 and 315360000 s (got 1e+11)"),
    (("msg", "send", "--to", "bob", "--ttl", "1e308", "hi"), "--ttl: must be between 1 and 315360000 s (got 1e+308)"),
    (("msg", "send", "--to", "bob", "--timeout", "inf", "hi"), "--timeout: must be between 0.1 and 86400 s (got inf)"),
    (("msg", "send", "--to", "bob", "--timeout", "nan", "hi"), "--timeout: must be between 0.1 and 86400 s (got nan)"),
    (("events", "tail", "--since", "inf"), "--since: must be between 0 and 315360000 s (got inf)"),
    (("events", "tail", "--since", "1e30"), "--since: must be between 0 and 315360000 s (got 1e+30)"),
    # issue 21: NaN and infinities in user JSON were stored as null
    (("submit", "--payload", '{"x": NaN}'), "--payload: not valid JSON: NaN is not JSON (only finite numbers are)"),
    (
        ("schedules", "add", "s", "--cron", "* * * * *", "--payload", '{"x": 1e999}'),
        "--payload: not valid JSON: 1e999 is too large a number for JSON (it would be infinity)",
    ),
    (
        ("schedules", "add", "s", "--cron", "* * * * *", "--payload", "[-Infinity]"),
        "--payload: not valid JSON: -Infinity is not JSON (only finite numbers are)",
    ),
    # the demo: combinations it cannot run are refused at once, not after 30 or 120 s
    (("demo", "--ttl", "0.5", "-N", "2", "-M", "2"), "--ttl: must be between 1 and 30 s (got 0.5)"),
    (
        ("demo", "-N", "1", "-M", "2"),
        "--workers: must be >= 2: the demo SIGKILLs one worker and another must finish its tasks (got 1)",
    ),
]


@pytest.mark.parametrize(("args", "message"), REFUSED_BEFORE_CONNECTING, ids=lambda v: " ".join(v)[:60])
def test_a_bad_flag_is_one_line_naming_it_exit_2_and_nothing_connects(
    quiet_server: NatsServer, subprocess_env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    before = connections_made(quiet_server)
    done = corral_raw(subprocess_env, "--server", quiet_server.url, "-n", "errs", *args)
    assert (done.code, one_line(done)) == (2, f"error: {message}")
    assert done.out == ""
    assert connections_made(quiet_server) == before, "the command connected before refusing its flags"


@pytest.mark.parametrize(
    ("args", "field", "message"),
    [
        (
            ("demo", "--ttl", "0.5", "-N", "2", "-M", "2", "--json"),
            "--ttl",
            "--ttl: must be between 1 and 30 s (got 0.5)",
        ),
        (("submit", "--id", "has space", "--json"), "--id", f"--id: 'has space' {NOT_ALLOWED}"),
        (
            ("events", "emit", "errored", "--to", "p", "--agent", "a", "--json"),
            "--text",
            "--text: is required for errored: the error message to report",
        ),
        (
            ("presence", "hold", "--id", "a", "--ttl", "0.2", "--json"),
            "--ttl",
            "--ttl: must be between 1 and 3600 s (got 0.2)",
        ),
        (("submit", "--json", "extra"), None, "Got unexpected extra argument(s) (extra)"),
    ],
    ids=lambda v: " ".join(v)[:40] if isinstance(v, tuple) else str(v),
)
def test_with_json_the_error_is_one_json_object_with_the_same_keys(
    quiet_server: NatsServer, subprocess_env: dict[str, str], args: tuple[str, ...], field: str | None, message: str
) -> None:
    before = connections_made(quiet_server)
    done = corral_raw(subprocess_env, "--server", quiet_server.url, "-n", "errs", *args)
    assert done.code == 2
    assert json_error(done) == {"error": message, "field": field, "code": 2}
    assert connections_made(quiet_server) == before


def test_an_unknown_namespace_character_names_the_global_flag(
    quiet_server: NatsServer, subprocess_env: dict[str, str]
) -> None:
    done = corral_raw(subprocess_env, "--server", quiet_server.url, "-n", "a b", "tasks", "ls")
    assert (done.code, one_line(done)) == (2, f"error: --namespace: 'a b' {NOT_ALLOWED}")


def test_a_long_message_is_not_wrapped_at_80_columns_off_a_terminal(subprocess_env: dict[str, str]) -> None:
    done = corral_raw(subprocess_env, "submit", "--payload", "{x")
    line = one_line(done)
    assert done.code == 2 and len(line) > 80
    assert line == (
        "error: --payload: not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )


def test_server_names_a_store_it_cannot_create(subprocess_env: dict[str, str]) -> None:
    done = corral_raw(subprocess_env, "server", "--store", "/proc/nope/store", within=20)
    assert (done.code, one_line(done)) == (
        1,
        "error: --store: cannot create the directory /proc/nope/store: No such file or directory",
    )
    done = corral_raw(subprocess_env, "server", "--store", "/proc/nope/store", "--json", within=20)
    assert json_error(done) == {
        "error": "--store: cannot create the directory /proc/nope/store: No such file or directory",
        "field": "--store",
        "code": 1,
    }


def test_server_on_a_port_in_use_is_one_line_naming_it(
    quiet_server: NatsServer, subprocess_env: dict[str, str]
) -> None:
    done = corral_raw(subprocess_env, "server", "--port", str(quiet_server.port), within=20)
    assert (done.code, one_line(done)) == (1, f"error: --port: 127.0.0.1:{quiet_server.port} is already in use")


def test_a_bad_environment_variable_is_one_line_naming_it(subprocess_env: dict[str, str]) -> None:
    done = corral_raw({**subprocess_env, "CORRAL_SWEEP_INTERVAL": "often"}, "reclaimer")
    assert (done.code, one_line(done)) == (2, "error: settings: CORRAL_SWEEP_INTERVAL: must be a number (got often)")


def test_an_unexpected_exception_is_one_line_unless_corral_debug_asks_for_the_traceback(
    quiet_server: NatsServer, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "explodes_on_import.py").write_text("raise RuntimeError('boom at import')\n")
    env = {**subprocess_env, "PYTHONPATH": f"{tmp_path}:{subprocess_env['PYTHONPATH']}"}
    args = ("--server", quiet_server.url, "worker", "-q", "q", "--handler", "explodes_on_import:fn")
    done = corral_raw(env, *args)
    assert (done.code, one_line(done)) == (
        1,
        "error: unexpected RuntimeError: boom at import (CORRAL_DEBUG=1 shows the traceback)",
    )
    debug = corral_raw({**env, "CORRAL_DEBUG": "1"}, *args)
    assert debug.code == 1 and "Traceback" in debug.err and "RuntimeError: boom at import" in debug.err


def test_a_group_without_a_command_prints_its_help_and_exits_2(subprocess_env: dict[str, str]) -> None:
    done = corral_raw(subprocess_env, "msg")
    assert done.code == 2 and "send" in done.out and "Traceback" not in done.err


def test_the_json_flag_after_double_dash_belongs_to_the_command(
    quiet_server: NatsServer, subprocess_env: dict[str, str]
) -> None:
    done = corral_raw(subprocess_env, "--server", quiet_server.url, "worker", "--", "true", "--json")
    # text, not JSON: the --json after -- is an argument of the command the worker would run
    assert (done.code, one_line(done)) == (2, "error: --queue: is required (repeat it to serve several queues)")


# --- failures (exit 1, 3) and --json on every command, against a real server ------------------------


async def _raw(server: NatsServer, namespace: str, env: dict[str, str], *args: str) -> Raw:
    return await asyncio.to_thread(corral_raw, env, "--server", server.url, "--namespace", namespace, *args)


async def test_reserve_for_an_absent_agent_reserves_with_a_one_line_warning(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    done = await _raw(nats_server, namespace, subprocess_env, "registry", "reserve", "t1", "--as", "agent7")
    assert done.code == 0 and done.out.startswith("Reserved t1: session s-")
    session = done.out.split()[3]
    assert one_line(done) == (
        f"warning: agent 'agent7' is not present, so session {session} is dead from the start: the next reserve "
        "of t1 reaps it (keep the agent present, e.g. corral presence hold --id agent7)"
    )
    as_json = await _raw(
        nats_server, namespace, subprocess_env, "registry", "reserve", "t2", "--as", "agent7", "--json"
    )
    outcome = json.loads(as_json.out)
    assert (as_json.code, outcome["outcome"], outcome["agent_present"]) == (0, "reserved", False)
    assert json.loads(one_line(as_json))["warning"].startswith("agent 'agent7' is not present")


async def test_holding_an_id_held_by_another_process_exits_3_with_one_line(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    holder = HoldProcess(nats_server.url, namespace, subprocess_env, "taken", "--ttl", "2", "--interval", "0.5")
    try:
        await holder.expect("joined")
        done = await _raw(nats_server, namespace, subprocess_env, "presence", "hold", "--id", "taken")
        assert done.code == 3
        assert one_line(done).startswith("error: agent id 'taken' is held by")
        as_json = await _raw(nats_server, namespace, subprocess_env, "presence", "hold", "--id", "taken", "--json")
        error = json_error(as_json)
        assert (as_json.code, error["code"], error["field"]) == (3, 3, None)
        assert error["error"].startswith("agent id 'taken' is held by")
    finally:
        holder.kill()


async def test_a_failure_with_json_is_one_json_object_exit_1(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    unbound = await _raw(nats_server, namespace, subprocess_env, "msg", "unbind", "oncall", "--agent", "y", "--json")
    assert unbound.code == 1 and unbound.out == ""
    assert json_error(unbound) == {"error": "#oncall is not bound to y", "field": None, "code": 1}
    missing = await _raw(nats_server, namespace, subprocess_env, "registry", "complete", "nope", "--json")
    assert missing.code == 1
    assert json_error(missing) == {"error": "session 'nope' not found", "field": None, "code": 1}


async def test_bind_unbind_emit_and_ending_sessions_print_json(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    async def cli(*args: str) -> object:
        done = await _raw(nats_server, namespace, subprocess_env, *args, "--json")
        assert done.code == 0 and done.err == "", done
        return json.loads(done.out)

    await coord_conn.mailbox.send(Tag(name="oncall"), "page", mode="enqueue")
    assert await cli("msg", "bind", "oncall", "--agent", "dan") == {"tag": "oncall", "agent": "dan", "moved": 1}
    assert await cli("msg", "unbind", "oncall", "--agent", "dan") == {"tag": "oncall", "agent": "dan", "released": True}

    emitted = await cli("events", "emit", "errored", "--to", "boss", "--agent", "kid", "--text", "disk full")
    assert isinstance(emitted, dict)
    assert (emitted["to"], emitted["kind"], emitted["agent"], emitted["message"]) == (
        "boss",
        "errored",
        "kid",
        "disk full",
    )
    assert emitted["id"].startswith("ev-")

    first = await coord_conn.registry.reserve_thread("t1", agent_id="gone")
    second = await coord_conn.registry.reserve_thread("t2", agent_id="gone")
    third = await coord_conn.registry.reserve_thread("t3", agent_id="gone")
    assert isinstance(first, Reserved) and isinstance(second, Reserved) and isinstance(third, Reserved)
    completed = await cli("registry", "complete", first.session.id)
    assert isinstance(completed, dict) and (completed["id"], completed["status"]) == (first.session.id, "complete")
    abandoned = await cli("registry", "abandon", second.session.id)
    assert isinstance(abandoned, dict) and (abandoned["id"], abandoned["status"]) == (second.session.id, "abandoned")
    assert await cli("registry", "reap", "t3") == {"thread": "t3", "reaped": 1}


async def test_worker_json_prints_its_counts_when_stopped(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    worker = await start_corral(
        nats_server.url, namespace, subprocess_env, "worker", "-q", "q", *HANDLER, "--id", "w-json", "--json"
    )
    try:
        assert await coord_conn.presence.wait_present("w-json", 15) is not None
        worker.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(worker.communicate(), 20)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert worker.returncode == 0, err
    stopped = json.loads(out.decode().strip().splitlines()[-1])
    assert stopped["event"] == "stopped" and stopped["worker_id"] == "w-json"
    assert stopped["claimed"] == 0 and stopped["succeeded"] == 0 and "presence_losses" in stopped


async def test_run_one_json_prints_the_task_and_its_status(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    await coord_conn.tasks.schedule(
        "t1", queue="q", spec=Spec(task_id="t1", queue="q", payload={"seconds": 0}).model_dump(mode="json")
    )
    done = await _raw(
        nats_server, namespace, subprocess_env,
        "worker", "run-one", "--task-id", "t1", "--worker-agent-id", "w-one", *HANDLER, "--json",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert json.loads(done.out) == {"task_id": "t1", "status": "succeeded"}


async def test_hold_json_and_watch_json_name_the_agent_by_agent_id_for_joins_and_leaves(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    probe = await coord_conn.presence.join(AgentInfo(id="probe", role="test"))
    watch = await start_corral(nats_server.url, namespace, subprocess_env, "presence", "watch", "--json")
    holder: HoldProcess | None = None
    try:
        assert watch.stdout is not None

        async def seen() -> dict[str, object]:
            assert watch.stdout is not None
            event: dict[str, object] = json.loads(await asyncio.wait_for(watch.stdout.readline(), 15))
            return event

        assert (await seen())["agent_id"] == "probe"  # the watch is live: it reported the agent present
        holder = HoldProcess(
            nats_server.url, namespace, subprocess_env, "a1", "--ttl", "2", "--interval", "0.5", "--json"
        )
        assert json.loads(await holder.expect("{")) == {"event": "joined", "agent_id": "a1"}
        holder.signal(signal.SIGTERM)
        assert json.loads(await holder.expect("{")) == {"event": "left", "agent_id": "a1"}
        joined, left = await seen(), await seen()
        assert (joined["event"], joined["agent_id"], left["event"], left["agent_id"]) == ("joined", "a1", "left", "a1")
        assert isinstance(joined["agent"], dict) and joined["agent"]["id"] == "a1"
    finally:
        if holder is not None:
            holder.kill()
        await probe.leave()
        watch.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(watch.wait(), 5)
        except TimeoutError:
            watch.kill()
            await watch.wait()


def test_every_command_takes_json() -> None:
    def leaves(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
        subcommands = getattr(command, "commands", {})
        if not subcommands or path[-1:] == ("worker",):  # `worker` runs itself and has `run-one` below it
            yield path, command
        for name, sub in subcommands.items():
            yield from leaves(sub, (*path, name))

    found = {
        " ".join(path): any("--json" in getattr(p, "opts", ()) for p in command.params)
        for path, command in leaves(typer.main.get_command(app), ())
    }
    assert len(found) >= 28, found
    assert [name for name, has_json in found.items() if not has_json] == []


async def test_a_worker_that_lost_its_presence_exits_4_with_its_counts_and_one_error(
    coord_conn: coord.Coord, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    worker = await start_corral(
        nats_server.url, namespace, subprocess_env,
        "worker", "-q", "q", *HANDLER, "--id", "w-lost", "--ttl", "1", "--interval", "0.3", "--exit-on-loss", "--json",
    )  # fmt: skip
    try:
        assert await coord_conn.presence.wait_present("w-lost", 15) is not None
        worker.send_signal(signal.SIGSTOP)  # paused past its TTL: its presence expires
        assert await coord_conn.presence.wait_absent("w-lost", 10)
        worker.send_signal(signal.SIGCONT)
        out, err = await asyncio.wait_for(worker.communicate(), 20)
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGCONT)
            worker.kill()
            await worker.wait()
    assert worker.returncode == 4, err.decode()
    stopped = json.loads(out.decode().strip().splitlines()[-1])
    assert (stopped["event"], stopped["worker_id"]) == ("stopped", "w-lost")
    error = json_error(Raw(4, "", err.decode().splitlines()[-1] + "\n"))  # after the worker's log lines
    assert (error["code"], error["field"]) == (4, None)
    assert error["error"].startswith("worker w-lost: presence lost, failed closed: ")
