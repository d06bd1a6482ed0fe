"""``coord.retry.retry_until_stopped``: the one retry for loops that go on until something else ends them."""

from __future__ import annotations

import time

import pytest

from coord.retry import retry_until_stopped


class Flaky:
    """Fails ``failures`` times with ``error``, then returns how many calls it took."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.at: list[float] = []

    async def __call__(self) -> int:
        self.calls += 1
        self.at.append(time.monotonic())
        if self.calls <= self.failures:
            raise self.error
        return self.calls


async def test_retries_accepted_failures_with_growing_waits_until_it_succeeds() -> None:
    call = Flaky(4, ConnectionError("down"))
    result = await retry_until_stopped(
        call,
        retry=lambda err: isinstance(err, ConnectionError),
        stopped=lambda: False,
        what="t",
        first=0.02,
        longest=0.2,
    )
    assert result == 5
    gaps = [b - a for a, b in zip(call.at, call.at[1:], strict=False)]
    assert all(gap >= 0.02 for gap in gaps), gaps
    assert gaps[-1] > gaps[0], f"the waits do not grow: {gaps}"
    assert max(gaps) < 0.2 + 0.02 + 0.1, f"a wait passed the longest (plus jitter): {gaps}"


async def test_a_refused_failure_is_raised_at_once() -> None:
    call = Flaky(3, KeyError("bad"))
    with pytest.raises(KeyError):
        await retry_until_stopped(call, retry=lambda err: isinstance(err, OSError), stopped=lambda: False, what="t")
    assert call.calls == 1


async def test_once_stopped_the_last_failure_is_raised() -> None:
    call = Flaky(100, ConnectionError("down"))
    with pytest.raises(ConnectionError):
        await retry_until_stopped(
            call, retry=lambda err: True, stopped=lambda: call.calls >= 3, what="t", first=0.01, longest=0.02
        )
    assert call.calls == 3
