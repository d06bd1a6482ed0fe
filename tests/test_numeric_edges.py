"""Every number that crosses an edge has both bounds (issue 21): each CLI option and each public API parameter
that takes a number, walked through extreme values, gives a clean error or a correct result, never a
traceback or a hang.

Both sides are *discovered*: the CLI options by walking the typer command tree, the API parameters by
introspecting the methods of every service a :class:`~coord.Coord` holds. A numeric option declared
without :func:`~corral.cli._bounds.bounded`, or an API parameter missing from :data:`API_BOUNDS`,
fails here; docs/cli.md "Numeric bounds" must show both tables exactly as generated below.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import annotated_types
import pytest
import typer.core
import typer.main
from pydantic import BaseModel, ValidationError

import coord
import dispatch
import workers
from coord.connection import Coord
from coord.errors import InvalidInput, NotFound
from coord.events import TurnEnded
from coord.limits import Rate, SlotHolder
from coord.mailbox import Agent, Enqueued
from coord.presence import AgentInfo
from coord.settings import Settings
from coord.validation import (
    COUNT,
    DELAY,
    IN_FLIGHT,
    MAX_DELAY,
    MAX_SINCE,
    MAX_TTL,
    REVISION,
    SINCE,
    TIMEOUT,
    TTL,
    WAIT,
    WORKERS,
    Bound,
)
from coord.wire import MAX_DELAY as WIRE_MAX_DELAY
from coord.wire import Result, Spec
from corral.cli import app
from corral.cli._bounds import NumericOption, markdown_table, numeric_options
from corral.cli._errors import CliError, from_click, run_cli
from dispatch import Dispatcher, Reclaimer, wait_worker_absent
from dispatch.scheduler import Scheduler
from workers import CommandHandler, Context, Worker

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
EXTREMES = ["0", "-1", "-0.5", "1e308", "inf", "-inf", "nan", "1e30", str(10**30)]
"""What a user may type: zero, negatives, huge, infinities, not-a-number."""

COMMAND = typer.main.get_command(app)
OPTIONS = list(numeric_options(COMMAND))


def _leaf(option: NumericOption) -> Any:
    command = COMMAND
    for word in option.command.split():
        assert isinstance(command, typer.core.TyperGroup), command.name
        command = command.commands[word]
    return command


def _param(command: Any, flag: str) -> Any:
    return next(p for p in command.params if flag in p.opts or p.name == flag)


def _parse(option: NumericOption, text: str) -> tuple[object, CliError | None]:
    """Convert and check ``text`` as ``option``'s value exactly as the command line does (nothing runs)."""
    command = _leaf(option)
    param = _param(command, option.flag)
    ctx = command.make_context(option.command or "corral", [], resilient_parsing=True)
    ctx.resilient_parsing = False
    try:
        value, _ = param.handle_parse_result(ctx, {param.name: text}, [])
    except Exception as err:  # a click usage error, as run_cli would report it
        return None, from_click(err)
    return value, None


def _filler(command: Any, skip: str) -> list[str]:
    """Values for the command's other required options and arguments, so that only ``skip`` can be at fault."""
    words: list[str] = []
    for param in command.params:
        if not param.required or skip in param.opts:
            continue
        words += [max(param.opts, key=len), "x"] if param.param_type_name == "option" else ["x"]
    return words


def test_every_numeric_option_declares_both_bounds() -> None:
    assert len(OPTIONS) >= 30, OPTIONS  # the walk finds them (33 when this was written)
    unbounded = [f"corral {o.command} {o.flag}" for o in OPTIONS if o.bound is None]
    assert unbounded == [], f"declare callback=bounded(...) on {unbounded} (corral/cli/_bounds.py)"
    for option in OPTIONS:
        assert option.bound is not None and math.isfinite(option.bound.lo) and math.isfinite(option.bound.hi)
        assert option.bound.integer == (option.kind is int), option


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: f"{o.command} {o.flag}".strip())
def test_every_numeric_option_refuses_extremes_in_one_line_or_accepts_them_within_its_bounds(
    option: NumericOption, capsys: pytest.CaptureFixture[str]
) -> None:
    bound = option.bound
    assert bound is not None
    for text in [*EXTREMES, _plain(bound.lo), _plain(bound.hi), _plain(bound.hi + 1)]:
        value, error = _parse(option, text)
        if bound.contains(_as(option.kind, text)):
            assert error is None and value == _as(option.kind, text), f"{option.flag} {text} refused: {error}"
            continue
        assert error is not None, f"{option.flag} {text} accepted as {value!r}, outside {bound}"
        assert error.code == 2 and error.field == option.flag, (text, str(error))
        # The whole command line: one line on stderr, exit 2, before anything runs (no server is needed).
        words = [option.flag, text, "tasks", "ls"] if not option.command else []
        if option.command:
            words = [*option.command.split(), *_filler(_leaf(option), option.flag), option.flag, text]
        code = run_cli(COMMAND, words, prog_name="corral")
        err = capsys.readouterr().err
        assert code == 2, (words, err)
        assert err.count("\n") == 1 and err.startswith(f"error: {option.flag}: must be"), (words, err)
        assert "Traceback" not in err


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _as(kind: type, text: str) -> object:
    """``text`` read as the option's type, as a user means it (None: it is not one)."""
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        return None


