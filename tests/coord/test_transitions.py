"""The task state machine (``coord.tasks.transitions``) on its own: no server, just records in and out.

Hypothesis draws records in every status (consistent ones: a claim exactly while claimed) and every
transition's inputs, valid and invalid, and checks what each transition promises; a rule-based
machine then drives long random sequences of transitions — current claims and stale ones — and
checks the invariants after every step: the epoch strictly increases with every claim and never
otherwise, a claim is held exactly while claimed, terminal states are left only by an explicit
retry (cancelled never), a stale claim is always rejected, and attempts never pass max_attempts.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coord.errors import Conflict, InvalidTransition, NotYetVisible, StaleClaim
from coord.tasks import transitions as tr
from coord.tasks.models import TERMINAL, ClaimInfo, ScheduleRequest, TaskRecord, TaskStatus, Transition
from coord.wire import MAX_DELAY

EPOCH0 = datetime(2026, 1, 1, tzinfo=UTC)
NO_JITTER = tr.Backoff(base=1.0, factor=2.0, max=30.0, jitter=0.0)

ids = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
offsets = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
leases = st.floats(min_value=0.001, max_value=86_400.0, allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@dataclass(frozen=True)
class Held:
    """A claim as its worker holds it: the raw token stays with the worker, the record has its digest."""

    claim_id: str
    token: str


def at(seconds: float) -> datetime:
    return EPOCH0 + timedelta(seconds=seconds)


def new_claim() -> Held:
    return Held(claim_id=secrets.token_hex(8), token=secrets.token_hex(16))


@st.composite
def records(draw: st.DrawFn, status: TaskStatus | None = None) -> tuple[TaskRecord, Held | None]:
    """A consistent record (claim set exactly while claimed, pending only with attempts left) and the
    claim its worker holds, if any."""
    status = status if status is not None else draw(st.sampled_from(list(TaskStatus)))
    max_attempts = draw(st.integers(1, 10))
    if status is TaskStatus.PENDING:
        attempt = draw(st.integers(0, max_attempts - 1))
    elif status is TaskStatus.CLAIMED:
        attempt = draw(st.integers(1, max_attempts))
    else:
        attempt = draw(st.integers(0, max_attempts))
    epoch = draw(st.integers(attempt, attempt + 20))
    created = at(draw(st.floats(0, 1000)))
    claim: ClaimInfo | None = None
    held: Held | None = None
    if status is TaskStatus.CLAIMED:
        held = new_claim()
        claim = ClaimInfo(
            worker_id=draw(ids),
            claim_id=held.claim_id,
            token_sha256=tr.token_digest(held.token),
            epoch=epoch,
            claimed_at=created,
            deadline=created + timedelta(seconds=draw(leases)),
        )
    visible = None
    if status is TaskStatus.PENDING and draw(st.booleans()):
        visible = created + timedelta(seconds=draw(st.floats(0, 10_000)))
    record = TaskRecord(
        task_id=draw(ids),
        queue=draw(ids),
        status=status,
        spec=draw(json_values),
        attempt=attempt,
        max_attempts=max_attempts,
        epoch=epoch,
        claim=claim,
        result=draw(json_values) if status.terminal else None,
        progress=draw(json_values) if status is TaskStatus.CLAIMED else None,
        created_at=created,
        updated_at=created,
        visible_at=visible,
    )
    return record, held


def after(record: TaskRecord) -> datetime:
    """A moment when ``record`` is due (past its visible_at, if it has one)."""
    return max(record.updated_at, record.visible_at or record.updated_at) + timedelta(seconds=1)


# --- schedule and redefinition ------------------------------------------------------------------


@given(task_id=ids, queue=ids, attempts=st.integers(1, 1000), delay=st.none() | st.floats(0, MAX_DELAY), now=offsets)
def test_schedule_makes_a_pending_record_due_at_its_start(
    task_id: str, queue: str, attempts: int, delay: float | None, now: float
) -> None:
    request = ScheduleRequest(task_id=task_id, queue=queue, max_attempts=attempts, delay=delay)
    record = tr.schedule(request, now=at(now))
    assert (record.status, record.transition) == (TaskStatus.PENDING, Transition.SCHEDULED)
    assert (record.attempt, record.epoch, record.claim, record.max_attempts) == (0, 0, None, attempts)
    assert record.created_at == record.updated_at == at(now)
    assert record.visible_at == (None if delay is None else at(now) + timedelta(seconds=delay))
    assert tr.redefinition(record, request) == []


@given(
    field=st.sampled_from(["queue", "max_attempts", "timeout", "parent", "priority", "spec", "start"]),
    now=offsets,
)
def test_a_repeated_schedule_that_changes_an_identity_field_is_a_redefinition(field: str, now: float) -> None:
    base = ScheduleRequest(task_id="t", queue="q", spec={"a": 1}, max_attempts=3, delay=5)
    record = tr.schedule(base, now=at(now))
    changed: dict[str, Any] = {
        "queue": {"queue": "other"},
        "max_attempts": {"max_attempts": 4},
        "timeout": {"timeout": 9.0},
        "parent": {"parent": "p"},
        "priority": {"priority": "high"},
        "spec": {"spec": {"a": 2}},
        "start": {"delay": 6},
    }
    differences = tr.redefinition(record, base.model_copy(update=changed[field]))
    assert len(differences) == 1 and differences[0].startswith(field), differences
    assert tr.redefinition(record, base.model_copy(update={"meta": {"x": "y"}})) == []  # meta is not identity


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"max_attempts": 1001},
        {"max_attempts": 2.0},
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": float("nan")},
        {"timeout": float("inf")},
        {"delay": -1},
        {"delay": float("nan")},
        {"delay": MAX_DELAY + 1},
        {"task_id": "a.b"},
        {"task_id": ""},
        {"queue": "*"},
        {"delay": 1, "not_before": EPOCH0},
        {"not_before": datetime(2026, 1, 1)},
    ],
)
def test_a_schedule_request_refuses_bad_input_before_any_transition(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ScheduleRequest(**{"task_id": "t", "queue": "q", **bad})


# --- claim --------------------------------------------------------------------------------------


@given(drawn=records(TaskStatus.PENDING), worker=ids, lease=leases)
def test_claim_of_a_due_pending_task_starts_the_next_epoch(
    drawn: tuple[TaskRecord, Held | None], worker: str, lease: float
) -> None:
    record, _ = drawn
    held, now = new_claim(), after(record)
    out = tr.claim(
        record, worker_id=worker, claim_id=held.claim_id, token_sha256=tr.token_digest(held.token), lease=lease, now=now
    )
    assert (out.status, out.transition, out.last_worker) == (TaskStatus.CLAIMED, Transition.CLAIMED, worker)
    assert out.epoch == record.epoch + 1 and out.attempt == record.attempt + 1 <= out.max_attempts
    assert out.claim is not None and out.claim.epoch == out.epoch and out.claim.worker_id == worker
    assert out.claim.deadline == now + timedelta(seconds=lease) and out.claim.claimed_at == now
    assert (out.progress, out.result, out.visible_at) == (None, None, None)
    tr.check_claim(out, held.claim_id, held.token)  # the worker's token is the current claim's


@given(drawn=records(TaskStatus.PENDING), early=st.floats(0.001, 10_000), tolerance=st.floats(0, 5))
def test_claim_before_visible_at_is_not_yet_visible_beyond_the_tolerance(
    drawn: tuple[TaskRecord, Held | None], early: float, tolerance: float
) -> None:
    record, _ = drawn
    visible = record.updated_at + timedelta(seconds=100)
    record = record.model_copy(update={"visible_at": visible})
    now = visible - timedelta(seconds=early)

    def attempt() -> TaskRecord:
        return tr.claim(
            record, worker_id="w", claim_id="c", token_sha256="0" * 64, lease=1, now=now, visibility_tolerance=tolerance
        )

    if early > tolerance:
        with pytest.raises(NotYetVisible) as refused:
            attempt()
        assert refused.value.visible_at == visible
    else:
        assert attempt().status is TaskStatus.CLAIMED


@given(drawn=records())
def test_claim_of_anything_but_a_pending_task_is_refused(drawn: tuple[TaskRecord, Held | None]) -> None:
    record, _ = drawn
    if record.status is TaskStatus.PENDING:
        return
    expected = Conflict if record.status is TaskStatus.CLAIMED else InvalidTransition
    with pytest.raises(expected):
        tr.claim(record, worker_id="w", claim_id="c", token_sha256="0" * 64, lease=1, now=after(record))


@given(drawn=records(TaskStatus.PENDING))
def test_claim_with_attempts_spent_is_refused_rather_than_looping(drawn: tuple[TaskRecord, Held | None]) -> None:
    record, _ = drawn
    spent = record.model_copy(update={"attempt": record.max_attempts})
    with pytest.raises(InvalidTransition) as refused:
        tr.claim(spent, worker_id="w", claim_id="c", token_sha256="0" * 64, lease=1, now=after(record))
    assert not isinstance(refused.value, NotYetVisible)


# --- the claim holder's transitions -------------------------------------------------------------

HOLDER_OPS = ["heartbeat", "complete", "fail", "fail-final", "release"]


def by_holder(op: str, record: TaskRecord, held: Held, now: datetime, payload: Any = None) -> TaskRecord:
    """Apply the claim holder's transition ``op`` with ``held``."""
    if op == "heartbeat":
        return tr.heartbeat(record, claim_id=held.claim_id, token=held.token, lease=5, progress=payload, now=now)
    if op == "complete":
        return tr.complete(record, claim_id=held.claim_id, token=held.token, result=payload, now=now)
    if op in ("fail", "fail-final"):
        return tr.fail(
            record,
            claim_id=held.claim_id,
            token=held.token,
            error="boom",
            retry=op == "fail",
            backoff=NO_JITTER,
            now=now,
            result=payload,
        )
    assert op == "release"
    return tr.release(record, claim_id=held.claim_id, token=held.token, now=now)


