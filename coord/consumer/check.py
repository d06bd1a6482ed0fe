"""A consuming process's watch over the durable consumers it pulls from: :class:`ConsumerCheck`.

Pulling from a consumer that was deleted, or re-pointed (another filter, another ack policy), yields
nothing or the wrong messages without any error. The check compares what the server has with the
configuration the caller wants, at most every ``interval`` seconds (and at once when asked, e.g. on
fetch trouble), never on every fetch:

* a missing consumer is created when this connection's credential may (a dev server without auth,
  a trusted role); otherwise the check says once which consumer is missing and what to run, and
  reports "not ready" until it exists;
* a consumer whose configuration differs is reported loudly (a warning naming every differing
  field, repeated each interval while it lasts) and "not ready" until it is right again; it is never
  changed from here (setting it back is the provisioner's act).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api

from coord.consumer.queues import create_subject, differences
from coord.errors import PermissionDenied
from coord.permissions import permission_log

__all__ = ["CHECK_INTERVAL", "ConsumerCheck"]

log = logging.getLogger("corral.consumer")

CHECK_INTERVAL = 5.0
"""Longest a consumer that was deleted or re-pointed goes unnoticed by a process pulling from it."""


class ConsumerCheck:
    """Checks that the consumers of ``configs`` in ``stream`` exist and match (see the module docstring).

    ``who`` names the process in log lines; ``fix`` is the command that sets the consumers right.
    """

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        stream: str,
        configs: Sequence[js_api.ConsumerConfig],
        *,
        who: str,
        fix: str,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self._nc = nc
        self._js = js
        self._stream = stream
        self._configs = list(configs)
        self._who = who
        self._fix = fix
        self.interval = interval
        """Seconds between two checks (unless one is asked for at once)."""
        self._checked_at = float("-inf")
        self._ready = False
        self._said_missing: set[str] = set()
        self._may_create = True
        """False once the server refused this credential a create: not asked again (no refusal every check)."""
        self._wrong: dict[str, list[str]] = {}
        self.created = 0
        """Consumers this check created."""

    @property
    def ready(self) -> bool:
        """As of the last check: every consumer exists and matches its configuration."""
        return self._ready

    def due(self) -> bool:
        """True when the last check is older than the interval."""
        return asyncio.get_running_loop().time() - self._checked_at >= self.interval

    async def check(self, *, now: bool = False) -> bool:
        """Check (if due, or ``now``) and return whether every consumer exists and matches. Transport
        trouble leaves the last answer standing (raises nothing but cancellation)."""
        if not now and not self.due():
            return self._ready
        ready = True
        for config in self._configs:
            durable = config.durable_name
            assert durable is not None
            try:
                info = await self._js.consumer_info(self._stream, durable)
            except nats.js.errors.NotFoundError:
                ready = await self._create(config) and ready
                continue
            except Exception as err:  # the server away: keep the last answer, look again soon
                log.debug("%s: could not read consumer %s: %s", self._who, durable, err)
                return self._ready
            ready = self._compare(config, info.config) and ready
        self._checked_at = asyncio.get_running_loop().time()
        self._ready = ready
        return ready

    def _compare(self, want: js_api.ConsumerConfig, have: js_api.ConsumerConfig) -> bool:
        durable = want.durable_name or ""
        wrong = differences(want, have)
        if wrong:
            self._wrong[durable] = wrong
            log.warning(
                "%s: CONSUMER %s OF STREAM %s DIFFERS FROM ITS CONFIGURATION (%s); not pulling from it until "
                "it is set back (run `%s`)",
                self._who,
                durable,
                self._stream,
                "; ".join(wrong),
                self._fix,
            )
            return False
        if self._wrong.pop(durable, None) is not None:
            log.warning("%s: consumer %s is as configured again; pulling from it", self._who, durable)
        return True

    async def _create(self, config: js_api.ConsumerConfig) -> bool:
        durable = config.durable_name or ""
        subject = create_subject(self._stream, durable)
        try:
            if not self._may_create:
                raise PermissionDenied(f"this credential may not publish to {subject}")
            with permission_log(self._nc).guard(subject):
                await self._js.add_consumer(self._stream, config)
        except PermissionDenied:
            self._may_create = False
            if durable not in self._said_missing:
                self._said_missing.add(durable)
                log.warning(
                    "%s: consumer %s is missing and this credential may not create it; waiting for it (run `%s`)",
                    self._who,
                    durable,
                    self._fix,
                )
            return False
        except Exception as err:
            log.warning("%s: could not create consumer %s: %s", self._who, durable, err)
            return False
        self.created += 1
        self._said_missing.discard(durable)
        log.info("%s: consumer %s was missing; created it", self._who, durable)
        return True
