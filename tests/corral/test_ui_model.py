"""The dashboard's read model on its own: typed records in, bounded state and timeline out (no I/O)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from coord.deadletter import LATE_RESULT, DeadLetter
from coord.events import ReceivedEvent, TurnEnded
from coord.presence import AgentInfo
from coord.registry import Session, ThreadReservation
from coord.tasks import ClaimInfo, TaskRecord, TaskStatus, Transition
from corral.ui.model import ReadModel


def record(task_id: str, status: TaskStatus, revision: int, **fields: object) -> TaskRecord:
    now = datetime.now(UTC)
    return TaskRecord.model_validate(
        {"task_id": task_id, "queue": "q", "status": status, "created_at": now, "updated_at": now,
         "revision": revision, **fields}
    )  # fmt: skip


def claimed(task_id: str, worker: str, revision: int) -> TaskRecord:
    now = datetime.now(UTC)
    claim = ClaimInfo(worker_id=worker, claim_id=f"c-{task_id}", token_sha256="0" * 64, epoch=1, claimed_at=now,
                      deadline=now)  # fmt: skip
    return record(task_id, TaskStatus.CLAIMED, revision, claim=claim, epoch=1, attempt=1,
                  transition=Transition.CLAIMED)  # fmt: skip


def test_memory_is_bounded_forgetting_the_oldest_finished_tasks_first() -> None:
    model = ReadModel("ns", max_tasks=100, timeline=10)
    for i in range(50):
        model.apply_task(record(f"p{i}", TaskStatus.PENDING, i + 1), live=False)
    for i in range(200):
        model.apply_task(record(f"s{i:03d}", TaskStatus.SUCCEEDED, 100 + i), live=False)
    assert len(model.tasks) == 100
    assert all(f"p{i}" in model.tasks for i in range(50)), "unfinished tasks are never forgotten"
    assert "s000" not in model.tasks and "s199" in model.tasks, "the oldest finished ones go first"
    assert model.counts()["succeeded"] == 50 and model.counts()["pending"] == 50
    for i in range(30):
        model.on_joined(AgentInfo(id=f"a{i}"))
    assert len(model.timeline) == 10 and model.timeline[-1].text.startswith("a29 (agent) joined")


def test_a_reclaim_is_put_on_the_timeline_naming_the_worker_it_was_taken_from() -> None:
    model = ReadModel("ns")
    model.on_joined(AgentInfo(id="w1", role="worker", queues=["q"], capacity=2))
    model.apply_task(claimed("t1", "w1", 2))
    assert model.claims_of("w1") == 1
    model.on_left("w1", "expired", datetime.now(UTC))
    model.apply_task(
        record("t1", TaskStatus.PENDING, 3, epoch=1, attempt=1, last_worker="w1", error="worker-left:expired",
               transition=Transition.RECLAIMED)
    )  # fmt: skip
    kinds = [(item.kind, item.agent_id) for item in model.timeline]
    assert kinds == [("joined", "w1"), ("left", "w1"), ("reclaimed", "w1")]
    assert model.timeline[1].text == "w1 expired (its presence TTL ran out) holding 1 claim(s)"
    assert model.timeline[2].text == "t1 reclaimed from w1 (worker-left:expired): pending again"
    assert model.claims_of("w1") == 0
    [queue] = model.queues_json()
    assert queue["depth"] == 1 and queue["in_flight"] == 0


def test_an_older_revision_never_overwrites_a_newer_one() -> None:
    model = ReadModel("ns")
    model.apply_task(record("t1", TaskStatus.SUCCEEDED, 5, transition=Transition.COMPLETED))
    model.apply_task(record("t1", TaskStatus.PENDING, 3))
    assert model.tasks["t1"].status is TaskStatus.SUCCEEDED
    assert model.counts()["pending"] == 0


def test_a_rejected_late_result_goes_on_the_timeline_and_pages_filter_server_side() -> None:
    model = ReadModel("ns")
    model.on_dead_letter(DeadLetter(source=LATE_RESULT, reason="late result from w2 rejected", task_id="t7",
                                    at=datetime.now(UTC)))  # fmt: skip
    assert [(i.kind, i.task_id) for i in model.timeline] == [("late_result", "t7")]
    for i in range(120):
        model.apply_task(claimed(f"t{i:03d}", "w1" if i % 3 else "w2", i + 1))
    page = model.task_page(status=TaskStatus.CLAIMED, worker="w2", offset=10, limit=15)
    assert page.total == 40 and len(page.rows) == 15
    assert all(row.worker == "w2" for row in page.rows)
    assert [r.task_id for r in page.rows] == sorted((r.task_id for r in page.rows), reverse=True)


def test_a_dead_letter_or_event_read_again_by_a_restarted_feed_is_kept_once() -> None:
    model = ReadModel("ns")
    letter = DeadLetter(source="dispatch", reason="malformed", at=datetime.now(UTC))
    event = ReceivedEvent(event=TurnEnded(agent="c1", turn=1), to="p1", sender="c1", seq=4)
    for _ in range(2):
        model.on_dead_letter(letter)
        model.on_event(event)
    assert len(model.dead_letters) == 1 and len(model.events) == 1
    assert [item.kind for item in model.timeline] == ["dead_letter"]
    assert model.trees_json()[0]["nodes"][0]["last_turn"] == 1


def test_a_dead_letter_carries_the_current_status_of_its_task() -> None:
    model = ReadModel("ns")
    model.apply_task(claimed("t1", "w1", 2))
    for task_id in ("t1", "gone"):
        model.on_dead_letter(DeadLetter(source="dispatch", reason="malformed", task_id=task_id, at=datetime.now(UTC)))
    assert [(d["task_id"], d["task_status"]) for d in model.dead_letters_json()] == [("gone", None), ("t1", "claimed")]


def test_past_the_registry_bound_the_newest_sessions_and_threads_are_kept_whatever_the_arrival_order() -> None:
    model = ReadModel("ns")  # the default bound: 5,000 of each
    base = datetime(2026, 1, 1, tzinfo=UTC)
    order = list(range(7_000))
    random.Random(7).shuffle(order)  # the registry feed reads keys in no particular order of age
    for i in order:
        at = base + timedelta(seconds=i)
        model.on_session(f"session.s{i}", Session(id=f"s{i}", agent_id="a", started_at=at))
        model.on_thread(f"thread.t{i}", ThreadReservation(thread=f"t{i}", session_id=f"s{i}", agent_id="a",
                                                          reserved_at=at))  # fmt: skip
    assert set(model.sessions) == {f"s{i}" for i in range(2_000, 7_000)}
    assert set(model.threads) == {f"t{i}" for i in range(2_000, 7_000)}
    # a newer one still gets in when the model is full; an older one does not push a newer one out
    model.on_session("session.new", Session(id="new", agent_id="a", started_at=base + timedelta(days=1)))
    model.on_session("session.old", Session(id="old", agent_id="a", started_at=base - timedelta(days=1)))
    assert "new" in model.sessions and "old" not in model.sessions and "s2000" not in model.sessions
    assert len(model.sessions) == 5_000
    assert model.registry_json()["sessions"][0]["id"] == "new"
    model.on_session("session.new", None)
    assert "new" not in model.sessions and len(model.sessions) == 4_999
