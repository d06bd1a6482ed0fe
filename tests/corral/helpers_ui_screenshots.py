"""Take the screenshots of docs/ui.md: `python -m tests.corral.helpers_ui_screenshots [OUT_DIR]` (default docs/).

A real fleet on an embedded nats-server: four `corral worker` processes, a `corral reclaimer`, an
agent holding presence with a reserved thread and lifecycle events, and `corral ui`. One worker is
SIGSTOPped mid-task (its claims are reclaimed; woken up, its late results are rejected), another
SIGKILLed, and some tasks die; then headless chromium photographs each view of the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

from pydantic import JsonValue

import coord
from coord.events import Errored, Progress, ScopeSubDelegated, TurnEnded
from coord.server import NatsServer
from coord.wire import Spec
from tests.conftest import ROOT
from tests.corral.helpers_ui import QUEUE, Fleet, chromium, find, until


async def _schedule(url: str, namespace: str, n: int) -> None:
    async with coord.connect(url, namespace=namespace) as conn:
        for i in range(n):
            doomed = i % 9 == 4
            payload: dict[str, JsonValue] = {"seconds": round(2.0 + (i * 37 % 31) / 10, 1)}
            if doomed:
                payload["fail_before_epoch"] = 9
            spec = Spec(task_id=f"job-{i + 1:03d}", queue=QUEUE if i % 4 else "reports", title=f"render page {i + 1}",
                        payload=payload)  # fmt: skip
            trace = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
            await conn.tasks.schedule(spec.task_id, queue=spec.queue, spec=spec.model_dump(mode="json"),
                                      max_attempts=1 if doomed else 3, meta={"traceparent": trace})  # fmt: skip


async def _lifecycle(url: str, namespace: str) -> None:
    async with coord.connect(url, namespace=namespace) as conn:
        events = conn.events
        await events.emit("planner", ScopeSubDelegated(agent="planner", sub_agent="coder-1", scope=["src/api"]))
        await events.emit("planner", ScopeSubDelegated(agent="planner", sub_agent="coder-2", scope=["src/ui"]))
        await events.emit("planner", TurnEnded(agent="coder-1", turn=3, summary="endpoints for /tasks done"))
        await events.emit("planner", Progress(agent="coder-2", message="styling the tables", fraction=0.6))
        await events.emit("planner", Errored(agent="coder-2", message="lint failed: E501 in app.js"))
        await events.emit("coder-1", ScopeSubDelegated(agent="coder-1", sub_agent="tester-1", scope=["tests/api"]))


def _finished(url: str, task_id: str | None) -> bool:
    async def go() -> bool:
        async with coord.connect(url, namespace="demo") as conn:
            return (await conn.tasks.get(task_id or "")).terminal

    return asyncio.run(go())


def main(out: Path) -> None:
    """Run the fleet and write docs/ui-*.png into ``out``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with NatsServer() as server, tempfile.TemporaryDirectory() as logs:
        fleet = Fleet(server.url, "demo", env, Path(logs))
        try:
            workers = {wid: fleet.worker(wid, concurrency=2) for wid in ("w1", "w2", "w3", "w4")}
            fleet.start("reclaimer", "reclaimer")
            fleet.start("planner", "presence", "hold", "--id", "planner", "--role", "agent")
            url = fleet.ui("--allow-actions", "--trace-url", "http://localhost:16686/trace/{trace_id}")
            time.sleep(2)
            fleet.start("reserve", "registry", "reserve", "main", "--as", "planner", "--path", "/srv/site")
            asyncio.run(_schedule(server.url, "demo", 48))
            asyncio.run(_lifecycle(server.url, "demo"))
            time.sleep(3)
            workers["w2"].send_signal(signal.SIGSTOP)
            time.sleep(4)
            workers["w3"].send_signal(signal.SIGKILL)
            time.sleep(2)
            workers["w2"].send_signal(signal.SIGCONT)
            with chromium(1440, 960) as browser:
                browser.get(url)
                until(lambda: find(browser, "#agents-table tr[data-agent]"), 20, "agents listed")
                until(lambda: find(browser, "#timeline li[data-kind=reclaimed]"), 20, "a reclaim")
                late = False
                with contextlib.suppress(AssertionError):  # the woken worker may hear of the reclaim first
                    late = bool(until(lambda: find(browser, "#timeline li[data-kind=late_result]"), 6, "a late result"))
                print(f"a rejected late result {'is' if late else 'is not'} in the pictures")
                time.sleep(1)
                browser.save_screenshot(str(out / "ui-overview.png"))
                reclaimed = find(browser, "#timeline li[data-kind=reclaimed]")[-1].get_attribute("data-task")
                until(lambda: _finished(server.url, reclaimed), 30, "the reclaimed task to finish")
                browser.get(url + f"#tasks/{reclaimed}")
                until(lambda: find(browser, "#task-detail table.attempts tbody tr"), 20, "the task detail")
                time.sleep(1.5)
                browser.save_screenshot(str(out / "ui-tasks.png"))
                browser.get(url + "#dead")
                until(lambda: find(browser, "#dead-table tr[data-status]"), 20, "dead tasks")
                time.sleep(1)
                browser.save_screenshot(str(out / "ui-dead-letters.png"))
                browser.get(url + "#events")
                until(lambda: find(browser, "#trees .treebox"), 20, "a tree")
                time.sleep(1)
                browser.save_screenshot(str(out / "ui-events.png"))
        finally:
            fleet.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs")
