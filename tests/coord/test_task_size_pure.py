"""The size rule, the bounded journal and the ``unfit`` transition as pure functions: no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import JsonValue

from coord.blobs import BlobRef, value_bytes
from coord.errors import PayloadTooLarge
from coord.tasks import ScheduleRequest, TaskRecord, TaskStatus, Transition, transitions
from coord.tasks.journal import KEPT_FIRST, KEPT_HEARTBEATS, MAX_ENTRIES, journaled
from coord.tasks.size import HEADER_ROOM, MAX_ERROR_CHARS, check_fits, cut, record_limit, worst_case, worst_size

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MAX_PAYLOAD = 1 << 20


def _pending(**fields: object) -> TaskRecord:
    request = ScheduleRequest.model_validate({"task_id": "t1", "queue": "q", **fields})
    return journaled(None, transitions.schedule(request, now=NOW))


TOKEN = "tok"


def _step(record: TaskRecord, new: TaskRecord) -> TaskRecord:
    """``new`` written over ``record``, as the engine writes it (journaled, the next revision)."""
    return journaled(record, new).model_copy(update={"revision": record.revision + 1})


def _claimed(record: TaskRecord, n: int) -> TaskRecord:
    digest = transitions.token_digest(TOKEN)
    new = transitions.claim(
        record, worker_id=f"w{n}", claim_id=f"c{n}", token_sha256=digest, lease=30, now=NOW + timedelta(seconds=n)
    )
    return _step(record, new)


@settings(max_examples=60, deadline=None)
@given(rounds=st.integers(min_value=0, max_value=200), beats=st.integers(min_value=0, max_value=40))
def test_the_journal_stays_within_its_bound_keeps_the_first_entries_and_counts_every_drop(
    rounds: int, beats: int
) -> None:
    record = _pending(max_attempts=1000)
    written = 1
    for n in range(rounds):
        record = _claimed(record, n)
        written += 1
        for _ in range(beats if n == rounds - 1 else 1):
            beat = transitions.heartbeat(record, claim_id=f"c{n}", token=TOKEN, lease=30, progress=n, now=NOW)
            record = _step(record, beat)
            written += 1
        record = _step(record, transitions.release(record, claim_id=f"c{n}", token=TOKEN, now=NOW))
        written += 1
    assert len(record.journal) <= MAX_ENTRIES
    assert len(record.journal) + record.journal_dropped == written
    assert record.journal[0].transition is Transition.SCHEDULED
    if written > MAX_ENTRIES:
        assert [e.transition for e in record.journal[:2]] == [Transition.SCHEDULED, Transition.CLAIMED]
    assert sum(e.transition is Transition.HEARTBEAT for e in record.journal) <= KEPT_HEARTBEATS + KEPT_FIRST
    assert record.journal[-1].transition is Transition.RELEASED or rounds == 0


@settings(max_examples=60, deadline=None)
@given(meta=st.integers(min_value=0, max_value=MAX_PAYLOAD), spec=st.integers(min_value=0, max_value=60_000))
def test_an_accepted_task_fits_at_its_worst_and_a_refused_one_names_the_field(meta: int, spec: int) -> None:
    record = _pending(meta={"k": "m" * meta}, spec="s" * spec)
    limit = record_limit(MAX_PAYLOAD)
    worst = len(worst_case(record, MAX_PAYLOAD).model_dump_json())
    if worst <= limit:
        check_fits(record, MAX_PAYLOAD)
    else:
        with pytest.raises(
            PayloadTooLarge, match=rf"task 't1': (meta|spec) is \d+ bytes, which makes the record {worst}"
        ):
            check_fits(record, MAX_PAYLOAD)
    assert limit == MAX_PAYLOAD - HEADER_ROOM


def test_the_worst_case_is_larger_than_any_record_the_task_can_reach() -> None:
    record = _pending(meta={"traceparent": "00-" + "a" * 50}, spec={"k": "v"}, max_attempts=1000)
    worst = len(worst_case(record, MAX_PAYLOAD).model_dump_json())
    for n in range(300):  # many claims, failures with the longest (escaped) errors
        record = _claimed(record, n)
        beat = transitions.heartbeat(record, claim_id=f"c{n}", token=TOKEN, lease=30, progress="p" * 4000, now=NOW)
        record = _step(record, beat)
        assert len(record.model_dump_json()) < worst
        failed = transitions.fail(
            record,
            claim_id=f"c{n}",
            token=TOKEN,
            error=cut("\x00" * 10_000),
            retry=True,
            backoff=transitions.Backoff(base=0),
            now=NOW,
            result="r" * 1000,
        )
        record = _step(record, failed)
        assert len(record.model_dump_json()) < worst
    assert len(record.error or "") == MAX_ERROR_CHARS


def test_unfit_ends_any_record_dead_without_claim_result_or_progress() -> None:
    record = _claimed(_pending(), 1).model_copy(
        update={"result": "r", "progress": {"p": 1}, "result_blob": BlobRef.of("n", b"x")}
    )
    dead = transitions.unfit(record, reason="too large", now=NOW)
    assert dead.status is TaskStatus.DEAD and dead.claim is None and dead.terminal
    assert (dead.result, dead.result_blob, dead.progress, dead.error) == (None, None, None, "too large")
    assert dead.spec == record.spec and dead.epoch == record.epoch


def test_a_large_spec_is_the_same_definition_by_its_digest() -> None:
    spec: JsonValue = {"data": "x" * 100}
    data = value_bytes(spec)
    stored = _pending().model_copy(update={"spec": None, "spec_blob": BlobRef.of("t1.spec.b", data)})
    same = ScheduleRequest(task_id="t1", queue="q", spec=spec)
    other = ScheduleRequest(task_id="t1", queue="q", spec={"data": "y" * 100})
    assert transitions.redefinition(stored, same) == []
    assert transitions.redefinition(stored, other)[0].startswith("spec: existing 111 bytes")


def test_cut_keeps_short_texts_and_marks_cut_ones() -> None:
    assert cut("abc", 3) == "abc"
    assert cut("abcd", 3) == "ab…"
    assert cut("abcd", 0) == ""
    assert len(cut("x" * 10_000)) == MAX_ERROR_CHARS


@settings(max_examples=200, deadline=None)
@given(
    meta=st.dictionaries(st.text(max_size=20), st.text(max_size=200), max_size=5),
    spec=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=50),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=20,
    ),
    task_id=st.text(alphabet="abcdefghij0123456789-_", min_size=1, max_size=64),
    max_attempts=st.integers(min_value=1, max_value=1000),
    timeout=st.none() | st.floats(min_value=0.001, max_value=86_400),
)
def test_the_worst_size_is_the_length_of_the_worst_case_without_building_it(
    meta: dict[str, str], spec: object, task_id: str, max_attempts: int, timeout: float | None
) -> None:
    record = _pending(meta=meta, spec=spec, max_attempts=max_attempts).model_copy(
        update={"task_id": task_id, "timeout": timeout}
    )
    assert worst_size(record, MAX_PAYLOAD) == len(worst_case(record, MAX_PAYLOAD).model_dump_json())
