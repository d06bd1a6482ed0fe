"""The documentation only points at files that are in the repository."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from coord.tasks import TaskRecord, TaskStatus
from coord.tasks.effects import notification_id

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md"]
TOP = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")} | {".ci", ".github"}

LINK = re.compile(r"\]\(([^)\s]+)\)")
"""The target of a markdown link ``[text](target)``."""
CODE = re.compile(r"`([A-Za-z0-9_.][A-Za-z0-9_./-]*)`")
"""A backticked word that may be a path."""
PROSE = re.compile(r"(?<![\w/.`-])([A-Z][A-Z0-9_]*\.md)\b")
"""A bare upper-case markdown file name in prose (``DESIGN.md``)."""


def _is_repo_path(word: str) -> bool:
    head = word.split("/", 1)[0]
    if "/" in word:
        return head in TOP and "{" not in word and "*" not in word
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*\.md", word))


def _referenced(doc: Path) -> set[str]:
    text = doc.read_text()
    found: set[str] = set()
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        found.add(target.split("#", 1)[0])
    found |= {w.rstrip("/.") for w in CODE.findall(text) if _is_repo_path(w.rstrip("/."))}
    found |= set(PROSE.findall(text))
    return found


def _exists(doc: Path, target: str) -> bool:
    return any((base / target).exists() for base in (doc.parent, ROOT))


def test_every_file_the_docs_reference_is_in_the_repository() -> None:
    missing = [
        f"{doc.relative_to(ROOT)} -> {target}"
        for doc in DOCS
        for target in sorted(_referenced(doc))
        if not _exists(doc, target)
    ]
    assert missing == []


def test_the_scan_sees_links_paths_and_bare_file_names(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text("See [tasks](tasks.md#ids), `coord/wire.py`, DESIGN.md and [site](https://example.org/x.md).")
    assert _referenced(doc) == {"tasks.md", "coord/wire.py", "DESIGN.md"}


def test_docs_give_the_notification_id_the_code_uses() -> None:
    now = datetime.now(UTC)
    record = TaskRecord(
        task_id="t", queue="q", status=TaskStatus.PENDING, epoch=2, revision=7, created_at=now, updated_at=now
    )
    assert notification_id(record) == "t:2:7"
    for page in ("tasks.md", "architecture.md", "observability.md"):
        text = (ROOT / "docs" / page).read_text()
        assert "{task}:{epoch}:{revision}" in text, page
        claims = re.findall(
            r"`\{task\}:\{attempt\}`,?\s+(?:equal to|the same as)\s+the\s+notification", text
        ) + re.findall(r"Nats-Msg-Id`?\s+is\s+`\{task\}:\{attempt\}`", text)
        assert claims == [], (page, claims)
