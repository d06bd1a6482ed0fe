"""``coord.schema``: the wire's JSON Schemas say what corral accepts, no more and no less."""

from __future__ import annotations

import jsonschema

from coord.schema import wire_schemas


def test_a_schema_rejects_what_corral_would_refuse() -> None:
    """The schemas are not vacuous: values corral refuses are refused by them too."""
    schemas = {s.name: s.document() for s in wire_schemas()}
    for name, bad in (
        ("spec", {"task_id": "has space"}),
        ("spec", {"task_id": "t1", "max_attempts": 0}),
        ("spec", {"task_id": "t1", "unknown": 1}),
        ("result", {"kind": "exploded"}),
        ("event", {"kind": "errored", "agent": "a"}),
        ("mail", {"Corral-Sent-At": "2026-01-01T00:00:00Z", "Nats-Msg-Id": "m1"}),
    ):
        errors = list(jsonschema.Draft202012Validator(schemas[name]).iter_errors(bad))
        assert errors, (name, bad)
