"""The task tools: as a parent (submit, status, wait, cancel, list) and as a worker (claim, heartbeat, complete).

Parent tools go through this agent's :class:`dispatch.Dispatcher`; a claim through the worker intake
(:mod:`corral.mcp.work`), heartbeats and outcomes through the task store's compare-and-sets. The
claim token stays in this process: the agent names a task, and only a task this agent holds a
current claim on can be heartbeated or completed.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field, JsonValue

from coord.errors import InvalidInput, NotFound, StaleClaim
from coord.ids import Token
from coord.priority import Priority
from coord.tasks import TaskStatus
from coord.wire import MAX_DELAY, Result, ResultError, ResultKind, TaskInput
from corral.mcp.models import ClaimView, TaskList, TaskView, Waited
from corral.mcp.session import TASKS_URI, AgentSession
from corral.mcp.tools_agents import MAX_WAIT, Wait

__all__ = ["register"]

Ids = Annotated[list[Token], Field(min_length=1, max_length=100)]


def register(server: MCPServer, session: AgentSession) -> None:
    """Add the parent and worker task tools of ``session`` to ``server``."""
    coord = session.coord

    def held(task_id: str) -> ClaimView:
        claim = session.held.get(task_id)
        if claim is None:
            raise InvalidInput(f"this agent holds no claim on task {task_id!r} (claim it with task_claim first)")
        return ClaimView(task=TaskView.of(claim.record), epoch=claim.epoch, deadline=claim.deadline)

    async def settled(task_id: str) -> None:
        session.drop(task_id)
        await session.tell(TASKS_URI)

    # --- as a parent -----------------------------------------------------------------------------
    @server.tool()
    async def task_submit(
        queue: Token = "default",
        title: Annotated[str, Field(max_length=500)] = "",
        payload: JsonValue = None,
        files: Annotated[list[str], Field(max_length=1000, description="absolute paths")] = [],  # noqa: B006
        priority: Priority = Priority.NORMAL,
        delay: Annotated[float | None, Field(ge=0, le=MAX_DELAY, description="seconds before it may start")] = None,
        task_id: Token | None = None,
        max_attempts: Annotated[int, Field(ge=1, le=1000)] = 3,
        lease: Annotated[float | None, Field(gt=0, le=86_400, description="seconds a claim lasts unextended")] = None,
    ) -> TaskView:
        """Submit a task to a queue (idempotent by task_id); its result comes back to this agent."""
        item = TaskInput.model_validate(
            {
                "queue": queue,
                "title": title,
                "payload": payload,
                "files": files,
                "priority": priority,
                "delay": delay,
                "max_attempts": max_attempts,
                "timeout": lease,
                **({"task_id": task_id} if task_id else {}),
            }
        )
        dispatcher = await session.dispatcher()
        submitted = await dispatcher.submit(item)
        session.remember([submitted])
        return TaskView.of(await coord.tasks.get(submitted))

    @server.tool()
    async def task_status(task_id: Token) -> TaskView:
        """A task's current state (and its result once it has ended)."""
        return TaskView.of(await coord.tasks.get(task_id))

    @server.tool()
    async def task_wait(task_ids: Ids, mode: Literal["any", "all"] = "all", timeout: Wait = 30.0) -> Waited:
        """Wait for any or all of the tasks to end (at most ``timeout`` s); returns what finished and what did not."""
        unknown = sorted(set(task_ids) - set(await coord.tasks.read_many(task_ids)))
        if unknown:
            raise NotFound(f"no task {', '.join(repr(t) for t in unknown)} (check the ids task_submit returned)")
        dispatcher = await session.dispatcher()
        finished: list[TaskView] = []
        try:
            async with asyncio.timeout(timeout):
                async for record in dispatcher.as_completed(task_ids):
                    finished.append(TaskView.of(record))
                    if mode == "any":
                        break
        except TimeoutError:
            pass
        done = {t.task_id for t in finished}
        return Waited(finished=finished, unfinished=[t for t in task_ids if t not in done])

    @server.tool()
    async def task_cancel(task_id: Token) -> TaskView:
        """Cancel a pending or running task (its worker's result will be refused)."""
        dispatcher = await session.dispatcher()
        return TaskView.of(await dispatcher.cancel(task_id))

    @server.tool()
    async def task_list(
        queue: Token | None = None,
        status: TaskStatus | None = None,
        mine: Annotated[bool, Field(description="only tasks this agent submitted")] = False,
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
    ) -> TaskList:
        """Tasks by queue and/or status (``mine``: only those this agent submitted)."""
        found: list[TaskView] = []
        more = False
        async for record in coord.tasks.iter(queue=queue, status=status):
            if mine and record.parent != session.agent_id:
                continue
            if len(found) == limit:
                more = True
                break
            found.append(TaskView.of(record))
        return TaskList(tasks=found, more=more)

    # --- as a worker -----------------------------------------------------------------------------
    @server.tool()
    async def task_claim(queue: Token, wait: Wait = 0.0) -> ClaimView | None:
        """Claim the next task of a queue (most urgent level first, within the queue's limits), waiting
        up to ``wait`` s for one; null if none came.

        The server keeps the claim (and extends its lease while this agent lives); report with
        task_heartbeat and finish with task_complete."""
        claim = await session.claim(queue, min(wait, MAX_WAIT))
        if claim is None:
            return None
        await session.tell(TASKS_URI)
        return held(claim.task_id)

    @server.tool()
    async def task_heartbeat(task_id: Token, progress: JsonValue = None) -> ClaimView:
        """Report progress on a task this agent holds (and extend its lease)."""
        held(task_id)
        try:
            await coord.tasks.heartbeat(session.held[task_id], progress)
        except StaleClaim:
            await settled(task_id)
            raise
        return held(task_id)

    @server.tool()
    async def task_complete(
        task_id: Token,
        outcome: Literal["success", "fork", "fail"] = "success",
        summary: Annotated[str, Field(max_length=4000)] = "",
        output: JsonValue = None,
        branch: Annotated[str | None, Field(max_length=255)] = None,
        rev: Annotated[str | None, Field(max_length=255)] = None,
        error: Annotated[str | None, Field(max_length=4000)] = None,
        retry: Annotated[bool, Field(description="fail only: let another attempt run")] = False,
    ) -> TaskView:
        """Finish a task this agent holds: success, fork (work continues on branch/rev) or fail."""
        held(task_id)
        claim = session.held[task_id]
        try:
            if outcome == "fail":
                message = error or summary or "failed"
                result = Result(
                    kind=ResultKind.FAIL, summary=summary, output=output, error=ResultError(message=message)
                )
                record = await coord.tasks.fail(claim, message, retry=retry, result=result.model_dump(mode="json"))
            else:
                if outcome == "fork" and not branch:
                    raise InvalidInput("a fork needs branch (and usually rev)")
                result = Result(kind=ResultKind(outcome), summary=summary, output=output, branch=branch, rev=rev)
                record = await coord.tasks.complete(claim, result.model_dump(mode="json"))
        except StaleClaim:
            await settled(task_id)
            raise
        await settled(task_id)
        return TaskView.of(record)
