"""``TaskRecord.outcome()``: how a task ended, as a typed ``coord.wire.Result``, read from the real store."""

from __future__ import annotations

import coord
from coord.wire import Result, ResultKind
from dispatch import result_of


async def test_outcome_is_the_stored_result_typed_and_none_until_the_task_ends(coord_conn: coord.Coord) -> None:
    tasks = coord_conn.tasks
    await tasks.schedule("o1", queue="q", spec={"n": 1})
    assert (await tasks.get("o1")).outcome() is None
    claim = await tasks.claim("o1", "w1")
    await tasks.complete(claim, Result.success("done", output={"rows": 2}).model_dump(mode="json"))
    record = await tasks.get("o1")
    outcome = record.outcome()
    assert isinstance(outcome, Result) and (outcome.kind, outcome.summary, outcome.output) == (
        ResultKind.SUCCESS, "done", {"rows": 2},
    )  # fmt: skip
    assert isinstance(record.result, dict) and result_of(record) == outcome


async def test_outcome_of_a_task_that_died_or_kept_plain_json_is_still_a_result(coord_conn: coord.Coord) -> None:
    tasks = coord_conn.tasks
    await tasks.schedule("o2", queue="q", spec=None, max_attempts=1)
    await tasks.fail(await tasks.claim("o2", "w1"), "exploded")
    dead = (await tasks.get("o2")).outcome()
    assert dead is not None and dead.kind is ResultKind.FAIL and dead.error is not None
    assert dead.error.message == "exploded" and dead.error.substrate_fault
    await tasks.schedule("o3", queue="q", spec=None)
    await tasks.complete(await tasks.claim("o3", "w1"), [1, 2, 3])
    plain = (await tasks.get("o3")).outcome()
    assert plain is not None and plain.ok and plain.output == [1, 2, 3]