def test_the_documented_cli_table_is_the_declared_one() -> None:
    assert _section("cli") == markdown_table(COMMAND), "regenerate: python -m tests.test_numeric_edges"


# --- the public API ----------------------------------------------------------------------------------------

SERVICES = ["presence", "tasks", "registry", "mailbox", "events", "dead_letters", "schedules", "limits"]

PYDANTIC = "pydantic"
"""Checked by the request's pydantic model (a ``ValidationError``, also a ``ValueError``, naming the field)."""

API_BOUNDS: dict[str, Bound] = {
    "presence.join.interval": TIMEOUT,
    "presence.join.ttl": TTL,
    "presence.join.wait": WAIT,
    "presence.wait_absent.timeout": WAIT,
    "presence.wait_present.timeout": WAIT,
    "tasks.claim.lease": TIMEOUT,
    "tasks.notify.again": COUNT,
    "tasks.schedule.max_attempts": Bound(1, 1000, integer=True),
    "tasks.schedule.timeout": TIMEOUT,
    "tasks.schedule.delay": DELAY,
    "mailbox.read_pending.limit": COUNT,
    "mailbox.handle_pending.limit": COUNT,
    "mailbox.send.timeout": TIMEOUT,
    "mailbox.send.ttl": TTL,
    "mailbox.send_streaming.timeout": TIMEOUT,
    "events.emit.timeout": TIMEOUT,
    "events.emit_nowait.timeout": TIMEOUT,
    "events.flush.timeout": WAIT,
    "events.tail.since": SINCE,
    "dead_letters.read.limit": COUNT,
    "dead_letters.tail.since": SINCE,
    "limits.heal.grace": WAIT,
    "limits.reserve.want": COUNT,
    "limits.reserve.horizon": WAIT,
    "limits.set.concurrency": Bound(1, 1000, integer=True),
    "limits.take_slot.index": Bound(0, 999, integer=True),
    "limits.take_slot.over": REVISION,
    # the entry points of dispatch and workers
    "Dispatcher.__init__.max_in_flight": IN_FLIGHT,
    "Dispatcher.__init__.reconcile_interval": TIMEOUT,
    "Dispatcher.wait.timeout": WAIT,
    "Dispatcher.result.timeout": WAIT,
    "Dispatcher.as_completed.timeout": WAIT,
    "Reclaimer.__init__.sweep_interval": TIMEOUT,
    "Reclaimer.__init__.renotify_after": TIMEOUT,
    "Scheduler.__init__.max_sleep": TIMEOUT,
    "wait_worker_absent.deadline": WAIT,
    "CommandHandler.__init__.kill_grace": WAIT,
    "Worker.__init__.concurrency": WORKERS,
    "Worker.__init__.lease": TIMEOUT,
    "Worker.__init__.presence_interval": TIMEOUT,
    "Worker.__init__.presence_ttl": TTL,
    "Worker.__init__.grace": WAIT,
    "Worker.__init__.lost_grace": WAIT,
    "Worker.__init__.max_batch": IN_FLIGHT,
}
"""Every numeric parameter of the services' public methods and its bound (docs/cli.md shows this table)."""

CHECKED_BY = {
    "tasks.schedule.max_attempts": PYDANTIC,
    "tasks.schedule.timeout": PYDANTIC,
    "tasks.schedule.delay": PYDANTIC,
}
IGNORED = {"tasks.claim.revision": "the notification's revision: accepted and ignored (it decides nothing)"}
"""Numeric parameters that are not used for anything; extreme values must still give the normal result."""


def _numeric(annotation: object) -> bool:
    """``int``, ``float``, or a union holding one (``float | None``); not a container of numbers."""
    if annotation in (int, float):
        return True
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return is_union and any(a in (int, float) for a in typing.get_args(annotation))