@given(drawn=records(), op=st.sampled_from(HOLDER_OPS), which=st.sampled_from(["other-claim", "wrong-token"]))
def test_a_stale_claim_or_a_wrong_token_is_rejected_by_every_holder_transition(
    drawn: tuple[TaskRecord, Held | None], op: str, which: str
) -> None:
    record, held = drawn
    presented = Held(held.claim_id, held.token + "x") if which == "wrong-token" and held is not None else new_claim()
    with pytest.raises(StaleClaim):
        by_holder(op, record, presented, after(record))


@given(drawn=records(TaskStatus.CLAIMED), progress=json_values, lease=leases)
def test_heartbeat_extends_the_lease_and_keeps_the_last_progress(
    drawn: tuple[TaskRecord, Held | None], progress: Any, lease: float
) -> None:
    record, held = drawn
    assert held is not None and record.claim is not None
    now = after(record)
    out = tr.heartbeat(record, claim_id=held.claim_id, token=held.token, lease=lease, progress=progress, now=now)
    assert out.claim is not None and out.claim.deadline == now + timedelta(seconds=lease)
    assert out.claim.model_copy(update={"deadline": record.claim.deadline}) == record.claim  # only the deadline
    assert (out.status, out.epoch, out.attempt, out.transition) == (
        TaskStatus.CLAIMED,
        record.epoch,
        record.attempt,
        Transition.HEARTBEAT,
    )
    assert out.progress == (record.progress if progress is None else progress)


