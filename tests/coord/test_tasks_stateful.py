"""Random interleavings of every transition from several actors, against a real server.

Hypothesis drives schedule / claim / heartbeat / complete / fail / release / reclaim / cancel /
retry (and head-to-head races) from three connections, and a model predicts each outcome. After
every step: at most one current claim, epochs strictly increase, a terminal task never changes
again except by an explicit retry, a result is recorded at most once per attempt, and the journal
is exactly the record's history of successful writes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import coord
from coord.errors import Conflict, InvalidTransition, NotFound, StaleClaim
from coord.server import NatsServer
from coord.tasks import Backoff, Claim, TaskRecord, TaskStatus, TaskStore, Transition
from coord.tasks.journal import KEPT_HEARTBEATS

T = TypeVar("T")
TASKS = 3
ACTORS = 3
_examples = itertools.count()


async def _together(*coros: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run ``coros`` concurrently; their results or exceptions, in order."""
    return list(await asyncio.gather(*coros, return_exceptions=True))


def _claim_id(record: TaskRecord) -> str | None:
    return record.claim.claim_id if record.claim else None


@dataclass
class Model:
    """What the store must hold for one task, given the operations that succeeded."""

    max_attempts: int
    status: TaskStatus = TaskStatus.PENDING
    attempt: int = 0
    epoch: int = 0
    claim_id: str | None = None
    history: list[tuple[int, Transition]] = field(default_factory=list)
    results: dict[int, int] = field(default_factory=dict)  # epoch -> successful completes
    result: Any = None
    terminal_revision: int | None = None

    def wrote(self, record: TaskRecord) -> None:
        if self.history:
            assert record.revision > self.history[-1][0]
        self.history.append((record.revision, record.transition))
        self.status, self.attempt, self.claim_id = record.status, record.attempt, _claim_id(record)
        assert record.epoch >= self.epoch
        self.epoch = record.epoch
        self.terminal_revision = record.revision if record.terminal else None


