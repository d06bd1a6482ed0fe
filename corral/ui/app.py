"""The dashboard's HTTP surface (aiohttp): the page, its JSON API, the event stream and the actions.

Read-only unless built with ``allow_actions``: then ``POST /api/tasks/{id}/retry`` and ``/cancel``
run the task store's own transitions (one compare-and-set each, with the dashboard's NATS
credentials, so the server's permissions and the record's state decide). Without it both answer
403 and the page shows no buttons. Every request passes the :class:`~corral.ui.guard.Guard` first
(its ``Host`` and ``Origin`` name this dashboard: 421/403 otherwise), and an action must carry
this process's token in the ``X-Corral-Action`` header, which only the dashboard's own page has.
"""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources
from typing import Any

from aiohttp import web

from coord.connection import Coord
from coord.errors import (
    CorralError,
    InvalidInput,
    InvalidTransition,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from coord.ids import validate_id
from coord.tasks import JournalEntry, TaskRecord, TaskStatus, Transition, journal_of
from corral import __version__
from corral.ui.guard import ACTION_HEADER, Guard
from corral.ui.hub import Hub
from corral.ui.model import ReadModel, trace_id_of

__all__ = ["ACTION_HEADER", "MAX_PAGE", "build_app", "trace_link"]

MAX_PAGE = 500
"""Most task rows one listing request returns."""
KEEPALIVE = 15.0
"""Seconds of silence after which the event stream sends a comment (proxies keep it open)."""
_STATIC = resources.files("corral.ui") / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def trace_link(template: str | None, trace_id: str | None) -> str | None:
    """``template`` with ``{trace_id}`` filled in, or None without a template or a trace id."""
    if template is None or trace_id is None:
        return None
    return template.replace("{trace_id}", trace_id)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _record_json(record: TaskRecord) -> dict[str, Any]:
    return {**record.model_dump(mode="json", exclude={"journal"}), "revision": record.revision}


def attempts_of(journal: list[JournalEntry]) -> list[dict[str, Any]]:
    """One entry per claim (epoch) of the task: who ran it, when, and how the claim ended."""
    attempts: dict[int, dict[str, Any]] = {}
    for entry in journal:
        if entry.epoch == 0:
            continue
        attempt = attempts.get(entry.epoch)
        if entry.transition is Transition.CLAIMED or attempt is None:
            attempt = attempts.setdefault(
                entry.epoch,
                {"epoch": entry.epoch, "worker": entry.worker_id, "claimed_at": entry.at.timestamp(), "heartbeats": 0},
            )
        if entry.transition is Transition.HEARTBEAT:
            attempt["heartbeats"] += 1
        elif entry.transition is not Transition.CLAIMED and "ended_at" not in attempt:
            attempt.update(
                ended_at=entry.at.timestamp(),
                outcome=entry.transition.value,
                status=entry.status.value,
                error=entry.error,
            )
    return [attempts[e] for e in sorted(attempts)]


class Api:
    """Request handlers over one read model, hub and connection."""

    def __init__(
        self, coord: Coord, model: ReadModel, hub: Hub, guard: Guard, *, allow_actions: bool, trace_url: str | None
    ) -> None:
        self.coord = coord
        self.guard = guard
        self.model = model
        self.hub = hub
        self.allow_actions = allow_actions
        self.trace_url = trace_url

    async def index(self, request: web.Request) -> web.StreamResponse:
        """``GET /``: the page, with this process's action token in it."""
        page = await self._file("index.html")
        if isinstance(page, web.Response) and page.status == 200 and isinstance(page.body, bytes):
            page.body = self.guard.page(page.body)
        return page

    async def static(self, request: web.Request) -> web.StreamResponse:
        """``GET /static/{name}``: the page's script and style (package data; nothing else is served)."""
        return await self._file(request.match_info["name"])

    async def _file(self, name: str) -> web.StreamResponse:
        resource = _STATIC / name
        suffix = "." + name.rpartition(".")[2]
        if "/" in name or suffix not in _TYPES or not resource.is_file():
            return _error(404, f"no such file: {name}")
        return web.Response(
            body=resource.read_bytes(), content_type=_TYPES[suffix], headers={"Cache-Control": "no-cache"}
        )

    async def config(self, request: web.Request) -> web.Response:
        """``GET /api/config``: the namespace, whether actions are allowed, the trace URL template, the version."""
        return web.json_response(
            {
                "namespace": self.model.namespace,
                "allow_actions": self.allow_actions,
                "trace_url": self.trace_url,
                "version": __version__,
            }
        )

    async def state(self, request: web.Request) -> web.Response:
        """``GET /api/state``: the snapshot a browser gets on connecting."""
        return web.json_response(self.model.snapshot())

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/stream``: server-sent events, the snapshot then the hub's deltas (see :mod:`corral.ui.hub`)."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        client, first = self.hub.connect()
        try:
            await response.write(b"retry: 1000\n\n" + first)
            while not client.dropped:
                try:
                    frame = await asyncio.wait_for(client.frames.get(), KEEPALIVE)
                except TimeoutError:
                    frame = b": keepalive\n\n"
                if frame is None:
                    break
                await response.write(frame)
        except ConnectionResetError:  # the browser went away
            pass
        finally:
            self.hub.disconnect(client)
        with contextlib.suppress(Exception):
            await response.write_eof()
        return response

    async def tasks(self, request: web.Request) -> web.Response:
        """``GET /api/tasks``: one page of tasks filtered by ``status``, ``queue``, ``worker``, ``q``
        (a bad parameter: 400 naming it)."""
        query = request.query
        status: TaskStatus | None = None
        if query.get("status"):
            try:
                status = TaskStatus(query["status"])
            except ValueError:
                return _error(400, f"status: must be one of {', '.join(s.value for s in TaskStatus)}")
        try:
            offset = int(query.get("offset", "0"))
            limit = int(query.get("limit", "50"))
        except ValueError:
            return _error(400, "offset and limit: must be whole numbers")
        if offset < 0 or not 1 <= limit <= MAX_PAGE:
            return _error(400, f"offset: must be >= 0; limit: must be 1..{MAX_PAGE}")
        page = self.model.task_page(
            status=status,
            queue=query.get("queue") or None,
            worker=query.get("worker") or None,
            search=query.get("q") or None,
            offset=offset,
            limit=limit,
        )
        data = page.json()
        for row in data["rows"]:
            row["trace_link"] = trace_link(self.trace_url, row["trace_id"])
        return web.json_response(data)

    async def task(self, request: web.Request) -> web.Response:
        """``GET /api/tasks/{id}``: the stored record, its journal, attempts and trace link (reads only)."""
        task_id = request.match_info["task_id"]
        try:
            validate_id(task_id, "task_id")
            record = await self.coord.tasks.get(task_id)
            journal = journal_of(record)
        except CorralError as err:
            return _failure(err)
        trace_id = trace_id_of(record.meta)
        return web.json_response(
            {
                "record": _record_json(record),
                "journal": [e.model_dump(mode="json") for e in journal],
                "attempts": attempts_of(journal),
                "trace_id": trace_id,
                "trace_link": trace_link(self.trace_url, trace_id),
            }
        )

    async def act(self, request: web.Request) -> web.Response:
        """``POST /api/tasks/{id}/retry|cancel``: the store's transition, if actions are allowed and the
        header is set."""
        if not self.allow_actions:
            return _error(403, "this dashboard is read-only: start `corral ui --allow-actions` to retry or cancel")
        refused = self.guard.action_refusal(request)
        if refused is not None:
            return refused
        task_id, action = request.match_info["task_id"], request.match_info["action"]
        try:
            validate_id(task_id, "task_id")
            if action == "retry":
                record = await self.coord.tasks.retry(task_id)
            else:
                record = await self.coord.tasks.cancel(task_id)
        except CorralError as err:
            return _failure(err)
        self.model.apply_task(record)
        return web.json_response({"ok": True, "action": action, "record": _record_json(record)})

    async def dead_letters(self, request: web.Request) -> web.Response:
        """``GET /api/dead-letters``: the recent dead letters."""
        return web.json_response({"letters": self.model.dead_letters_json()})

    async def events(self, request: web.Request) -> web.Response:
        """``GET /api/events``: the recent lifecycle events and the trees they make."""
        return web.json_response({"events": self.model.events_json(), "trees": self.model.trees_json()})

    async def registry(self, request: web.Request) -> web.Response:
        """``GET /api/registry``: thread reservations and sessions."""
        return web.json_response(self.model.registry_json())


def _failure(err: CorralError) -> web.Response:
    status = 502
    if isinstance(err, NotFound):
        status = 404
    elif isinstance(err, InvalidTransition):
        status = 409
    elif isinstance(err, PermissionDenied):
        status = 403
    elif isinstance(err, InvalidInput):
        status = 400
    elif isinstance(err, Unavailable):
        status = 503
    return _error(status, str(err))


def build_app(
    coord: Coord, model: ReadModel, hub: Hub, guard: Guard, *, allow_actions: bool, trace_url: str | None
) -> web.Application:
    """The aiohttp application of one dashboard; every request passes ``guard`` first."""
    api = Api(coord, model, hub, guard, allow_actions=allow_actions, trace_url=trace_url)
    app = web.Application(middlewares=[guard.middleware])
    app.router.add_get("/", api.index)
    app.router.add_get("/static/{name}", api.static)
    app.router.add_get("/api/config", api.config)
    app.router.add_get("/api/state", api.state)
    app.router.add_get("/api/stream", api.stream)
    app.router.add_get("/api/tasks", api.tasks)
    app.router.add_get("/api/tasks/{task_id}", api.task)
    app.router.add_post("/api/tasks/{task_id}/{action:retry|cancel}", api.act)
    app.router.add_get("/api/dead-letters", api.dead_letters)
    app.router.add_get("/api/events", api.events)
    app.router.add_get("/api/registry", api.registry)
    return app
