"""The generative adversary: hostile writes into every key space and subject while a real fleet runs.

One test per target of the coverage table (tests/adversary/table.py, derived from coord.naming): a
fresh fleet (tests/adversary/fleet.py) in its own namespace; hypothesis draws hostile writes for the
target, the adversary makes them, and after each example an honest task, event and mail message must
get through; after the last, every invariant is checked: every loop alive, every honest task finished
exactly once within its bound, no slot held past its bound, no honest task stranded pending, memory
bounded.

Hypothesis runs unseeded, so every run draws new values (the seed rotates); the explicit examples
below pin the classes known to have broken something. ``CORRAL_ADVERSARY_EXAMPLES`` sets the examples
per target (default 15); ``CORRAL_ADVERSARY_SHRINK=1`` lets hypothesis shrink a failure to its smallest
hostile value (slow: each step re-runs probes against the live fleet; off in CI).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings

from coord.server import NatsServer
from tests.adversary.fleet import Fleet, InvariantBroken
from tests.adversary.hostile import FAR_FUTURE, FAR_PAST, HONEST, PLACEHOLDER, QUEUE, Write, dumps, padded
from tests.adversary.table import TARGETS, Target

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(150),
    # The fleet's own loop (another thread) draws from `random` (backoff jitter) while hypothesis generates.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

EXAMPLES = int(os.environ.get("CORRAL_ADVERSARY_EXAMPLES", "15"))
SHRINK = os.environ.get("CORRAL_ADVERSARY_SHRINK") == "1"
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, *([Phase.shrink] if SHRINK else [])]

# --- the invariants known to fail on this branch today -----------------------------------------------
# target → the invariants that break under it, each with the defect of issue 20 whose fix it waits for.
# Strict: the test fails the moment every listed defect is fixed; then the line is to be removed.
KNOWN_FAILURES: dict[str, list[tuple[type[InvariantBroken], str]]] = {}


# --- explicit examples: the hostile classes that broke something once ---------------------------------
def _kv(bucket: str, key: str, body: bytes) -> list[Write]:
    return [Write("kv", key, body, bucket=bucket)]


NOT_A_TASK = "hx"
"""A task id no record has."""

NEAR_LIMIT_TASK = {
    "task_id": "",
    "queue": QUEUE,
    "status": "pending",
    "spec": "",
    "created_at": "2026-01-01T00:00:00+00:00",
    "updated_at": "2026-01-01T00:00:00+00:00",
}
"""A pending task whose record fits just below the size limit once its spec is padded (``short`` bytes
short of it: at 100, its claim does not fit)."""


def _near_limit(short: int) -> list[Write]:
    key = f"hbig{short}"
    notice = dumps({"task_id": key, "revision": 0, "epoch": 0})
    return [
        Write("kv", key, padded({**NEAR_LIMIT_TASK, "task_id": key}, "spec", -short), bucket="tasks_bucket"),
        Write("stream", PLACEHOLDER.notification_subject(QUEUE, key), notice),
    ]


EXPLICIT: dict[str, list[list[Write]]] = {
    "tasks": [_near_limit(100)],
    "limits": [
        _kv("limits_bucket", f"rate.{QUEUE}", b'{"tat": NaN, "recent": 0.0, "at": 0.0}'),
        _kv(
            "limits_bucket",
            f"slot.{QUEUE}.1",
            dumps({"task_id": NOT_A_TASK, "epoch": 1, "worker_id": "gh", "at": FAR_FUTURE}),
        ),
        _kv(
            "limits_bucket",
            f"slot.{QUEUE}.00",
            dumps({"task_id": NOT_A_TASK, "epoch": 1, "worker_id": "gh", "at": FAR_PAST}),
        ),
    ],
    "dispatch": [
        [
            Write(
                "stream",
                PLACEHOLDER.notification_subject(QUEUE, HONEST),
                dumps({"task_id": HONEST, "revision": 1, "epoch": 0, "visible_at": FAR_FUTURE}),
            )
        ],
        [Write("stream", f"{PLACEHOLDER.dispatch_subjects[:-2]}.{QUEUE}", b"{}")],
    ],
}


def _known(target: Target) -> list[pytest.MarkDecorator]:
    if target.name not in KNOWN_FAILURES:
        return []
    known = KNOWN_FAILURES[target.name]
    reason = "; ".join(f"{invariant.__name__}: {defect}" for invariant, defect in known)
    return [pytest.mark.xfail(strict=True, raises=tuple(invariant for invariant, _ in known), reason=reason)]


@pytest.mark.parametrize("target", [pytest.param(t, id=t.name, marks=_known(t)) for t in TARGETS])
def test_the_fleet_keeps_its_invariants_under_hostile_writes(
    target: Target, nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    with Fleet(nats_server.url, namespace, subprocess_env) as fleet:
        fleet.run(fleet.probe())  # healthy before the attack

        def attack(writes: list[Write]) -> None:
            fleet.run(fleet.write(writes))
            fleet.run(fleet.probe())

        test: Callable[..., Any] = attack
        for writes in EXPLICIT.get(target.name, []):
            test = example(writes=writes)(test)
        test = given(writes=target.strategy)(test)
        test = settings(
            max_examples=EXAMPLES,
            deadline=None,
            phases=PHASES,
            database=None,
            report_multiple_bugs=False,
            suppress_health_check=list(HealthCheck),
        )(test)
        test()
        fleet.run(fleet.check())
        assert fleet.written + sum(fleet.refused.values()) > 0, "the adversary wrote nothing"
