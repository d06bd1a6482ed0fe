"""Both bounds of every numeric CLI option: one callback (:func:`bounded`) declared on each, and the table of them.

A numeric option is declared ``typer.Option(..., callback=bounded(TIMEOUT))``: a value outside the
:class:`~coord.validation.Bound` (NaN and infinities included) is a usage error naming the flag and
the range (``error: --timeout: must be > 0 and <= 86400 s (got inf)``, exit 2), raised while the
command line is parsed, before anything connects. :func:`numeric_options` finds every numeric
option of a command tree and the bound declared on it (None: none declared, which
``tests/test_numeric_edges.py`` refuses); :func:`markdown_table` writes them as docs/cli.md shows them.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import annotated_types
import typer

from coord.errors import InvalidInput
from coord.limits.models import MAX_CONCURRENCY
from coord.settings import Settings
from coord.validation import COUNT, DELAY, SINCE, TIMEOUT, TTL, WAIT, Bound, check_number

__all__ = [
    "ACK_TIMEOUT",
    "ATTEMPTS",
    "CLUSTER",
    "CONCURRENCY",
    "COUNT",
    "DELAY",
    "FRACTION",
    "LISTEN_PORT",
    "MAX_BYTES",
    "PORT",
    "PRESENCE_INTERVAL",
    "PRESENCE_TTL",
    "REPLICAS",
    "SINCE",
    "SWEEP",
    "TIMEOUT",
    "TTL",
    "TURN",
    "WAIT",
    "NumericOption",
    "bounded",
    "markdown_table",
    "numeric_options",
    "setting_bound",
]

PORT = Bound(0, 65_535, integer=True)
"""A TCP port (0: any free one)."""
LISTEN_PORT = Bound(1, 65_535, integer=True)
"""A TCP port given explicitly (no free-port choice)."""
ATTEMPTS = Bound(1, 1000, integer=True)
"""Claims allowed per task (the task store's rule)."""

N = TypeVar("N", int, float)

_BOUND = "corral_bound"


def bounded(bound: Bound) -> Callable[[N | None], N | None]:
    """A typer callback refusing a value outside ``bound`` as a usage error naming the option (None passes)."""

    def check(value: N | None) -> N | None:
        try:
            return check_number("value", value, bound, optional=True)
        except InvalidInput as err:
            raise typer.BadParameter(str(err).removeprefix("value ")) from None

    setattr(check, _BOUND, bound)
    return check


def setting_bound(name: str, *, integer: bool = False, hi: float | None = None, unit: str = "s") -> Bound:
    """The :class:`Bound` of the :class:`~coord.settings.Settings` field ``name`` (``hi`` where it has no maximum)."""
    low, high, open_low = None, hi, False
    for rule in Settings.model_fields[name].metadata:
        if isinstance(rule, annotated_types.Ge) and isinstance(rule.ge, int | float):
            low = float(rule.ge)
        elif isinstance(rule, annotated_types.Gt) and isinstance(rule.gt, int | float):
            low, open_low = float(rule.gt), True
        elif isinstance(rule, annotated_types.Le) and isinstance(rule.le, int | float):
            high = float(rule.le)
    if low is None or high is None:
        raise LookupError(f"setting {name} has no lower or upper bound")  # a programming error, found at import
    return Bound(low, high, "" if integer else unit, open_low=open_low, integer=integer)


@dataclass(frozen=True)
class NumericOption:
    """One option (or argument) of a command that takes a number."""

    command: str
    """The command's words (``msg send``; empty for the root's options)."""
    flag: str
    """Its longest flag (``--timeout``), or the argument's name."""
    kind: type
    """``int`` or ``float``."""
    bound: Bound | None
    """The bound declared with :func:`bounded` (None: none)."""


def _number_type(annotation: object) -> type | None:
    if annotation in (int, float):
        return typing.cast(type, annotation)
    for arg in typing.get_args(annotation):
        found = _number_type(arg)
        if found is not None:
            return found
    return None


def numeric_options(command: Any, path: tuple[str, ...] = ()) -> Iterator[NumericOption]:
    """Every option or argument of the click ``command`` tree whose type is ``int`` or ``float`` (``bool`` is not)."""
    for param in command.params:
        descriptor = getattr(param, "type_descriptor", None)
        kind = _number_type(getattr(descriptor, "annotation", None))
        if kind is None:
            continue
        flag = max(param.opts, key=len) if param.opts else str(param.name)
        yield NumericOption(" ".join(path), flag, kind, getattr(param.callback, _BOUND, None))
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from numeric_options(sub, (*path, name))


def markdown_table(command: Any) -> str:
    """The numeric options of ``command`` and their bounds as a markdown table (docs/cli.md "Numeric bounds")."""
    rows = ["| command | option | type | allowed |", "|---|---|---|---|"]
    for option in numeric_options(command):
        allowed = str(option.bound) if option.bound is not None else "**unbounded**"
        command = f"corral {option.command}".rstrip()
        rows.append(f"| `{command}` | `{option.flag}` | {option.kind.__name__} | {allowed} |")
    return "\n".join(rows) + "\n"


REPLICAS = setting_bound("replicas", integer=True)
"""Replicas of the namespace's buckets and streams (the settings' rule: 1 to 5)."""
MAX_BYTES = setting_bound("max_bytes", integer=True, hi=float(1 << 50))
"""Size limit of each bucket and stream: 1 MiB to 1 PiB."""
PRESENCE_TTL = setting_bound("presence_ttl")
"""A presence TTL (the settings' rule: 1 s to an hour)."""
PRESENCE_INTERVAL = setting_bound("presence_interval")
"""A presence heartbeat interval (the settings' rule: > 0 s to an hour)."""
SWEEP = setting_bound("sweep_interval")
"""The reclaimer's sweep interval (the settings' rule)."""
ACK_TIMEOUT = Bound(0.1, TIMEOUT.hi, "s")
"""How long ``msg send`` waits for an acknowledgement (or between chunks): 0.1 s to a day."""
CLUSTER = Bound(1, 5, integer=True)
"""Nodes of an embedded cluster (``server --cluster``)."""
CONCURRENCY = Bound(1, MAX_CONCURRENCY, integer=True)
"""Tasks a worker runs at once (at most the largest queue concurrency limit)."""
TURN = Bound(0, 1_000_000_000, integer=True)
"""A turn number."""
FRACTION = Bound(0, 1)
"""A progress fraction."""
