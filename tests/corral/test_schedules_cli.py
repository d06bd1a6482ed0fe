"""`corral schedules` and `corral scheduler` as a user meets them: bad input is one line naming the flag and
the rule before anything connects; add, ls, pause, resume and rm with --json; the scheduler prints each tick."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Iterator

import pytest

import coord
from coord.server import NatsServer
from tests.corral.helpers_cli import CliResult, corral, start_corral
from tests.corral.helpers_errors import connections_made, corral_raw, json_error, one_line

RULE = "5 fields: minute hour day-of-month month day-of-week, or 6 with seconds first"


@pytest.fixture(scope="module")
def quiet_server() -> Iterator[NatsServer]:
    """A server of this module alone: any connection a refused command made would show in its count."""
    with NatsServer() as server:
        yield server


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("NAME", "--cron", "61 * * * *"), f"--cron: '61 * * * *' is not a cron expression: bad minute ({RULE})"),
        (("NAME", "--cron", "* * *"), f"--cron: '* * *' is not a cron expression: wrong number of fields ({RULE})"),
        (("NAME", "--cron", "* * */20 * 1L"), f"--cron: '* * */20 * 1L' never fires ({RULE})"),
        (
            ("NAME", "--cron", "* * * * *", "--timezone", "Mars/Olympus"),
            "--timezone: 'Mars/Olympus' is not an IANA time zone (e.g. UTC, Europe/Paris)",
        ),
        (
            ("bad.name", "--cron", "* * * * *"),
            "NAME: schedule name 'bad.name' has characters '.' that are not allowed (allowed: A-Z a-z 0-9 _ -)",
        ),
        (
            ("n" * 101, "--cron", "* * * * *"),
            f"NAME: schedule name '{'n' * 40}'... is 101 chars long; the limit is 100",
        ),
        (("NAME",), "--cron: is required"),
        (("NAME", "--cron", "* * * * *", "--queue", "a b"), "--queue: 'a b' has characters ' ' that are not allowed"),
        (("NAME", "--cron", "* * * * *", "--payload", "{oops"), "--payload: not valid JSON"),
        (
            ("NAME", "--cron", "* * * * *", "--max-attempts", "0"),
            "--max-attempts: must be a whole number from 1 to 1000 (got 0)",
        ),
        (("NAME", "--cron", "* * * * *", "--file", "rel"), "--file: every file must be an absolute path; 'rel' is not"),
    ],
    ids=lambda v: " ".join(v)[:50] if isinstance(v, tuple) else "",
)
def test_bad_input_to_schedules_add_is_one_line_naming_the_flag_and_the_rule_before_connecting(
    quiet_server: NatsServer, subprocess_env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    before = connections_made(quiet_server)
    done = corral_raw(subprocess_env, "--server", quiet_server.url, "-n", "errs", "schedules", "add", *args)
    assert done.code == 2 and one_line(done).startswith(f"error: {message}"), done.err
    assert connections_made(quiet_server) == before, "the command connected before refusing its flags"


def test_with_json_a_bad_cron_expression_is_one_json_object_naming_the_flag(
    quiet_server: NatsServer, subprocess_env: dict[str, str]
) -> None:
    done = corral_raw(
        subprocess_env, "--server", quiet_server.url, "-n", "errs", "schedules", "add", "x", "--cron", "* *", "--json"
    )
    message = f"--cron: '* *' is not a cron expression: wrong number of fields ({RULE})"
    assert json_error(done) == {"error": message, "field": "--cron", "code": 2}


async def test_schedules_are_added_listed_paused_resumed_and_removed_from_the_cli(
    coord_conn: coord.Coord, nats_server: NatsServer, subprocess_env: dict[str, str]
) -> None:
    def run(*args: str) -> Awaitable[CliResult]:
        return corral(nats_server.url, coord_conn.namespace, subprocess_env, *args)

    added = await run(
        "schedules", "add", "nightly", "--cron", "30 2 * * *", "--tz", "Europe/Paris", "-q", "etl",
        "--payload", '{"full": true}', "--title", "nightly load", "--json",
    )  # fmt: skip
    assert added.code == 0, added.err
    stored = json.loads(added.out)
    assert (stored["name"], stored["cron"], stored["timezone"], stored["paused"]) == (
        "nightly",
        "30 2 * * *",
        "Europe/Paris",
        False,
    )
    assert stored["task"]["queue"] == "etl" and stored["task"]["payload"] == {"full": True}
    assert stored["next_tick"] is not None and stored["last_tick"] is None

    again = await run("schedules", "add", "nightly", "--cron", "* * * * *")
    assert (again.code, again.err) == (2, "error: NAME: schedule 'nightly' already exists (--replace replaces it)")
    replaced = await run("schedules", "add", "nightly", "--cron", "0 3 * * *", "-q", "etl", "--replace", "--json")
    assert replaced.code == 0 and json.loads(replaced.out)["cron"] == "0 3 * * *"

    paused = await run("schedules", "pause", "nightly", "--json")
    assert paused.code == 0 and json.loads(paused.out)["paused"] is True and json.loads(paused.out)["next_tick"] is None
    listed = await run("schedules", "ls", "--json")
    assert [(s["name"], s["paused"]) for s in json.loads(listed.out)] == [("nightly", True)]
    table = await run("schedules", "ls")
    assert "nightly" in table.out and "paused" in table.out and "0 3 * * *" in table.out
    resumed = await run("schedules", "resume", "nightly")
    assert resumed.code == 0 and "resumed schedule nightly" in resumed.out and "next tick" in resumed.out
    assert not (await coord_conn.schedules.get("nightly")).paused

    removed = await run("schedules", "rm", "nightly", "--json")
    assert removed.code == 0 and json.loads(removed.out) == {"name": "nightly", "removed": True}
    gone = await run("schedules", "rm", "nightly")
    assert (gone.code, gone.err) == (1, "error: no schedule 'nightly'")
    assert json.loads((await run("schedules", "ls", "--json")).out) == []


async def test_the_scheduler_command_prints_one_json_line_per_tick_and_stops_on_sigterm(
    coord_conn: coord.Coord, nats_server: NatsServer, subprocess_env: dict[str, str]
) -> None:
    added = await corral(
        nats_server.url, coord_conn.namespace, subprocess_env,
        "schedules", "add", "every2", "--cron", "*/2 * * * * *", "-q", "cliq",
    )  # fmt: skip
    assert added.code == 0 and "added schedule every2" in added.out
    proc = await start_corral(nats_server.url, coord_conn.namespace, subprocess_env, "scheduler", "--json")
    assert proc.stdout is not None
    ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
    assert ready == {"ready": True, "schedules": ["every2"]}
    ticks = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 10)) for _ in range(2)]
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert [t["schedule"] for t in ticks] == ["every2", "every2"]
    seconds = [int(t["task_id"].rsplit("-", 1)[1]) for t in ticks]
    assert seconds[1] - seconds[0] == 2 and all(s % 2 == 0 for s in seconds)
    for tick in ticks:
        assert (await coord_conn.tasks.get(tick["task_id"])).queue == "cliq"