@given(drawn=records(TaskStatus.CLAIMED), result=json_values)
def test_complete_records_the_result_and_ends_the_claim(drawn: tuple[TaskRecord, Held | None], result: Any) -> None:
    record, held = drawn
    assert held is not None
    out = tr.complete(record, claim_id=held.claim_id, token=held.token, result=result, now=after(record))
    assert (out.status, out.transition, out.claim, out.error) == (
        TaskStatus.SUCCEEDED,
        Transition.COMPLETED,
        None,
        None,
    )
    assert out.result == result and (out.epoch, out.attempt) == (record.epoch, record.attempt)
    with pytest.raises(StaleClaim):  # once: the claim ended with it
        tr.complete(out, claim_id=held.claim_id, token=held.token, result=result, now=after(out))


@given(drawn=records(TaskStatus.CLAIMED), retry=st.booleans())
def test_fail_retries_after_the_backoff_until_attempts_are_spent(
    drawn: tuple[TaskRecord, Held | None], retry: bool
) -> None:
    record, held = drawn
    assert held is not None
    now = after(record)
    out = tr.fail(
        record, claim_id=held.claim_id, token=held.token, error="boom", retry=retry, backoff=NO_JITTER, now=now
    )
    assert (out.claim, out.error, out.transition, out.attempt) == (None, "boom", Transition.FAILED, record.attempt)
    if not retry:
        assert (out.status, out.visible_at) == (TaskStatus.FAILED, None)
    elif record.attempt >= record.max_attempts:
        assert (out.status, out.visible_at) == (TaskStatus.DEAD, None)
    else:
        assert out.status is TaskStatus.PENDING and out.attempt < out.max_attempts
        assert out.visible_at == now + timedelta(seconds=NO_JITTER.delay(record.attempt))