class TaskMachine(RuleBasedStateMachine):
    loop: ClassVar[asyncio.AbstractEventLoop]
    stores: ClassVar[list[TaskStore]]

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"x{next(_examples)}"
        self.models: dict[int, Model] = {}
        self.claims: list[tuple[int, Claim]] = []  # every claim ever handed out, current or stale
        self.touched: set[int] = set()

    # --- plumbing ---------------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def outcome(self, coro: Coroutine[Any, Any, T]) -> T | Exception:
        try:
            return self.run(coro)
        except (Conflict, InvalidTransition, NotFound, StaleClaim) as err:
            return err

    def task_id(self, k: int) -> str:
        return f"{self.prefix}-t{k}"

    def is_current(self, k: int, claim: Claim) -> bool:
        model = self.models.get(k)
        return model is not None and model.status is TaskStatus.CLAIMED and model.claim_id == claim.claim_id

    # --- rules ------------------------------------------------------------------------------------
    @rule(k=st.integers(0, TASKS - 1), max_attempts=st.integers(1, 3), actor=st.integers(0, ACTORS - 1))
    def schedule(self, k: int, max_attempts: int, actor: int) -> None:
        model = self.models.get(k)
        attempts = model.max_attempts if model else max_attempts
        record = self.run(self.stores[actor].schedule(self.task_id(k), queue="q", spec=k, max_attempts=attempts))
        if model is None:
            model = self.models[k] = Model(max_attempts=attempts)
            assert record.status is TaskStatus.PENDING and record.epoch == 0
            model.wrote(record)
        else:
            assert record.revision == model.history[-1][0]  # idempotent: the existing record, nothing written
        self.touched.add(k)

    @rule(k=st.integers(0, TASKS - 1), worker=st.sampled_from(["wA", "wB", "wC"]), actor=st.integers(0, ACTORS - 1))
    def claim(self, k: int, worker: str, actor: int) -> None:
        model = self.models.get(k)
        got = self.outcome(self.stores[actor].claim(self.task_id(k), worker))
        if model is None:
            assert isinstance(got, NotFound)
            return
        if model.status is TaskStatus.PENDING:
            assert isinstance(got, Claim), got
            assert got.epoch == model.epoch + 1 and got.record.attempt == model.attempt + 1
            model.wrote(got.record)
            self.claims.append((k, got))
        elif model.status is TaskStatus.CLAIMED:
            assert isinstance(got, Conflict), got
        else:
            assert isinstance(got, InvalidTransition), got
        self.touched.add(k)

    def _pick(self, index: int) -> tuple[int, Claim]:
        return self.claims[index % len(self.claims)]

    def _by_claim(self, index: int, op: str, actor: int, **kwargs: Any) -> None:
        k, claim = self._pick(index)
        model = self.models[k]
        current = self.is_current(k, claim)
        before = model.attempt
        store = self.stores[actor]
        if op == "heartbeat":
            got: Any = self.outcome(store.heartbeat(claim, progress=kwargs.get("progress")))
        elif op == "complete":
            got = self.outcome(store.complete(claim, {"by": claim.claim_id}))
        elif op == "fail":
            got = self.outcome(store.fail(claim, "boom", retry=kwargs["retry"]))
        else:
            got = self.outcome(store.release(claim))
        self.touched.add(k)
        if not current:
            assert isinstance(got, StaleClaim), got
            return
        record = got if isinstance(got, TaskRecord) else got.record if isinstance(got, Claim) else got
        assert isinstance(record, TaskRecord), got
        if op == "heartbeat":
            assert record.status is TaskStatus.CLAIMED and _claim_id(record) == claim.claim_id
        elif op == "complete":
            assert record.status is TaskStatus.SUCCEEDED and record.result == {"by": claim.claim_id}
            model.results[claim.epoch] = model.results.get(claim.epoch, 0) + 1
            model.result = record.result
        elif op == "fail":
            if not kwargs["retry"]:
                expected = TaskStatus.FAILED
            else:
                expected = TaskStatus.DEAD if before >= model.max_attempts else TaskStatus.PENDING
            assert record.status is expected and record.attempt == before
        else:
            assert record.status is TaskStatus.PENDING and record.attempt == before - 1
        model.wrote(record)

    @precondition(lambda self: self.claims)
    @rule(index=st.integers(0, 50), actor=st.integers(0, ACTORS - 1), progress=st.none() | st.integers(0, 9))
    def heartbeat(self, index: int, actor: int, progress: int | None) -> None:
        self._by_claim(index, "heartbeat", actor, progress=progress)

    @precondition(lambda self: self.claims)
    @rule(index=st.integers(0, 50), actor=st.integers(0, ACTORS - 1))
    def complete(self, index: int, actor: int) -> None:
        self._by_claim(index, "complete", actor)

    @precondition(lambda self: self.claims)
    @rule(index=st.integers(0, 50), actor=st.integers(0, ACTORS - 1), retry=st.booleans())
    def fail(self, index: int, actor: int, retry: bool) -> None:
        self._by_claim(index, "fail", actor, retry=retry)

    @precondition(lambda self: self.claims)
    @rule(index=st.integers(0, 50), actor=st.integers(0, ACTORS - 1))
    def release(self, index: int, actor: int) -> None:
        self._by_claim(index, "release", actor)

    @precondition(lambda self: self.claims)
    @rule(index=st.integers(0, 50), actor=st.integers(0, ACTORS - 1))
    def reclaim(self, index: int, actor: int) -> None:
        k, claim = self._pick(index)
        model = self.models[k]
        current, before = self.is_current(k, claim), model.attempt
        got = self.outcome(self.stores[actor].reclaim(self.task_id(k), claim.claim_id, reason="test"))
        self.touched.add(k)
        if not current:
            assert isinstance(got, StaleClaim), got
            return
        assert isinstance(got, TaskRecord), got
        assert got.status is (TaskStatus.DEAD if before >= model.max_attempts else TaskStatus.PENDING)
        assert got.attempt == before
        model.wrote(got)

    @rule(k=st.integers(0, TASKS - 1), actor=st.integers(0, ACTORS - 1))
    def cancel(self, k: int, actor: int) -> None:
        model = self.models.get(k)
        got = self.outcome(self.stores[actor].cancel(self.task_id(k)))
        self.touched.add(k)
        if model is None:
            assert isinstance(got, NotFound)
        elif model.status in (TaskStatus.PENDING, TaskStatus.CLAIMED):
            assert isinstance(got, TaskRecord) and got.status is TaskStatus.CANCELLED, got
            model.wrote(got)
        elif model.status is TaskStatus.CANCELLED:
            assert isinstance(got, TaskRecord) and got.revision == model.history[-1][0]
        else:
            assert isinstance(got, InvalidTransition), got

    @rule(k=st.integers(0, TASKS - 1), actor=st.integers(0, ACTORS - 1))
    def retry(self, k: int, actor: int) -> None:
        model = self.models.get(k)
        got = self.outcome(self.stores[actor].retry(self.task_id(k)))
        self.touched.add(k)
        if model is None:
            assert isinstance(got, NotFound)
        elif model.status in (TaskStatus.DEAD, TaskStatus.FAILED):
            assert isinstance(got, TaskRecord) and got.status is TaskStatus.PENDING and got.attempt == 0, got
            model.wrote(got)
        else:
            assert isinstance(got, InvalidTransition), got

    @rule(k=st.integers(0, TASKS - 1))
    def race_claimers(self, k: int) -> None:
        """Every actor claims the same task at once: exactly one wins if it was pending."""
        model = self.models.get(k)
        if model is None or model.status is not TaskStatus.PENDING:
            return
        outcomes = self.run(_together(*(s.claim(self.task_id(k), f"racer{i}") for i, s in enumerate(self.stores))))
        winners = [o for o in outcomes if isinstance(o, Claim)]
        assert len(winners) == 1 and all(isinstance(o, Conflict) for o in outcomes if o not in winners), outcomes
        model.wrote(winners[0].record)
        self.claims.append((k, winners[0]))
        self.touched.add(k)

    @rule(k=st.integers(0, TASKS - 1))
    def race_complete_against_reclaim(self, k: int) -> None:
        """The holder completes while a reclaimer takes the claim away: exactly one of them wins."""
        model = self.models.get(k)
        if model is None or model.status is not TaskStatus.CLAIMED:
            return
        claim = next(c for kk, c in reversed(self.claims) if kk == k and c.claim_id == model.claim_id)
        attempt = model.attempt
        completed, reclaimed = self.run(
            _together(
                self.stores[0].complete(claim, {"by": claim.claim_id}),
                self.stores[1].reclaim(self.task_id(k), claim.claim_id, reason="race"),
            )
        )
        if isinstance(completed, TaskRecord):
            assert isinstance(reclaimed, StaleClaim), reclaimed
            model.results[claim.epoch] = model.results.get(claim.epoch, 0) + 1
            model.result = completed.result
            model.wrote(completed)
        else:
            assert isinstance(completed, StaleClaim) and isinstance(reclaimed, TaskRecord), (completed, reclaimed)
            assert reclaimed.status is (TaskStatus.DEAD if attempt >= model.max_attempts else TaskStatus.PENDING)
            model.wrote(reclaimed)
        self.touched.add(k)

    # --- invariants -------------------------------------------------------------------------------
    @invariant()
    def records_match_the_model(self) -> None:
        for k in self.touched:
            model = self.models.get(k)
            if model is None:
                continue
            record = self.run(self.stores[k % ACTORS].get(self.task_id(k)))
            # the record is exactly the last successful write: nothing else was recorded
            assert record.revision == model.history[-1][0], (record, model.history)
            assert (record.status, record.attempt, record.epoch) == (model.status, model.attempt, model.epoch)
            # at most one current claim: the record's, and it is set exactly while claimed
            assert (record.claim is not None) == (record.status is TaskStatus.CLAIMED)
            current = [c for kk, c in self.claims if kk == k and record.claim and c.claim_id == record.claim.claim_id]
            assert len(current) == (1 if record.claim else 0)
            # epochs strictly increase across the claims handed out
            epochs = [c.epoch for kk, c in self.claims if kk == k]
            assert epochs == sorted(set(epochs))
            # a result at most once per attempt; a terminal record stays as it was
            assert all(n <= 1 for n in model.results.values())
            if record.status is TaskStatus.SUCCEEDED:
                assert record.result == model.result
            if model.terminal_revision is not None:
                assert record.revision == model.terminal_revision
            assert record.attempt <= record.max_attempts

    @invariant()
    def journal_is_the_history(self) -> None:
        for k in self.touched:
            model = self.models.get(k)
            if model is None:
                continue
            self.run(self._journal_matches(k, model))
        self.touched.clear()

    async def _journal_matches(self, k: int, model: Model) -> None:
        journal = await self.stores[(k + 1) % ACTORS].journal(self.task_id(k))
        entries = [(e.revision, e.transition) for e in journal]
        assert entries == kept(model.history), f"journal {entries} != history {model.history}"


def kept(history: list[tuple[int, Transition]]) -> list[tuple[int, Transition]]:
    """What a journal keeps of ``history``: every transition but the heartbeats before the newest few."""
    beats = [i for i, (_, t) in enumerate(history) if t is Transition.HEARTBEAT]
    dropped = set(beats[:-KEPT_HEARTBEATS])
    return [step for i, step in enumerate(history) if i not in dropped]


def test_random_interleavings_of_all_actors_keep_the_task_invariants(nats_server: NatsServer, namespace: str) -> None:
    loop = asyncio.new_event_loop()
    conns = [loop.run_until_complete(coord.connect(nats_server.url, namespace=namespace)) for _ in range(ACTORS)]
    try:
        TaskMachine.loop = loop
        TaskMachine.stores = [c.tasks.tuned(backoff=Backoff(base=0), visibility_tolerance=0.0) for c in conns]
        run_state_machine_as_test(
            TaskMachine,
            settings=settings(
                max_examples=60,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        for c in conns:
            loop.run_until_complete(c.close())
        loop.close()
