"""The adversary covers every name ``coord.naming`` defines, and docs/adversary.md shows that table."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from coord.naming import Names
from tests.adversary.hostile import NS, Write
from tests.adversary.table import COVERAGE, COVERED, TARGETS, TARGETS_BY_NAME, Target, markdown, names_members

DOC = Path(__file__).resolve().parents[2] / "docs" / "adversary.md"
BEGIN, END = "<!-- coverage table: generated from tests/adversary/table.py -->", "<!-- end of coverage table -->"


def test_every_bucket_stream_consumer_and_subject_of_names_is_covered() -> None:
    missing = [member for member in names_members() if member not in COVERAGE]
    assert not missing, (
        f"coord.naming.Names defines {missing} but the adversary does not cover them: add a Target (a strategy "
        "of hostile writes) or a Covered entry to tests/adversary/table.py, and regenerate docs/adversary.md"
    )
    stale = sorted(set(COVERAGE) - set(names_members()))
    assert not stale, f"tests/adversary/table.py covers names Names no longer defines: {stale}"


def test_every_bucket_has_a_target_of_its_own() -> None:
    buckets = [m for m in names_members() if m.endswith("_bucket")]
    assert buckets, "Names defines no bucket?"
    for member in buckets:
        assert isinstance(COVERAGE.get(member), Target), f"{member} is a key space: it needs hostile writes of its own"


def test_covered_entries_name_a_target_that_exists() -> None:
    for entry in COVERED:
        assert entry.by in TARGETS_BY_NAME, entry
    assert len(TARGETS_BY_NAME) == len(TARGETS), "two targets share a name"


def test_the_coverage_table_in_the_docs_is_the_one_the_suite_uses() -> None:
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC} has lost its generated table markers"
    shown = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert shown == markdown(), (
        "docs/adversary.md's coverage table is out of date; regenerate it with\n"
        "  .venv/bin/python -c 'from tests.adversary.table import markdown; print(markdown())'"
    )


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_target_writes_into_the_names_it_claims(data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(TARGETS))
    writes: list[Write] = data.draw(target.strategy)
    placeholder = Names(NS)
    for write in writes:
        if write.kind in ("kv", "obj"):
            assert write.bucket in target.members or write.bucket in names_members(), write
            assert isinstance(getattr(placeholder, write.bucket), str)
        else:
            assert write.subject.startswith(f"{NS}."), write
            assert all(token for token in write.subject.split(".")), f"empty token in {write.subject!r}"