def _entry_points() -> dict[str, Callable[..., object]]:
    """``service.method`` of the Coord's services, and ``Class.method`` / functions exported by dispatch and workers
    (their classes that do things: not records, results or errors)."""
    hints = typing.get_type_hints(Coord)
    found: dict[str, Callable[..., object]] = {}
    for service in SERVICES:
        for name, function in inspect.getmembers(hints[service], inspect.isfunction):
            if not name.startswith("_"):
                found[f"{service}.{name}"] = function
    exported = [getattr(m, n) for m in (dispatch, workers) for n in m.__all__] + [Scheduler]
    for obj in exported:
        if inspect.isfunction(obj):
            found[obj.__name__] = obj
        elif inspect.isclass(obj) and not (
            issubclass(obj, BaseModel | BaseException | tuple) or dataclasses.is_dataclass(obj)
        ):
            for name, function in inspect.getmembers(obj, inspect.isfunction):
                if name == "__init__" or not name.startswith("_"):
                    found[f"{obj.__name__}.{name}"] = function
    return found


def discovered_api() -> list[str]:
    """``entry.param`` for every int/float parameter of every entry point (see :func:`_entry_points`)."""
    found = []
    for entry, function in _entry_points().items():
        types = typing.get_type_hints(function)
        for param in inspect.signature(function).parameters:
            if param in types and types[param] is not bool and _numeric(types[param]):
                found.append(f"{entry}.{param}")
    return sorted(found)


def test_every_numeric_api_parameter_has_a_documented_bound() -> None:
    found = set(discovered_api())
    missing = sorted(found - set(API_BOUNDS) - set(IGNORED))
    assert missing == [], f"add a bound for {missing} (API_BOUNDS here, a check_number line in the method)"
    assert sorted(set(API_BOUNDS) | set(IGNORED)) == sorted(found), "a documented parameter no longer exists"
    assert MAX_DELAY == WIRE_MAX_DELAY  # the task store's rule and the documented one are one


def test_the_documented_api_table_is_this_one() -> None:
    assert _section("api") == api_table(), "regenerate: python -m tests.test_numeric_edges"


def api_table() -> str:
    """:data:`API_BOUNDS` as the markdown table docs/cli.md shows."""
    rows = ["| parameter | allowed | checked by |", "|---|---|---|"]
    for name, bound in API_BOUNDS.items():
        rows.append(f"| `{name}` | {bound} | {CHECKED_BY.get(name, 'InvalidInput')} |")
    for name, why in IGNORED.items():
        rows.append(f"| `{name}` | any | {why} |")
    return "\n".join(rows) + "\n"


Call = Callable[[Coord, Any], Awaitable[object]]


async def _first(items: Any) -> object:
    async for item in items:
        return item
    return None


async def _pending_record(conn: Coord) -> Any:
    return await conn.tasks.schedule(f"edge-{id(conn)}", queue="edges")


async def _notify(conn: Coord, again: Any) -> object:
    await conn.tasks.notify(await _pending_record(conn), again=again)
    return None


def _holder() -> SlotHolder:
    return SlotHolder(task_id="t", epoch=1, worker_id="w", at=datetime.now(UTC))


async def _now(value: object) -> object:
    return value


async def _handler(spec: Spec, ctx: Context) -> Result:
    return Result.success()


