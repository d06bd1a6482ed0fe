"""`corral demo-agents`: AI agents coordinating through `corral mcp`, each a real MCP server process.

Three agents, each a ``corral mcp`` process driven over stdio by the official MCP client (as an
agent harness drives it): ``lead`` submits tasks and waits for them; ``builder-1`` and
``builder-2`` claim and complete them. ``builder-2`` is SIGKILLed while it holds a claim: its
presence lapses, the claim is reclaimed and ``builder-1`` finishes the task. ``builder-1`` mails
``lead``, whose long-poll read is woken by the message, and ``lead``'s thread reservation is
refused to ``builder-1`` while ``lead`` lives. Every step is one MCP tool call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import typer
from mcp import Client, StdioServerParameters

from coord.ids import new_id
from coord.server import DURABLE_SYNC, NatsServer
from coord.validation import Bound
from corral.cli._bounds import bounded
from corral.cli._common import console, options, print_json, run
from corral.cli._errors import CliError

QUEUE = "agents"
TTL = 2.0
"""Presence TTL of the agents (s): the killed one's claim is back within about this much."""


def register(app: typer.Typer) -> None:
    """Add ``demo-agents`` to ``app``."""
    app.command("demo-agents")(demo_agents)


@contextlib.asynccontextmanager
async def _agent(url: str, namespace: str, agent_id: str, *args: str) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "corral", "--server", url, "--namespace", namespace, "mcp", "--agent-id", agent_id, *args],
        env={**os.environ, "CORRAL_PRESENCE_TTL": str(TTL), "CORRAL_PRESENCE_INTERVAL": "0.5"},
    )
    async with Client(params) as client:
        yield client


@contextlib.asynccontextmanager
async def _quietly_closed() -> AsyncIterator[contextlib.AsyncExitStack]:
    """A stack for the agent the demo kills: its stdio ends abruptly, which closing it reports."""
    stack = contextlib.AsyncExitStack()
    try:
        yield stack
    finally:
        with contextlib.suppress(Exception, BaseExceptionGroup):
            await stack.aclose()


async def _call(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        block = result.content[0] if result.content else None
        raise CliError(f"{tool}: {getattr(block, 'text', 'failed')}")
    content = result.structured_content
    return content["result"] if isinstance(content, dict) and set(content) == {"result"} else content


async def _demo(url: str | None, tasks: int, as_json: bool) -> int:
    def say(text: str) -> None:
        if not as_json:
            console.print(text, highlight=False)

    namespace = new_id("agents").replace("-", "")[:20]
    with contextlib.ExitStack() as servers:
        if url is None:
            url = servers.enter_context(NatsServer(sync_interval=DURABLE_SYNC)).url
        started = time.monotonic()
        async with contextlib.AsyncExitStack() as stack, _quietly_closed() as doomed:
            lead = await stack.enter_async_context(_agent(url, namespace, "lead", "--harness", "demo"))
            one = await stack.enter_async_context(_agent(url, namespace, "builder-1"))
            two = await doomed.enter_async_context(_agent(url, namespace, "builder-2"))
            present = sorted(a["info"]["id"] for a in (await _call(lead, "fleet_list"))["agents"])
            say(f"agents present: {', '.join(present)}")
            ids = [(await _call(lead, "task_submit", queue=QUEUE, payload={"n": n}))["task_id"] for n in range(tasks)]
            say(f"lead submitted {tasks} tasks to queue {QUEUE!r}")
            waiting = asyncio.create_task(_call(lead, "task_wait", task_ids=ids, timeout=120))

            held = await _call(two, "task_claim", queue=QUEUE, wait=10)
            pid = (await _call(lead, "fleet_agent", agent_id="builder-2"))["info"]["pid"]
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            say(f"builder-2 claimed {held['task']['task_id']} and was SIGKILLed while holding it")

            reclaimed_after: float | None = None
            done = 0
            give_up = time.monotonic() + 90
            while done < tasks:
                if time.monotonic() > give_up:
                    raise CliError(f"builder-1 finished {done} of {tasks} tasks in 90 s")
                claim = await _call(one, "task_claim", queue=QUEUE, wait=10)
                if claim is None:
                    continue
                task = claim["task"]
                if task["task_id"] == held["task"]["task_id"]:
                    reclaimed_after = time.monotonic() - killed
                    say(f"builder-1 took over {task['task_id']} {reclaimed_after:.2f}s after the kill")
                n = task["payload"]["n"]
                await _call(one, "task_complete", task_id=task["task_id"], output={"square": n * n})
                done += 1
            waited = await waiting
            squares = sorted(t["result"]["output"]["square"] for t in waited["finished"])
            say(f"lead's wait returned {len(waited['finished'])} results: {squares}")

            async def read() -> tuple[Any, float]:
                return await _call(lead, "mail_read", wait=10), time.monotonic()

            reading = asyncio.create_task(read())  # a long poll: woken by the message itself
            await asyncio.sleep(0.2)
            sent = time.monotonic()
            await _call(one, "mail_send", to_agent="lead", body="all tasks done", wait=0)
            inbox, answered = await reading
            woke = answered - sent
            say(f"lead's read woken by builder-1's mail in {woke * 1000:.0f} ms: {inbox['messages'][0]['body']!r}")

            await _call(lead, "thread_reserve", thread="release")
            refused = await _call(one, "thread_reserve", thread="release")
            say(f"thread 'release': lead holds it; builder-1 gets {refused['state']!r} (owner {refused['owner']})")
        summary = {
            "tasks": tasks,
            "results": len(waited["finished"]),
            "unfinished": len(waited["unfinished"]),
            "killed_claim_taken_over_s": reclaimed_after,
            "presence_ttl_s": TTL,
            "mail_wake_ms": round(woke * 1000, 1),
            "thread_refused_owner": refused["owner"],
            "elapsed_s": round(time.monotonic() - started, 2),
        }
    if as_json:
        print_json(summary)
    else:
        console.print_json(json.dumps(summary))
    return 0 if summary["unfinished"] == 0 and reclaimed_after is not None else 1


def demo_agents(
    ctx: typer.Context,
    tasks: Annotated[
        int, typer.Option("--tasks", "-M", callback=bounded(Bound(2, 100, integer=True)), help="Tasks lead submits.")
    ] = 6,
    json_out: Annotated[bool, typer.Option("--json", help="Print only the summary, as JSON.")] = False,
) -> None:
    """AI agents coordinating through `corral mcp` (each a real MCP server process), one SIGKILLed mid-claim.

    Runs on an embedded NATS; with the global --server (or CORRAL_URL) it uses that one, in a fresh
    namespace.
    """
    opts = options(ctx)
    raise typer.Exit(run(_demo(opts.server if opts.server_given else None, tasks, json_out)))