@given(attempt=st.integers(1, 50), base=st.floats(0.01, 10), jitter=st.floats(0, 1))
def test_the_backoff_is_capped_and_jitter_only_shortens_it(attempt: int, base: float, jitter: float) -> None:
    backoff = tr.Backoff(base=base, factor=2.0, max=60.0, jitter=jitter)
    bound = min(60.0, base * 2.0 ** (attempt - 1))
    assert bound * (1 - jitter) - 1e-9 <= backoff.delay(attempt) <= bound + 1e-9


@given(drawn=records(TaskStatus.CLAIMED))
def test_release_gives_the_attempt_back(drawn: tuple[TaskRecord, Held | None]) -> None:
    record, held = drawn
    assert held is not None
    out = tr.release(record, claim_id=held.claim_id, token=held.token, now=after(record))
    assert (out.status, out.claim, out.visible_at, out.transition) == (
        TaskStatus.PENDING,
        None,
        None,
        Transition.RELEASED,
    )
    assert out.attempt == record.attempt - 1 and out.epoch == record.epoch


# --- reclaim, cancel, retry -----------------------------------------------------------------------


@given(drawn=records(TaskStatus.CLAIMED), overdue_only=st.booleans(), late=st.floats(-1000, 1000))
def test_reclaim_keeps_the_attempt_and_is_refused_for_a_lease_still_running(
    drawn: tuple[TaskRecord, Held | None], overdue_only: bool, late: float
) -> None:
    record, held = drawn
    assert held is not None and record.claim is not None
    now = record.claim.deadline + timedelta(seconds=late)
    if overdue_only and record.claim.deadline > now:
        with pytest.raises(StaleClaim):
            tr.reclaim(record, expected_claim_id=held.claim_id, reason="gone", now=now, overdue_only=True)
        return
    out = tr.reclaim(record, expected_claim_id=held.claim_id, reason="gone", now=now, overdue_only=overdue_only)
    spent = record.attempt >= record.max_attempts
    assert out.status is (TaskStatus.DEAD if spent else TaskStatus.PENDING)
    assert (out.claim, out.error, out.attempt, out.epoch) == (None, "gone", record.attempt, record.epoch)
    with pytest.raises(StaleClaim):  # the same reclaim a second time names a claim that is gone
        tr.reclaim(out, expected_claim_id=held.claim_id, reason="gone", now=now)


@given(drawn=records())
def test_reclaim_of_a_claim_that_is_not_current_is_stale(drawn: tuple[TaskRecord, Held | None]) -> None:
    record, _ = drawn
    with pytest.raises(StaleClaim):
        tr.reclaim(record, expected_claim_id=new_claim().claim_id, reason="gone", now=after(record))


@given(drawn=records())
def test_cancel_ends_a_live_task_and_nothing_else(drawn: tuple[TaskRecord, Held | None]) -> None:
    record, _ = drawn
    now = after(record)
    if record.status is TaskStatus.CANCELLED:
        assert tr.cancel(record, now=now) is None
    elif record.status.terminal:
        with pytest.raises(InvalidTransition):
            tr.cancel(record, now=now)
    else:
        out = tr.cancel(record, now=now)
        assert out is not None
        assert (out.status, out.claim, out.visible_at, out.transition) == (
            TaskStatus.CANCELLED,
            None,
            None,
            Transition.CANCELLED,
        )


@given(drawn=records())
def test_retry_revives_only_dead_and_failed_tasks_with_fresh_attempts(drawn: tuple[TaskRecord, Held | None]) -> None:
    record, _ = drawn
    now = after(record)
    if record.status not in (TaskStatus.DEAD, TaskStatus.FAILED):
        with pytest.raises(InvalidTransition):
            tr.retry(record, now=now)
        return
    out = tr.retry(record, now=now)
    assert (out.status, out.attempt, out.result, out.progress, out.claim) == (TaskStatus.PENDING, 0, None, None, None)
    assert out.epoch == record.epoch and out.transition is Transition.RETRIED


# --- long random sequences: the invariants ------------------------------------------------------


