"""Run the whole kit against one worker command: server, namespace, consumers, reclaimer, scenarios."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import coord
from coord.consumer import create_queue_consumers
from coord.ids import new_id
from coord.server import NatsServer
from corral.conformance.fleet import Fleet
from corral.conformance.process import WorkerEnv
from corral.conformance.rows import Outcome, Row, ScenarioFailed
from corral.conformance.scenarios import SCENARIOS, Stage
from dispatch.reclaimer import Reclaimer

__all__ = ["FEATURES", "KitConfig", "run_kit"]

FEATURES = frozenset({"limits", "priorities"})
"""What a worker may declare unsupported (``--unsupported``): the row then says so instead of failing."""

SCENARIO_WITHIN = 120.0
"""Seconds any one scenario may take before it fails as stuck."""


@dataclass(frozen=True)
class KitConfig:
    """How to run the kit: the worker command, its timing, what it declared unsupported, where to log."""

    command: list[str]
    ttl: float = 2.0
    """Presence TTL handed to the worker (``CORRAL_PRESENCE_TTL``)."""
    interval: float = 0.5
    """Presence renewal interval handed to the worker (``CORRAL_PRESENCE_INTERVAL``)."""
    lease: float = 2.0
    """Lease (task timeout) of the kit's tasks."""
    unsupported: frozenset[str] = frozenset()
    only: tuple[str, ...] = ()
    """Run only these scenarios (empty: all)."""
    log_dir: Path | None = None
    """Where the worker's output goes (default: a fresh temporary directory)."""
    queue: str = field(default_factory=lambda: new_id("cq").replace("-", ""))


class _QuietRefusals(logging.Filter):
    """Drops the warning of the kit's reclaimer being refused a control publish: it is the kit's design."""

    def __init__(self, namespace: str) -> None:
        super().__init__()
        self._subject = f"'{namespace}.control."

    def filter(self, record: logging.LogRecord) -> bool:
        return self._subject not in record.getMessage()


async def run_kit(config: KitConfig) -> list[Row]:
    """Run every scenario against ``config.command`` on a private nats-server; the rows in order.

    A scenario that raises anything other than a rule broken is a failure too (with its error); the
    worker is stopped and the server removed whatever happens.
    """
    log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="corral-conformance-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "worker.log"
    namespace = new_id("conf").replace("-", "")[:20]
    quiet_refusals = _QuietRefusals(namespace)
    logging.getLogger("corral.connection").addFilter(quiet_refusals)
    try:
        return await _kit(config, namespace, log)
    finally:
        logging.getLogger("corral.connection").removeFilter(quiet_refusals)


async def _kit(config: KitConfig, namespace: str, log: Path) -> list[Row]:
    with NatsServer(config_extra=_users(namespace)) as server:
        async with (
            coord.connect(server.url, namespace=namespace) as conn,
            coord.connect(server.url, namespace=namespace, user=QUIET, password=QUIET) as quiet,
        ):
            await create_queue_consumers(conn.nc, conn.js, conn.names, config.queue)  # as a provisioner does
            env = WorkerEnv(server.url, namespace, config.queue, new_id("w"), config.ttl, config.interval)
            fleet = Fleet(conn, config.command, env, log)
            stage = Stage(fleet, config.queue, config.ttl, config.lease, config.unsupported)
            rows: list[Row] = []
            async with Reclaimer(quiet, sweep_interval=0.25):
                try:
                    for name, scenario in SCENARIOS:
                        if config.only and name not in config.only:
                            continue
                        rows.append(await _run(name, scenario(stage)))
                finally:
                    await fleet.stop()
    return rows


QUIET = "kit-reclaimer"
"""User (and password) of the kit's reclaimer: it may not publish on ``{ns}.control.>``."""


def _users(namespace: str) -> str:
    """Server authorization: anyone without credentials (the worker, the kit) may do anything; the
    kit's reclaimer may not tell a worker on its control subject that its claim was taken, so a
    worker learns of a reclaim only from the record (its next write), which makes the late-result
    scenario deterministic: control messages are hints a worker must not depend on."""
    deny = f'"{namespace}.control.>"'
    return (
        "\nauthorization {\n  users = [\n    {user: open, password: open}\n"
        f"    {{user: {QUIET}, password: {QUIET}, permissions: {{publish: {{deny: [{deny}]}}}}}}\n  ]\n}}\n"
        "no_auth_user: open\n"
    )


async def _run(name: str, scenario: object) -> Row:
    started = time.monotonic()
    assert asyncio.iscoroutine(scenario)
    try:
        detail = await asyncio.wait_for(scenario, SCENARIO_WITHIN)
        outcome = Outcome.PASS
    except ScenarioFailed as err:
        detail, outcome = str(err), Outcome.FAIL
    except NotImplementedError as err:
        detail, outcome = str(err), Outcome.UNSUPPORTED
    except TimeoutError:
        detail, outcome = f"stuck for {SCENARIO_WITHIN:g} s", Outcome.FAIL
    except Exception as err:
        detail, outcome = f"{type(err).__name__}: {err}", Outcome.FAIL
    return Row(name, outcome, detail, time.monotonic() - started)
