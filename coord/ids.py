"""Validation of the tokens corral puts in subjects and keys.

Ids (agent, task, queue, tag, thread, key) and the namespace end up inside NATS subjects and KV
keys, so they are restricted to ``[A-Za-z0-9_-]`` and a bounded length. Validation happens before
anything touches NATS and raises :class:`coord.errors.InvalidId` (a ``ValueError``) naming the
field and the rule.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

from coord.errors import InvalidId

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_NAMESPACE_LENGTH",
    "Token",
    "new_id",
    "validate_id",
    "validate_namespace",
]

MAX_ID_LENGTH = 128
MAX_NAMESPACE_LENGTH = 32
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_VALID_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_ID_LENGTH}}}").fullmatch
"""The common case in one C call (ids are checked several times per task on the hot path)."""


def _problem(value: object, max_length: int) -> str | None:
    """What is wrong with ``value`` as a token, or None if nothing is."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return f"must not be empty (allowed: A-Z a-z 0-9 _ -, 1..{max_length} chars)"
    if len(value) > max_length:
        return f"{value[:40]!r}... is {len(value)} chars long; the limit is {max_length}"
    if not _TOKEN.fullmatch(value):  # fullmatch: "$" would let a trailing newline through
        bad = "".join(sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "_-"))}))
        return f"{value!r} has characters {bad!r} that are not allowed (allowed: A-Z a-z 0-9 _ -)"
    return None


def validate_id(value: object, field: str = "id", *, max_length: int = MAX_ID_LENGTH) -> str:
    """Return ``value`` if it is a valid token, else raise :class:`InvalidId` naming ``field``."""
    if max_length == MAX_ID_LENGTH and type(value) is str and _VALID_ID(value):
        return value
    problem = _problem(value, max_length)
    if problem is not None:
        raise InvalidId(f"{field} {problem}")
    assert isinstance(value, str)
    return value


def validate_namespace(value: object) -> str:
    """Validate a namespace (it prefixes every bucket, stream and subject)."""
    return validate_id(value, "namespace", max_length=MAX_NAMESPACE_LENGTH)


def new_id(prefix: str = "") -> str:
    """A fresh random token id (URL-safe, 16 random bytes), optionally with a prefix."""
    token = secrets.token_hex(8)
    return f"{prefix}-{token}" if prefix else token


def _pydantic_token(value: str) -> str:
    if _VALID_ID(value):
        return value
    problem = _problem(value, MAX_ID_LENGTH)
    if problem is not None:
        raise InvalidId(problem)  # pydantic adds the field name
    return value


Token = Annotated[
    str,
    AfterValidator(_pydantic_token),
    WithJsonSchema({"type": "string", "pattern": f"^[A-Za-z0-9_-]{{1,{MAX_ID_LENGTH}}}$"}),
]
"""A pydantic field type for ids: validated with the same rule as :func:`validate_id` (and so described in
JSON Schema)."""
