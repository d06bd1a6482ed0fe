"""Id validation: the rule is enforced before NATS is touched, and errors name the field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from coord.errors import InvalidId
from coord.ids import MAX_ID_LENGTH, Token, validate_id

TOKEN_CHARS = st.sampled_from("abcXYZ019_-")


@given(st.text(TOKEN_CHARS, min_size=1, max_size=MAX_ID_LENGTH))
def test_every_token_of_allowed_characters_is_accepted(value: str) -> None:
    assert validate_id(value) == value


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("", "empty"),
        ("a.b", "not allowed"),
        ("a b", "not allowed"),
        ("task\n", "not allowed"),
        ("task\r\nPUB x 1", "not allowed"),
        ("é", "not allowed"),
        ("x" * (MAX_ID_LENGTH + 1), "limit"),
        (5, "string"),
    ],
)
def test_bad_ids_raise_a_value_error_naming_the_field_and_rule(value: object, rule: str) -> None:
    with pytest.raises(InvalidId, match=rf"^task_id .*{rule}") as info:
        validate_id(value, "task_id")
    assert isinstance(info.value, ValueError)


def test_pydantic_token_fields_name_the_field() -> None:
    class Model(BaseModel):
        worker_id: Token

    with pytest.raises(ValidationError, match=r"worker_id[\s\S]*not allowed"):
        Model(worker_id="a.b")
