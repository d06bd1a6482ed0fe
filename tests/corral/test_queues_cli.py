"""``corral queues limit | ls`` as a user runs them: a real process against a real server."""

from __future__ import annotations

import json

import pytest

import coord
from coord.limits import SlotHolder
from coord.server import NatsServer
from tests.corral.helpers_cli import corral


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--rate", "abc"], "error: --rate: must be a number of starts per second or per minute, e.g. 20/s or 90/m"),
        (["--rate", "20/h"], "error: --rate: must be a number of starts per second or per minute"),
        (["--concurrency", "-1"], "error: --concurrency: must be >= 0 (0 or none removes the limit) (got -1)"),
        (["--concurrency", "two"], "error: --concurrency: must be a whole number, or 0 or none to remove the limit"),
        (["--concurrency", "1001"], "error: --concurrency: must be <= 1000 (got 1001)"),
        (["--clear", "--rate", "1/s"], "error: --clear: excludes --concurrency and --rate"),
        ([], "error: give --concurrency, --rate or --clear"),
    ],
)
async def test_bad_limits_get_one_line_naming_the_flag_before_anything_connects(
    subprocess_env: dict[str, str], args: list[str], line: str
) -> None:
    # nothing listens on this port: an invocation that connected would fail differently
    result = await corral("nats://127.0.0.1:1", "ns", subprocess_env, "queues", "limit", "q", *args)
    assert result.code == 2
    assert result.err.startswith(line) and result.err.count("error:") == 1, result.err


async def test_an_unknown_queue_token_is_one_line_naming_the_argument(subprocess_env: dict[str, str]) -> None:
    result = await corral("nats://127.0.0.1:1", "ns", subprocess_env, "queues", "limit", "a.b", "--concurrency", "2")
    assert (result.code, result.err) == (
        2,
        "error: QUEUE: 'a.b' has characters '.' that are not allowed (allowed: A-Z a-z 0-9 _ -)",
    )
    result = await corral(
        "nats://127.0.0.1:1", "ns", subprocess_env, "queues", "limit", "a b", "--rate", "1/s", "--json"
    )
    assert result.code == 2 and json.loads(result.err)["field"] == "QUEUE"


async def test_limits_are_set_changed_and_listed_with_usage(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    url = nats_server.url
    result = await corral(url, namespace, subprocess_env, "queues", "limit", "api", "--concurrency", "2", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out) | {"updated_at": None} == {
        "queue": "api", "concurrency": 2, "rate": None, "rate_per_second": None, "updated_at": None,
    }  # fmt: skip
    result = await corral(url, namespace, subprocess_env, "queues", "limit", "api", "--rate", "90/m")
    assert (result.code, result.out.strip()) == (0, "queue api: concurrency 2, rate 90/m")
    async with coord.connect(url, namespace=namespace) as conn:
        await conn.tasks.schedule("waiting", queue="api", spec=None)
        await conn.tasks.schedule("other", queue="batch", spec=None)
        holder = SlotHolder.model_validate(
            {"task_id": "t1", "epoch": 1, "worker_id": "w1", "at": "2030-01-01T00:00:00Z"}
        )
        await conn.limits.take_slot("api", 1, over=0, holder=holder)
    result = await corral(url, namespace, subprocess_env, "queues", "ls", "--json")
    assert result.code == 0, result.err
    rows = {row["queue"]: row for row in json.loads(result.out)}
    assert rows["api"] == {
        "queue": "api", "concurrency": 2, "rate": "90/m", "rate_per_second": 1.5, "queued": 1, "slots_held": 1,
        "slots": [{"slot": 1, "task_id": "t1", "epoch": 1, "worker_id": "w1", "since": "2030-01-01T00:00:00+00:00"}],
        "recent_rate": 0.0,
    }  # fmt: skip
    assert (rows["batch"]["queued"], rows["batch"]["concurrency"], rows["batch"]["rate"]) == (1, None, None)
    result = await corral(url, namespace, subprocess_env, "queues", "ls")
    assert result.code == 0 and "1/2" in result.out and "90/m" in result.out
    result = await corral(url, namespace, subprocess_env, "queues", "limit", "api", "--concurrency", "none")
    assert result.out.strip() == "queue api: rate 90/m"
    result = await corral(url, namespace, subprocess_env, "queues", "limit", "api", "--clear", "--json")
    assert json.loads(result.out)["concurrency"] is None and json.loads(result.out)["rate"] is None
    async with coord.connect(url, namespace=namespace) as conn:
        assert await conn.limits.get("api") is None
