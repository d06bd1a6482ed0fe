"""The scenarios the kit drives a worker through, in order; each returns what it saw or raises
:class:`ScenarioFailed`. docs/protocol-spec.md is the rule each one checks (named in its docstring).
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from coord.deadletter import LATE_RESULT
from coord.kv import MSG_TTL
from coord.limits.models import Rate
from coord.presence.models import decode_record
from coord.tasks import TaskRecord, TaskStatus, Transition
from coord.wire import Result
from corral.conformance.fleet import Fleet
from corral.conformance.probes import (
    claimed,
    ended,
    headers_of,
    index_matches,
    last_entry,
    submit,
    wait_for,
    wait_record,
)
from corral.conformance.rows import ScenarioFailed

__all__ = ["SCENARIOS", "Stage"]


@dataclass
class Stage:
    """What every scenario works with: the fleet (its coord connection), the queue, the timing."""

    fleet: Fleet
    queue: str
    ttl: float
    """The presence TTL the worker was given."""
    lease: float
    """The lease (task timeout) of the kit's tasks."""
    unsupported: frozenset[str]
    """Features the worker declared it does not implement."""


def _succeeded_once(record: TaskRecord, echo: object) -> str | None:
    if record.status is not TaskStatus.SUCCEEDED:
        return f"{record.task_id} ended {record.status.value} ({record.error})"
    try:
        output = Result.model_validate(record.result).output
    except ValueError as err:
        return f"{record.task_id}: the recorded result is not a `result` ({str(err).splitlines()[0]})"
    if output != echo:
        return f"{record.task_id}: result {record.result!r} does not carry output {echo!r}"
    if record.attempt != 1:
        return f"{record.task_id} took {record.attempt} attempts"
    return None


async def presence(stage: Stage) -> str:
    """Join: the value parses as a presence record, its key is the worker id, it has a Nats-TTL, role worker."""
    fleet = await stage.fleet.ensure()
    coord, worker_id = stage.fleet.coord, fleet.env.worker_id
    msg = await last_entry(coord, coord.names.presence_bucket, worker_id)
    if msg is None or not msg.data:
        raise ScenarioFailed(f"no presence value under {worker_id}")
    record, problem = decode_record(msg.data, worker_id)
    if record is None:
        raise ScenarioFailed(f"presence value does not parse: {problem}")
    problems = []
    if record.id != worker_id:
        problems.append(f"id {record.id!r} is not the key {worker_id!r}")
    if record.role != "worker":
        problems.append(f"role {record.role!r}, not 'worker'")
    if stage.queue not in record.queues:
        problems.append(f"queues {record.queues} miss {stage.queue}")
    if not headers_of(msg).get(MSG_TTL):
        problems.append(f"written without a {MSG_TTL} header")
    renewed = await wait_for(
        lambda: _renewed(stage, worker_id, msg.seq or 0), within=stage.ttl, what="presence renewed within its TTL"
    )
    if problems:
        raise ScenarioFailed("; ".join(problems))
    return f"{worker_id}: role worker, {MSG_TTL} {headers_of(msg)[MSG_TTL]}, renewed (rev {msg.seq} -> {renewed})"


async def _renewed(stage: Stage, worker_id: str, seq: int) -> int | None:
    coord = stage.fleet.coord
    msg = await last_entry(coord, coord.names.presence_bucket, worker_id)
    return msg.seq if msg is not None and (msg.seq or 0) > seq and msg.data else None


async def claims_and_completes(stage: Stage) -> str:
    """Fetch, claim, complete: every task succeeds once, its claim names the presence key, the
    writes carry a valid Corral-Index header."""
    fleet = await stage.fleet.ensure()
    coord = stage.fleet.coord
    ids = [await submit(coord, stage.queue, echo={"n": n}, lease=stage.lease) for n in range(5)]
    for n, task_id in enumerate(ids):
        record = await wait_record(coord, task_id, ended, within=20, what=f"task {n} done")
        problem = _succeeded_once(record, {"n": n})
        if problem:
            raise ScenarioFailed(problem)
        claim = next((e for e in record.journal if e.transition is Transition.CLAIMED), None)
        if claim is None or claim.worker_id != fleet.env.worker_id:
            raise ScenarioFailed(f"{task_id} was claimed as {claim and claim.worker_id!r}, not the presence key")
        msg = await last_entry(coord, coord.names.tasks_bucket, task_id)
        header = headers_of(msg).get("Corral-Index") if msg is not None else None
        if header is None:
            raise ScenarioFailed(f"{task_id}: the completing write has no Corral-Index header")
        mismatch = index_matches(header, record)
        if mismatch:
            raise ScenarioFailed(f"{task_id}: {mismatch}")
        if msg is None or not headers_of(msg).get(MSG_TTL):
            raise ScenarioFailed(f"{task_id}: the finished record was written without a {MSG_TTL} (retention)")
    return f"{len(ids)} tasks succeeded once, claims name {fleet.env.worker_id}, Corral-Index and {MSG_TTL} set"


