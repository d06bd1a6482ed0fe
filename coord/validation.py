"""Turning pydantic's validation errors into corral's one-line :class:`~coord.errors.InvalidInput`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pydantic import ValidationError

from coord.errors import InvalidInput

__all__ = ["describe", "invalid_input"]


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
        message = str(problem["msg"]).removeprefix("Value error, ")
        # A model-level check (empty location) names its fields in its own message.
        parts.append(f"{_field(problem['loc'], rename)}: {message}" if problem["loc"] else message)
    return "; ".join(parts).replace("\n", " ")


def invalid_input(
    err: ValidationError, rename: Mapping[str, str] | Callable[[str], str] | None = None, *, what: str = ""
) -> InvalidInput:
    """An :class:`InvalidInput` saying what :func:`describe` says, optionally prefixed with ``what``."""
    text = describe(err, rename)
    return InvalidInput(f"{what}: {text}" if what else text)
