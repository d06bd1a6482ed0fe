"""Ticks across daylight-saving changes, on a fake clock (the tick functions take ``now``).

Each case lists every tick of one expression in a three-hour window around a transition, in the
zone's wall clock: the behaviour docs/schedules.md states. For every instant of the window (each
minute, and a second either side of each tick) ``next_tick`` must be the first listed tick after it
and ``previous_tick`` the last one at or before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coord.schedules import Schedule, TaskTemplate, next_tick, previous_tick


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def quarters(start: str, end: str) -> list[str]:
    """Every quarter hour of elapsed time from ``start`` to ``end`` (inclusive), as UTC instants."""
    first, last = utc(start), utc(end)
    return [
        (first + timedelta(minutes=15 * i)).isoformat() for i in range(int((last - first) / timedelta(minutes=15)) + 1)
    ]


@dataclass(frozen=True)
class Case:
    zone: str
    cron: str
    window: tuple[str, str]
    ticks: list[str]  # every tick in the window, local wall clock with its offset

    def __str__(self) -> str:
        return f"{self.zone} {self.cron!r} from {self.window[0]}"


# Europe/Paris: 2025-03-30 02:00 CET -> 03:00 CEST (01:00Z); 2025-10-26 03:00 CEST -> 02:00 CET (01:00Z).
# America/New_York: 2025-03-09 02:00 EST -> 03:00 EDT (07:00Z); 2025-11-02 02:00 EDT -> 01:00 EST (06:00Z).
# Australia/Sydney (southern): 2025-04-06 03:00 AEDT -> 02:00 AEST (04-05 16:00Z);
#   2025-10-05 02:00 AEST -> 03:00 AEDT (10-04 16:00Z). Asia/Kolkata: no daylight saving.
PARIS_FALL = ("2025-10-25T23:31:00+00:00", "2025-10-26T02:29:00+00:00")
PARIS_SPRING = ("2025-03-29T23:31:00+00:00", "2025-03-30T02:29:00+00:00")
NY_FALL = ("2025-11-02T04:31:00+00:00", "2025-11-02T07:29:00+00:00")
NY_SPRING = ("2025-03-09T05:31:00+00:00", "2025-03-09T08:29:00+00:00")
SYDNEY_FALL = ("2025-04-05T14:31:00+00:00", "2025-04-05T17:29:00+00:00")
SYDNEY_SPRING = ("2025-10-04T14:31:00+00:00", "2025-10-04T17:29:00+00:00")
KOLKATA = ("2025-10-25T20:01:00+00:00", "2025-10-25T22:59:00+00:00")

CASES = [
    # The repeated hour: a fixed time fires once, in the first pass; an interval keeps to elapsed time
    # (an hourly job fires in both passes).
    Case("Europe/Paris", "30 2 * * *", PARIS_FALL, ["2025-10-26T02:30:00+02:00"]),
    Case(
        "Europe/Paris",
        "0 * * * *",
        PARIS_FALL,
        ["2025-10-26T02:00:00+02:00", "2025-10-26T02:00:00+01:00", "2025-10-26T03:00:00+01:00"],
    ),
    Case(
        "Europe/Paris", "*/15 * * * *", PARIS_FALL, quarters("2025-10-25T23:45:00+00:00", "2025-10-26T02:15:00+00:00")
    ),
    Case("America/New_York", "30 1 * * *", NY_FALL, ["2025-11-02T01:30:00-04:00"]),
    Case(
        "America/New_York",
        "0 * * * *",
        NY_FALL,
        ["2025-11-02T01:00:00-04:00", "2025-11-02T01:00:00-05:00", "2025-11-02T02:00:00-05:00"],
    ),
    Case(
        "America/New_York", "*/15 * * * *", NY_FALL, quarters("2025-11-02T04:45:00+00:00", "2025-11-02T07:15:00+00:00")
    ),
    Case("Australia/Sydney", "30 2 * * *", SYDNEY_FALL, ["2025-04-06T02:30:00+11:00"]),
    Case(
        "Australia/Sydney",
        "0 * * * *",
        SYDNEY_FALL,
        ["2025-04-06T02:00:00+11:00", "2025-04-06T02:00:00+10:00", "2025-04-06T03:00:00+10:00"],
    ),
    Case(
        "Australia/Sydney",
        "*/15 * * * *",
        SYDNEY_FALL,
        quarters("2025-04-05T14:45:00+00:00", "2025-04-05T17:15:00+00:00"),
    ),
    # The skipped hour: a fixed time inside it fires once, right after the jump; an interval keeps
    # to elapsed time (the wall-clock times that do not exist are not made up).
    Case("Europe/Paris", "30 2 * * *", PARIS_SPRING, ["2025-03-30T03:00:00+02:00"]),
    Case(
        "Europe/Paris",
        "0 * * * *",
        PARIS_SPRING,
        ["2025-03-30T01:00:00+01:00", "2025-03-30T03:00:00+02:00", "2025-03-30T04:00:00+02:00"],
    ),
    Case(
        "Europe/Paris", "*/15 * * * *", PARIS_SPRING, quarters("2025-03-29T23:45:00+00:00", "2025-03-30T02:15:00+00:00")
    ),
    Case("America/New_York", "30 2 * * *", NY_SPRING, ["2025-03-09T03:00:00-04:00"]),
    Case(
        "America/New_York",
        "0 * * * *",
        NY_SPRING,
        ["2025-03-09T01:00:00-05:00", "2025-03-09T03:00:00-04:00", "2025-03-09T04:00:00-04:00"],
    ),
    Case(
        "America/New_York",
        "*/15 * * * *",
        NY_SPRING,
        quarters("2025-03-09T05:45:00+00:00", "2025-03-09T08:15:00+00:00"),
    ),
    Case("Australia/Sydney", "30 2 * * *", SYDNEY_SPRING, ["2025-10-05T03:00:00+11:00"]),
    Case(
        "Australia/Sydney",
        "0 * * * *",
        SYDNEY_SPRING,
        ["2025-10-05T01:00:00+10:00", "2025-10-05T03:00:00+11:00", "2025-10-05T04:00:00+11:00"],
    ),
    Case(
        "Australia/Sydney",
        "*/15 * * * *",
        SYDNEY_SPRING,
        quarters("2025-10-04T14:45:00+00:00", "2025-10-04T17:15:00+00:00"),
    ),
    # No daylight saving: nothing special, the wall clock is five and a half hours ahead.
    Case("Asia/Kolkata", "30 2 * * *", KOLKATA, ["2025-10-26T02:30:00+05:30"]),
    Case(
        "Asia/Kolkata",
        "0 * * * *",
        KOLKATA,
        ["2025-10-26T02:00:00+05:30", "2025-10-26T03:00:00+05:30", "2025-10-26T04:00:00+05:30"],
    ),
    Case("Asia/Kolkata", "*/15 * * * *", KOLKATA, quarters("2025-10-25T20:15:00+00:00", "2025-10-25T22:45:00+00:00")),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_next_and_previous_tick_follow_the_stated_rules_at_every_instant_of_a_transition(case: Case) -> None:
    start, end = utc(case.window[0]), utc(case.window[1])
    ticks = sorted(utc(t) for t in case.ticks)
    assert all(start < t < end for t in ticks), case
    instants = {start + timedelta(minutes=m) for m in range(int((end - start) / timedelta(minutes=1)))}
    instants |= {t + timedelta(seconds=d) for t in ticks for d in (-1, 0, 1)}
    for now in sorted(instants):
        later = [t for t in ticks if t > now]
        upcoming = next_tick(case.cron, case.zone, now)
        assert upcoming is not None and upcoming > now, (str(case), now, upcoming)
        if later:
            assert upcoming == later[0], (str(case), now, upcoming)
        else:
            assert upcoming >= end, (str(case), now, upcoming)
        earlier = [t for t in ticks if t <= now]
        due = previous_tick(case.cron, case.zone, now)
        assert due is not None and due <= now, (str(case), now, due)
        if earlier:
            assert due == earlier[-1], (str(case), now, due)
        else:
            assert due < start, (str(case), now, due)


def test_the_reported_repeated_hour_gives_a_next_tick_in_the_future_and_the_tick_of_that_night_as_previous() -> None:
    # issue 21: at 01:05 UTC on 2025-10-26 (02:05 CET, the second pass) the next tick was 00:30 UTC, already past.
    now = utc("2025-10-26T01:05:00+00:00")
    assert next_tick("30 2 * * *", "Europe/Paris", now) == utc("2025-10-27T02:30:00+01:00")
    assert previous_tick("30 2 * * *", "Europe/Paris", now) == utc("2025-10-26T02:30:00+02:00")


TRANSITIONS = [utc(t) for t in ("2025-10-26T01:00:00+00:00", "2025-03-30T01:00:00+00:00")]
TRANSITIONS += [utc(t) for t in ("2025-11-02T06:00:00+00:00", "2025-03-09T07:00:00+00:00")]
TRANSITIONS += [utc(t) for t in ("2025-04-05T16:00:00+00:00", "2025-10-04T16:00:00+00:00")]
TRANSITIONS += [utc("2025-04-05T15:00:00+00:00"), utc("2025-10-04T15:30:00+00:00")]  # Lord Howe: half an hour
ZONES = ["Europe/Paris", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "Australia/Lord_Howe", "UTC"]
EXPRESSIONS = [
    "30 2 * * *",
    "30 1 * * *",
    "0 3 * * *",
    "*/15 * * * *",
    "0 * * * *",
    "30 * * * *",
    "15,45 1-3 * * *",
    "0-59/7 2 * * *",
    "0 */2 * * *",
    "*/20 * * * * *",
    "0 0 * * 0",
]


@st.composite
def instants(draw: st.DrawFn) -> datetime:
    """Mostly within three hours of a transition (where the rules bend), sometimes anywhere in 2020-2030."""
    if draw(st.booleans()):
        base = draw(st.sampled_from(TRANSITIONS))
        return base + timedelta(
            seconds=draw(st.integers(-3 * 3600, 3 * 3600)), microseconds=draw(st.integers(0, 999_999))
        )
    return utc("2020-01-01T00:00:00+00:00") + timedelta(seconds=draw(st.integers(0, 10 * 365 * 86400)))


@settings(max_examples=300, deadline=None)
@given(
    expression=st.sampled_from(EXPRESSIONS),
    zone=st.sampled_from(ZONES),
    first=instants(),
    gap=st.integers(0, 4 * 3600),
)
def test_for_any_instant_next_is_after_previous_is_not_and_both_are_monotone(
    expression: str, zone: str, first: datetime, gap: int
) -> None:
    second = first + timedelta(seconds=gap)
    ups = [next_tick(expression, zone, t) for t in (first, second)]
    dues = [previous_tick(expression, zone, t) for t in (first, second)]
    assert None not in ups and None not in dues
    (up1, up2), (due1, due2) = ups, dues
    assert up1 is not None and up2 is not None and due1 is not None and due2 is not None
    assert up1 > first and up2 > second
    assert due1 <= first and due2 <= second
    assert up1 <= up2 and due1 <= due2
    # the two agree on what a tick is: no tick between the previous and the next
    assert previous_tick(expression, zone, up1) == up1
    assert next_tick(expression, zone, due1) == up1


def test_schedules_ls_shows_a_next_tick_in_the_future_in_the_repeated_hour() -> None:
    # issue 21: `corral schedules ls` showed the next tick "…s ago" (Schedule.upcoming is what it prints)
    schedule = Schedule(
        name="night",
        cron="30 2 * * *",
        timezone="Europe/Paris",
        task=TaskTemplate(),
        since=utc("2025-10-20T00:00:00+00:00"),
        last_tick=utc("2025-10-26T00:30:00+00:00"),
    )
    now = utc("2025-10-26T01:05:00+00:00")
    assert schedule.upcoming(now) == utc("2025-10-27T01:30:00+00:00")