async def lease_extended(stage: Stage) -> str:
    """Heartbeat: a task running 2.5 leases long keeps its claim (no reclaim) and succeeds at attempt 1."""
    await stage.fleet.ensure()
    coord = stage.fleet.coord
    seconds = stage.lease * 2.5
    task_id = await submit(coord, stage.queue, sleep=seconds, echo="long", lease=stage.lease)
    record = await wait_record(coord, task_id, ended, within=seconds + 20, what="long task done")
    problem = _succeeded_once(record, "long")
    if problem:
        raise ScenarioFailed(problem + " (was its lease extended?)")
    beats = sum(1 for e in record.journal if e.transition is Transition.HEARTBEAT)
    return f"{seconds:g} s task with a {stage.lease:g} s lease: {beats} heartbeats, succeeded at attempt 1"


async def poison_ignored(stage: Stage) -> str:
    """Hints are not truth: garbage, unknown tasks and forged notifications of finished tasks are
    dropped without running anything, the worker stays up and the consumer drains."""
    fleet = await stage.fleet.ensure()
    coord = stage.fleet.coord
    done = await submit(coord, stage.queue, echo="first", lease=stage.lease)
    first = await wait_record(coord, done, ended, within=20, what="task before the poison done")
    subject = coord.names.notification_subject
    poison = [
        (subject(stage.queue, "poison1"), b"not json at all"),
        (subject(stage.queue, "poison2"), b'{"task_id": "poison2", "revision": 1, "epoch": 0}'),
        (subject(stage.queue, done), f'{{"task_id": "{done}", "revision": {first.revision}, "epoch": 0}}'.encode()),
        (subject(stage.queue, "poison3"), b'{"task_id": 7}'),
    ]
    for subj, body in poison:
        await coord.js.publish(subj, body, stream=coord.names.dispatch_stream)
    after = await submit(coord, stage.queue, echo="after", lease=stage.lease)
    record = await wait_record(coord, after, ended, within=20, what="task after the poison done")
    problem = _succeeded_once(record, "after")
    if problem:
        raise ScenarioFailed(problem)
    again = await coord.tasks.get(done)
    if again.revision != first.revision:
        raise ScenarioFailed(f"a forged notification changed finished task {done} ({again.transition.value})")
    if not fleet.alive:
        raise ScenarioFailed(f"the worker exited ({fleet.returncode}) after poison notifications")
    consumer = coord.names.queue_consumer(stage.queue)
    drained = await wait_for(
        lambda: _drained(stage, consumer), within=15, what=f"consumer {consumer} drained of the poison"
    )
    return f"{len(poison)} poison notifications dropped, worker up, {drained}"


async def _drained(stage: Stage, consumer: str) -> str | None:
    coord = stage.fleet.coord
    info = await coord.js.consumer_info(coord.names.dispatch_stream, consumer)
    if info.num_pending == 0 and info.num_ack_pending == 0:
        return f"{consumer}: nothing pending or unacked"
    return None


async def cancel_reaches(stage: Stage) -> str:
    """Cancel: a cancelled running task is stopped (its slot is free for the next task at once)
    and no result is written over the cancel."""
    await stage.fleet.ensure()
    coord = stage.fleet.coord
    long = await submit(coord, stage.queue, sleep=120, echo="never", lease=stage.lease)
    await wait_record(coord, long, claimed, within=20, what="long task claimed")
    await coord.tasks.cancel(long)
    quick = await submit(coord, stage.queue, echo="next", lease=stage.lease)
    record = await wait_record(coord, quick, ended, within=10, what="next task run after the cancel (slot freed)")
    problem = _succeeded_once(record, "next")
    if problem:
        raise ScenarioFailed(problem)
    cancelled = await coord.tasks.get(long)
    if cancelled.status is not TaskStatus.CANCELLED:
        raise ScenarioFailed(f"cancelled task is {cancelled.status.value}")
    return "running task stopped on cancel; the next task ran in its slot"


async def late_result(stage: Stage) -> str:
    """SIGSTOP past the TTL: the claim is reclaimed; the resumed worker's result is refused and
    recorded as a late-result dead letter, never written over the reclaim."""
    fleet = await stage.fleet.ensure()
    coord = stage.fleet.coord
    # The handler ends (after 1 s) before its first lease extension is due (a third of the 6 s lease),
    # so the result, not a heartbeat, is the first write the resumed worker makes: it must be refused.
    task_id = await submit(coord, stage.queue, sleep=1.0, echo="late", lease=stage.lease * 3)
    first = await wait_record(coord, task_id, claimed, within=20, what="task claimed")
    fleet.signal(signal.SIGSTOP)
    try:
        if (await coord.tasks.get(task_id)).terminal:
            raise ScenarioFailed("the kit could not stop the worker before its 1 s task ended (host too slow?)")
        await wait_record(
            coord,
            task_id,
            lambda r: r.epoch > first.epoch or r.status is not TaskStatus.CLAIMED,
            within=stage.ttl + stage.lease + 5,
            what="stopped worker's claim reclaimed",
        )
        await coord.tasks.cancel(task_id)  # so that nobody runs it again: only the late result remains
    finally:
        fleet.signal(signal.SIGCONT)
    letter = await wait_for(lambda: _late_letter(stage, task_id), within=15, what="late-result dead letter recorded")
    record = await coord.tasks.get(task_id)
    if record.status is not TaskStatus.CANCELLED:
        raise ScenarioFailed(f"the late result was written: task is {record.status.value}")
    await stage.fleet.ensure()
    quick = await submit(coord, stage.queue, echo="after-stop", lease=stage.lease)
    await wait_record(coord, quick, ended, within=30, what="work taken again after the stop")
    return f"late result refused; dead letter: {letter[:80]}"