CALLS: dict[str, Call] = {
    "presence.join.interval": lambda c, v: _now(c.presence.join(AgentInfo(id="edge"), interval=v)),
    "presence.join.ttl": lambda c, v: _now(c.presence.join(AgentInfo(id="edge"), ttl=v)),
    "presence.join.wait": lambda c, v: _now(c.presence.join(AgentInfo(id="edge"), wait=v)),
    "presence.wait_absent.timeout": lambda c, v: c.presence.wait_absent("edge", v),
    "presence.wait_present.timeout": lambda c, v: c.presence.wait_present("edge", v),
    "tasks.claim.lease": lambda c, v: c.tasks.claim("no-such-task", "w", lease=v),
    "tasks.claim.revision": lambda c, v: c.tasks.claim("no-such-task", "w", revision=v),
    "tasks.notify.again": _notify,
    "tasks.schedule.max_attempts": lambda c, v: c.tasks.schedule("edge-s", queue="edges", max_attempts=v),
    "tasks.schedule.timeout": lambda c, v: c.tasks.schedule("edge-s", queue="edges", timeout=v),
    "tasks.schedule.delay": lambda c, v: c.tasks.schedule("edge-s", queue="edges", delay=v),
    "mailbox.read_pending.limit": lambda c, v: c.mailbox.read_pending("edge", limit=v),
    "mailbox.handle_pending.limit": lambda c, v: c.mailbox.handle_pending("edge", print, limit=v),
    "mailbox.send.timeout": lambda c, v: c.mailbox.send(Agent(id="edge"), "hi", timeout=v),
    "mailbox.send.ttl": lambda c, v: c.mailbox.send(Agent(id="edge"), "hi", ttl=v),
    "mailbox.send_streaming.timeout": lambda c, v: _first(c.mailbox.send_streaming(Agent(id="edge"), "hi", timeout=v)),
    "events.emit.timeout": lambda c, v: c.events.emit("parent", TurnEnded(agent="edge"), timeout=v),
    "events.emit_nowait.timeout": lambda c, v: _now(c.events.emit_nowait("parent", TurnEnded(agent="edge"), timeout=v)),
    "events.flush.timeout": lambda c, v: c.events.flush(v),
    "events.tail.since": lambda c, v: _first(c.events.tail(since=v, follow=False)),
    "dead_letters.read.limit": lambda c, v: c.dead_letters.read(limit=v),
    "dead_letters.tail.since": lambda c, v: _first(c.dead_letters.tail(since=v)),
    "limits.heal.grace": lambda c, v: c.limits.heal([], grace=v),
    "limits.reserve.want": lambda c, v: c.limits.reserve("edges", Rate(count=1), want=v, horizon=1),
    "limits.reserve.horizon": lambda c, v: c.limits.reserve("edges", Rate(count=1), want=1, horizon=v),
    "limits.set.concurrency": lambda c, v: c.limits.set("edges", concurrency=v),
    "limits.take_slot.index": lambda c, v: c.limits.take_slot("edges", v, over=0, holder=_holder()),
    "limits.take_slot.over": lambda c, v: c.limits.take_slot("edges", 0, over=v, holder=_holder()),
    "Dispatcher.__init__.max_in_flight": lambda c, v: _now(Dispatcher(c, max_in_flight=v)),
    "Dispatcher.__init__.reconcile_interval": lambda c, v: _now(Dispatcher(c, reconcile_interval=v)),
    "Dispatcher.wait.timeout": lambda c, v: Dispatcher(c).wait("edge-t", timeout=v),
    "Dispatcher.result.timeout": lambda c, v: Dispatcher(c).result("edge-t", timeout=v),
    "Dispatcher.as_completed.timeout": lambda c, v: _first(Dispatcher(c).as_completed(["edge-t"], timeout=v)),
    "Reclaimer.__init__.sweep_interval": lambda c, v: _now(Reclaimer(c, sweep_interval=v)),
    "Reclaimer.__init__.renotify_after": lambda c, v: _now(Reclaimer(c, renotify_after=v)),
    "Scheduler.__init__.max_sleep": lambda c, v: _now(Scheduler(c, max_sleep=v)),
    "wait_worker_absent.deadline": lambda c, v: wait_worker_absent(c, "edge", v),
    "CommandHandler.__init__.kill_grace": lambda c, v: _now(CommandHandler(["true"], kill_grace=v)),
    "Worker.__init__.concurrency": lambda c, v: _now(Worker(c, ["edges"], _handler, concurrency=v)),
    "Worker.__init__.lease": lambda c, v: _now(Worker(c, ["edges"], _handler, lease=v)),
    "Worker.__init__.presence_interval": lambda c, v: _now(Worker(c, ["edges"], _handler, presence_interval=v)),
    "Worker.__init__.presence_ttl": lambda c, v: _now(Worker(c, ["edges"], _handler, presence_ttl=v)),
    "Worker.__init__.grace": lambda c, v: _now(Worker(c, ["edges"], _handler, grace=v)),
    "Worker.__init__.lost_grace": lambda c, v: _now(Worker(c, ["edges"], _handler, lost_grace=v)),
    "Worker.__init__.max_batch": lambda c, v: _now(Worker(c, ["edges"], _handler, max_batch=v)),
}

API_EXTREMES: list[float] = [0, -1, -0.5, 1e308, math.inf, -math.inf, math.nan, 1e30, 10**30]


def test_every_documented_api_parameter_has_a_call_here() -> None:
    assert sorted(CALLS) == sorted(set(API_BOUNDS) | set(IGNORED))


async def test_every_api_parameter_refuses_extremes_naming_the_field_before_anything_is_sent(
    coord_conn: coord.Coord,
) -> None:
    refused = 0
    for name, bound in API_BOUNDS.items():
        field = name.rsplit(".", 1)[1]
        for value in [*API_EXTREMES, bound.hi + 1, bound.lo - 1]:
            if bound.contains(value):
                continue
            with pytest.raises((InvalidInput, ValidationError)) as caught:
                await asyncio.wait_for(CALLS[name](coord_conn, value), 5)
            if isinstance(caught.value, InvalidInput):
                assert str(caught.value).startswith(f"{field} must be"), (name, value, str(caught.value))
            else:
                assert CHECKED_BY.get(name) == PYDANTIC and field in str(caught.value), (name, value)
            refused += 1
    assert refused > 150
    assert await coord_conn.mailbox.read_pending("edge") == []  # no message was sent by a refused call


