"""Turning pydantic's validation errors into corral's one-line :class:`~coord.errors.InvalidInput`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from coord.errors import InvalidInput

__all__ = ["describe", "invalid_input", "rule"]

_MAX_SHOWN = 60
"""Longest value quoted back in an error (longer ones are cut, or named by their length)."""


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(value: object) -> str:
    if isinstance(value, float):
        return _number(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > _MAX_SHOWN:
        return f"{len(text)} characters" if isinstance(value, str) else text[: _MAX_SHOWN - 1] + "…"
    return repr(text) if isinstance(value, str) and (not text or any(c.isspace() for c in text)) else text


def rule(problem: ErrorDetails) -> str:
    """What one pydantic problem means, as a rule a user can act on: ``must be >= 1 (got 0)``.

    No pydantic wording (``Input should be``), no URL; the value given is quoted back (its
    length, when it is long) unless the message already names it.
    """
    kind = problem["type"]
    ctx: dict[str, Any] = dict(problem.get("ctx") or {})
    bounds = {
        "greater_than": ("> ", "gt"),
        "greater_than_equal": (">= ", "ge"),
        "less_than": ("< ", "lt"),
        "less_than_equal": ("<= ", "le"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        text = f"must be {op}{_number(ctx[key])}"
    elif kind == "string_too_short":
        text = "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx['min_length']} characters"
    elif kind == "string_too_long":
        text = f"must be at most {ctx['max_length']} characters"
    elif kind in ("too_short", "too_long"):
        which = "least" if kind == "too_short" else "most"
        text = f"must have at {which} {ctx.get('min_length', ctx.get('max_length'))} item(s)"
    elif kind in ("int_parsing", "int_type", "int_from_float"):
        text = "must be a whole number"
    elif kind in ("float_parsing", "float_type"):
        text = "must be a number"
    elif kind in ("bool_parsing", "bool_type"):
        text = "must be true or false"
    elif kind in ("literal_error", "enum"):
        text = f"must be one of {ctx.get('expected', '')}"
    elif kind == "missing":
        return "is required"
    elif kind == "extra_forbidden":
        return "is not a known field"
    elif kind in ("value_error", "assertion_error"):
        # corral's own checks already name the value they reject
        return str(problem["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    else:
        text = str(problem["msg"]).replace("Input should be", "must be")
    if "input" in problem and not isinstance(problem["input"], dict | list):
        text += f" (got {_shown(problem['input'])})"
    return text


def _field(loc: tuple[int | str, ...], rename: Mapping[str, str] | Callable[[str], str] | None) -> str:
    path = ".".join(str(p) for p in loc) or "value"
    if rename is None:
        return path
    if callable(rename):
        return rename(path)
    return rename.get(path, rename.get(str(loc[0]), path) if loc else path)


def describe(err: ValidationError, rename: Mapping[str, str] | Callable[[str], str] | None = None) -> str:
    """Every problem of ``err`` as ``field: rule`` joined by ``"; "`` (no pydantic URLs, no newlines).

    ``rename`` maps a field path to what the user knows it by (a CLI flag, an environment variable).
    """
    parts: list[str] = []
    for problem in err.errors(include_url=False):
        message = rule(problem)
        # A model-level check (empty location) names its fields in its own message.
        parts.append(f"{_field(problem['loc'], rename)}: {message}" if problem["loc"] else message)
    return "; ".join(parts).replace("\n", " ")


def invalid_input(
    err: ValidationError, rename: Mapping[str, str] | Callable[[str], str] | None = None, *, what: str = ""
) -> InvalidInput:
    """An :class:`InvalidInput` saying what :func:`describe` says, optionally prefixed with ``what``."""
    text = describe(err, rename)
    return InvalidInput(f"{what}: {text}" if what else text)