async def _late_letter(stage: Stage, task_id: str) -> str | None:
    letters = await stage.fleet.coord.dead_letters.read(LATE_RESULT, limit=1000)
    return next((f"{d.reason}" for d in letters if d.task_id == task_id), None)


async def killed_reclaimed(stage: Stage) -> str:
    """SIGKILL: the claim of a killed worker is reclaimed within its presence TTL (plus the
    reclaimer's sweep), and the worker restarted by the supervisor takes work again."""
    fleet = await stage.fleet.ensure()
    coord = stage.fleet.coord
    task_id = await submit(coord, stage.queue, sleep=120, echo="killed", lease=stage.ttl * 10)
    first = await wait_record(coord, task_id, claimed, within=20, what="task claimed")
    killed_at = datetime.now(UTC)
    fleet.signal(signal.SIGKILL)
    bound = stage.ttl + 2.0
    # The restarted worker may claim the task again at once: the reclaim is read from the journal.
    await wait_record(
        coord,
        task_id,
        lambda r: r.epoch > first.epoch or r.status is not TaskStatus.CLAIMED,
        within=bound,
        what="killed worker's claim reclaimed",
    )
    record = await coord.tasks.get(task_id)
    reclaims = [e for e in record.journal if e.transition is Transition.RECLAIMED and e.epoch == first.epoch]
    if not reclaims:
        raise ScenarioFailed(f"the killed worker's claim ended by {record.transition.value}, not by a reclaim")
    took = (reclaims[0].at - killed_at).total_seconds()
    await coord.tasks.cancel(task_id)
    await fleet.wait(5.0)
    await stage.fleet.ensure()
    quick = await submit(coord, stage.queue, echo="restarted", lease=stage.lease)
    await wait_record(coord, quick, ended, within=30, what="restarted worker took work")
    return f"reclaimed {took:.2f} s after SIGKILL (TTL {stage.ttl:g} s); the restarted worker took work"


async def priorities_served(stage: Stage) -> str:
    """Priorities: a high and a low task (notified on `qhigh-` and `qlow-`) are run too."""
    if "priorities" in stage.unsupported:
        raise NotImplementedError("declared unsupported (--unsupported priorities): high and low tasks wait for others")
    await stage.fleet.ensure()
    coord = stage.fleet.coord
    ids = [await submit(coord, stage.queue, echo=level, lease=stage.lease, priority=level) for level in ("high", "low")]
    for task_id, level in zip(ids, ("high", "low"), strict=True):
        record = await wait_record(coord, task_id, ended, within=20, what=f"{level} priority task done")
        problem = _succeeded_once(record, level)
        if problem:
            raise ScenarioFailed(problem)
    return "a high and a low task ran (qhigh- and qlow- served)"


async def limits_respected(stage: Stage) -> str:
    """Limits: with a rate of 1 start per second on the queue, 3 tasks start at least ~1 s apart."""
    if "limits" in stage.unsupported:
        raise NotImplementedError("declared unsupported (--unsupported limits): limits are then not enforced")
    await stage.fleet.ensure()
    coord = stage.fleet.coord
    await coord.limits.set(stage.queue, rate=Rate(count=1, per="s"))
    try:
        ids = [await submit(coord, stage.queue, echo=n, lease=stage.lease) for n in range(3)]
        records = [await wait_record(coord, t, ended, within=30, what="rate-limited task done") for t in ids]
    finally:
        await coord.limits.set(stage.queue, rate=None)
    starts = sorted(e.at for r in records for e in r.journal if e.transition is Transition.CLAIMED)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    if len(starts) != 3 or min(gaps) < 0.75:
        raise ScenarioFailed(f"3 tasks under 1 start/s started {gaps} s apart")
    return f"rate 1/s: starts {', '.join(f'{g:.2f}' for g in gaps)} s apart"


Scenario = Callable[[Stage], Awaitable[str]]

SCENARIOS: list[tuple[str, Scenario]] = [
    ("presence", presence),
    ("claim-complete", claims_and_completes),
    ("lease-extended", lease_extended),
    ("poison-ignored", poison_ignored),
    ("cancel", cancel_reaches),
    ("priorities", priorities_served),
    ("limits", limits_respected),
    ("late-result", late_result),
    ("sigkill-reclaimed", killed_reclaimed),
]
"""Every scenario, by its row name, in the order the kit runs them."""