class Lifecycle(RuleBasedStateMachine):
    """One task driven by every transition with current and stale claims; invariants after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0.0
        self.record = tr.schedule(ScheduleRequest(task_id="t", queue="q", max_attempts=3), now=at(0))
        self.held: list[Held] = []  # every claim ever handed out, current or stale
        self.epochs_seen = [0]
        self.claims_made = 0

    def now(self, step: float = 1.0) -> datetime:
        self.clock += step
        return at(self.clock)

    def current(self) -> Held | None:
        claim = self.record.claim
        return next((h for h in self.held if claim and h.claim_id == claim.claim_id), None)

    def apply(self, change: Any, *, expect_ok: bool) -> None:
        """Apply ``change()``; it must succeed exactly when ``expect_ok``."""
        before = self.record
        try:
            out = change()
        except (Conflict, InvalidTransition, StaleClaim):
            assert not expect_ok, f"refused although allowed from {before.status}"
            return
        assert expect_ok, f"allowed although it must be refused from {before.status}"
        if out is not None:
            if before.terminal:  # terminal states are left only by an explicit retry
                assert out.transition is Transition.RETRIED and before.status is not TaskStatus.CANCELLED
            self.record = out

    @rule(wait=st.floats(0, 100))
    def claim(self, wait: float) -> None:
        held = new_claim()
        record = self.record
        now = self.now(wait)
        due = record.visible_at is None or record.visible_at <= now
        ok = record.status is TaskStatus.PENDING and due and record.attempt < record.max_attempts

        def change() -> TaskRecord:
            return tr.claim(
                record,
                worker_id="w",
                claim_id=held.claim_id,
                token_sha256=tr.token_digest(held.token),
                lease=10,
                now=now,
            )

        self.apply(change, expect_ok=ok)
        if ok:
            self.held.append(held)
            self.claims_made += 1
            assert self.record.epoch == self.epochs_seen[-1] + 1  # strictly increases with every claim
            self.epochs_seen.append(self.record.epoch)

    @precondition(lambda self: self.held)
    @rule(op=st.sampled_from(HOLDER_OPS), pick=st.integers(0, 1000), payload=json_values)
    def holder(self, op: str, pick: int, payload: Any) -> None:
        held = self.held[pick % len(self.held)]
        record = self.record
        ok = held == self.current() and record.status is TaskStatus.CLAIMED
        self.apply(lambda: by_holder(op, record, held, self.now(), payload), expect_ok=ok)

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 1000), overdue_only=st.booleans(), wait=st.floats(0, 20))
    def reclaim(self, pick: int, overdue_only: bool, wait: float) -> None:
        held = self.held[pick % len(self.held)]
        record = self.record
        now = self.now(wait)
        ok = held == self.current() and not (overdue_only and record.claim is not None and record.claim.deadline > now)
        self.apply(
            lambda: tr.reclaim(record, expected_claim_id=held.claim_id, reason="r", now=now, overdue_only=overdue_only),
            expect_ok=ok,
        )

    @rule()
    def cancel(self) -> None:
        record = self.record
        self.apply(
            lambda: tr.cancel(record, now=self.now()), expect_ok=record.status not in TERMINAL - {TaskStatus.CANCELLED}
        )

    @rule()
    def retry(self) -> None:
        record = self.record
        ok = record.status in (TaskStatus.DEAD, TaskStatus.FAILED)
        self.apply(lambda: tr.retry(record, now=self.now()), expect_ok=ok)

    @invariant()
    def claim_held_exactly_while_claimed(self) -> None:
        assert (self.record.claim is not None) == (self.record.status is TaskStatus.CLAIMED)
        if self.record.claim is not None:
            assert self.record.claim.epoch == self.record.epoch

    @invariant()
    def epoch_counts_the_claims(self) -> None:
        assert self.record.epoch == self.claims_made  # never moves but by a claim

    @invariant()
    def attempts_bounded(self) -> None:
        assert 0 <= self.record.attempt <= self.record.max_attempts
        if self.record.status is TaskStatus.PENDING:
            assert self.record.attempt < self.record.max_attempts

    @invariant()
    def pending_task_not_due_only_after_a_failure(self) -> None:
        if self.record.visible_at is not None:
            assert self.record.status is TaskStatus.PENDING and self.record.transition is Transition.FAILED


Lifecycle.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_lifecycle_invariants = Lifecycle.TestCase
