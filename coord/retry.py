"""Retrying idempotent NATS calls through passing trouble: one mechanism for every layer.

A server restart, a leader election or a request lost in a reconnect shows up as a timeout, "no
responders" or a 503 from JetStream. Calls that are safe to repeat (reads, CAS writes whose outcome
is checked, publishes carrying a ``Nats-Msg-Id``) are retried with jittered exponential backoff
until a deadline, and not at all once the connection is closed for good. The first attempt runs
without any retry machinery, so the common case costs one await.

Loops that wait out trouble for as long as they run (a consumer's fetch loop, a write that checks
between attempts) take their pauses from :class:`Pauses`: the same doubling rhythm, one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_any,
    stop_before_delay,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from coord.backoff import Backoff
from coord.errors import Unavailable
from coord.permissions import permission_log

__all__ = ["TRANSIENT", "Pauses", "is_transient", "retry_transient", "retry_until_stopped"]

log = logging.getLogger("corral.retry")

T = TypeVar("T")

TRANSIENT: tuple[type[Exception], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
"""Failures that mean "the server is away for now", worth trying again."""


def is_transient(err: BaseException) -> bool:
    """True for :data:`TRANSIENT` failures and JetStream's 503 answers (no leader, no quorum)."""
    if isinstance(err, TRANSIENT):
        return True
    return isinstance(err, nats.js.errors.APIError) and err.code == 503


class _Closed(stop_base):
    """Stop once the connection is closed for good: nothing will come back."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc

    def __call__(self, retry_state: RetryCallState) -> bool:
        return bool(self.nc.is_closed)


async def retry_transient(
    call: Callable[[], Awaitable[T]],
    *,
    nc: NATS,
    within: float,
    what: str,
    subject: str | None = None,
    retry_on: Callable[[BaseException], bool] = is_transient,
) -> T:
    """Await ``call()``, retrying transient failures (:func:`is_transient`) for up to ``within`` seconds.

    Backoff starts at 50 ms and doubles to 1 s, jittered. Gives up with :class:`Unavailable` (naming
    ``what`` and the last failure) when the next wait would pass ``within`` or when ``nc`` is
    closed; any other error is raised at once. ``call`` must be idempotent. With ``subject`` (what
    ``call`` publishes to), the server refusing this connection that subject ends the call at once
    with :class:`coord.errors.PermissionDenied` instead of a wait for an answer that never comes.
    ``retry_on`` widens (or narrows) what is worth trying again (e.g. a whole write that already
    retried its own requests and gave up with :class:`Unavailable`).
    """
    if subject is None:
        return await _retry(call, nc=nc, within=within, what=what, retry_on=retry_on)
    with permission_log(nc).guard(subject):
        return await _retry(call, nc=nc, within=within, what=what, retry_on=retry_on)


async def _retry(
    call: Callable[[], Awaitable[T]], *, nc: NATS, within: float, what: str, retry_on: Callable[[BaseException], bool]
) -> T:
    try:
        return await call()
    except Exception as err:
        if not retry_on(err):
            raise
        if nc.is_closed or within <= 0:
            raise _unavailable(what, err) from err
        log.debug("%s: %s; retrying", what, err or type(err).__name__)

    def note(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        log.debug("%s: %s; retrying", what, failure or "failed")

    try:
        async for attempt in AsyncRetrying(
            stop=stop_any(stop_before_delay(within), _Closed(nc)),
            wait=wait_exponential_jitter(multiplier=0.05, max=1.0),
            retry=retry_if_exception(retry_on),
            before_sleep=note,
            reraise=True,
        ):
            with attempt:
                return await call()
    except Exception as err:
        if retry_on(err) and not isinstance(err, Unavailable):
            raise _unavailable(what, err) from err
        raise
    raise AssertionError("unreachable: tenacity re-raises the last failure")


async def retry_until_stopped(
    call: Callable[[], Awaitable[T]],
    *,
    retry: Callable[[BaseException], bool],
    stopped: Callable[[], bool],
    what: str,
    first: float = 0.1,
    longest: float = 2.0,
) -> T:
    """Await ``call()`` until it succeeds, for loops that go on until something else ends them.

    A failure that ``retry`` accepts is tried again after a jittered wait doubling from ``first`` to
    ``longest`` seconds, with no deadline; the last failure is raised once ``retry`` refuses one or
    ``stopped()`` is true (checked after each failure). ``call`` must be safe to repeat.
    """

    def note(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        log.debug("%s: %s; retrying", what, failure or "failed")

    async for attempt in AsyncRetrying(
        stop=lambda state: stopped(),
        wait=wait_exponential_jitter(multiplier=first, max=longest, jitter=first),
        retry=retry_if_exception(retry),
        before_sleep=note,
        reraise=True,
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity re-raises the last failure")


def _unavailable(what: str, err: BaseException) -> Unavailable:
    reason = str(err) or type(err).__name__
    return Unavailable(f"{what}: the NATS server did not answer ({reason})")


class Pauses:
    """The pauses of a loop that waits out trouble for as long as it runs: ``first`` seconds after the
    first failure, doubling up to ``cap`` (``jitter`` of each is random), back to ``first`` after
    :meth:`reset` (a success)."""

    def __init__(self, first: float, cap: float, *, jitter: float = 0.0) -> None:
        self._backoff = Backoff(base=first, factor=2.0, max=cap, jitter=jitter)
        self._failures = 0

    def next(self) -> float:
        """The pause to take after one more failure."""
        self._failures += 1
        return self._backoff.delay(self._failures)

    def reset(self) -> None:
        """The loop succeeded: the next failure pauses ``first`` again."""
        self._failures = 0

    async def sleep(self, stopping: asyncio.Event | None = None) -> float:
        """Take the next pause, ending early when ``stopping`` is set; returns the pause planned."""
        pause = self.next()
        if stopping is None:
            await asyncio.sleep(pause)
            return pause
        if not stopping.is_set():
            try:
                async with asyncio.timeout(pause):
                    await stopping.wait()
            except TimeoutError:
                pass
        return pause
