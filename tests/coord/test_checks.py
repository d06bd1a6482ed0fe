"""check_json: exactly json.dumps(allow_nan=False)'s verdict, without writing a large value out."""

from __future__ import annotations

import enum
import json
import sys
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coord.errors import InvalidInput
from coord.tasks.checks import check_json


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


keys = st.one_of(
    st.text(max_size=4),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.binary(max_size=2),
    st.tuples(st.integers()),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**4000, max_value=10**4400),  # around the digits limit of int -> str
    st.floats(),  # NaN and infinities included
    st.text(max_size=8),
    st.binary(max_size=4),
    st.builds(Text, st.text(max_size=4)),
    st.just(Colour.RED),
    st.sets(st.integers(), max_size=2),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(keys, inner, max_size=4),
    ),
    max_leaves=20,
)


def dumps_accepts(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


@given(values)
def test_the_verdict_is_json_dumps_own(value: Any) -> None:
    if dumps_accepts(value):
        check_json(value, "result")
    else:
        with pytest.raises(InvalidInput, match="result must be a JSON value"):
            check_json(value, "result")


def test_cycles_shared_containers_and_depth_get_the_same_verdict() -> None:
    wide: list[Any] = []
    wide.extend([wide] * 10)  # a cycle met ten times per level: refused at once, not walked
    started = time.perf_counter()
    with pytest.raises(InvalidInput, match="Circular reference"):
        check_json(wide, "result")
    assert time.perf_counter() - started < 1.0
    shared = {"a": 1}
    check_json([shared, shared, {"k": shared}], "result")  # the same dict twice is no cycle
    deep: Any = "leaf"
    for _ in range(200):
        deep = [deep]
    check_json(deep, "result")  # deeper than the quick walk goes: json.dumps decides (accepts)
    with pytest.raises(InvalidInput, match="digits"):
        check_json({"n": 10 ** (sys.get_int_max_str_digits() + 1)}, "progress")


def test_a_64_mib_string_is_checked_without_being_written_out() -> None:
    big = {"v": 1, "kind": "success", "output": "o" * (64 << 20), "error": None}
    started = time.perf_counter()
    check_json(big, "result")
    elapsed = time.perf_counter() - started
    # json.dumps took ~150 ms of the worker's event loop for this on the 2-core machine
    assert elapsed < 0.05, f"{elapsed * 1000:.0f} ms"