async def test_an_ignored_number_changes_nothing(coord_conn: coord.Coord) -> None:
    for value in API_EXTREMES:
        with pytest.raises(NotFound):
            await asyncio.wait_for(CALLS["tasks.claim.revision"](coord_conn, value), 5)


async def test_the_largest_values_allowed_are_accepted_by_the_server(coord_conn: coord.Coord) -> None:
    sent = await coord_conn.mailbox.send(Agent(id="far"), "kept ten years", mode="enqueue", ttl=MAX_TTL)
    assert isinstance(sent, Enqueued)
    assert [m.body for m in await coord_conn.mailbox.read_pending("far")] == [b"kept ten years"]
    record = await coord_conn.tasks.schedule("edge-late", queue="edges", delay=MAX_DELAY, timeout=TIMEOUT.hi)
    assert record.timeout == TIMEOUT.hi
    assert await _first(coord_conn.events.tail(since=MAX_SINCE, follow=False)) is None
    assert await _first(coord_conn.events.tail(since=0, follow=False)) is None


# --- settings (CORRAL_* variables) -----------------------------------------------------------------------


def _settings_fields(model: Any, prefix: str = "") -> list[tuple[str, list[object]]]:
    """``(path, constraints)`` of every numeric field of :class:`Settings`, nested ones (``backoff.factor``) too."""
    if dataclasses.is_dataclass(model):  # a stdlib dataclass: its bounds are in Annotated[float, Field(...)]
        hints = typing.get_type_hints(model, include_extras=True)
        fields = {f.name: hints[f.name] for f in dataclasses.fields(model)}
        return [
            (f"{prefix}{name}", [m for info in typing.get_args(hint)[1:] for m in getattr(info, "metadata", [])])
            for name, hint in fields.items()
            if typing.get_origin(hint) is typing.Annotated and typing.get_args(hint)[0] in (int, float)
        ] + [(f"{prefix}{name}", []) for name, hint in fields.items() if hint in (int, float)]
    found: list[tuple[str, list[object]]] = []
    for name, info in model.model_fields.items():
        if dataclasses.is_dataclass(info.annotation) or hasattr(info.annotation, "model_fields"):
            found += _settings_fields(info.annotation, f"{prefix}{name}.")
        elif info.annotation in (int, float):
            found.append((f"{prefix}{name}", list(info.metadata)))
    return found


SETTINGS = _settings_fields(Settings)


def test_every_numeric_setting_has_both_bounds() -> None:
    assert len(SETTINGS) >= 20, SETTINGS
    for path, constraints in SETTINGS:
        low = [m for m in constraints if isinstance(m, annotated_types.Ge | annotated_types.Gt)]
        high = [m for m in constraints if isinstance(m, annotated_types.Le | annotated_types.Lt)]
        assert low and high, f"setting {path} needs both bounds (Field(ge=..., le=...))"


@pytest.mark.parametrize("path", [p for p, _ in SETTINGS])
def test_every_numeric_setting_refuses_extremes_naming_its_variable(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    variable = "CORRAL_" + path.upper().replace(".", "__")
    for text in ("inf", "-inf", "nan", "1e308", "-1e308", str(10**30)):
        monkeypatch.setenv(variable, text)
        with pytest.raises(InvalidInput, match=f"^settings: {variable}: must be"):
            Settings.load()
    monkeypatch.delenv(variable)


# --- docs -----------------------------------------------------------------------------------------------------


def _markers(which: str) -> tuple[str, str]:
    return f"<!-- numeric-bounds:{which}:start -->\n", f"<!-- numeric-bounds:{which}:end -->"


def _section(which: str) -> str:
    text = DOCS.read_text()
    start, end = _markers(which)
    assert start in text and end in text, f"docs/cli.md lacks the {which} table markers"
    return text.split(start, 1)[1].split(end, 1)[0]


def regenerate() -> None:
    """Write both tables into docs/cli.md between their markers."""
    text = DOCS.read_text()
    for which, table in (("cli", markdown_table(COMMAND)), ("api", api_table())):
        start, end = _markers(which)
        head, rest = text.split(start, 1)
        text = head + start + table + end + rest.split(end, 1)[1]
    DOCS.write_text(text)


if __name__ == "__main__":
    regenerate()
