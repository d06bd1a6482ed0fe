"""The layering docs/architecture.md promises, read from the code's own imports (TYPE_CHECKING ones too).

- ``coord`` never imports ``dispatch``, ``workers`` or ``corral``; ``workers`` never imports
  ``dispatch``; ``dispatch`` and ``workers`` never import the CLI (``corral``).
- No coord service imports the connection handle: only ``coord.connection`` (the composition root)
  and the package's own ``__init__`` know ``Coord``.
- There is no import cycle inside ``coord``.
- No module of coord, dispatch or workers is longer than 500 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("coord", "dispatch", "workers", "corral")
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (absolute or relative); ``from P import N`` counts as P.N if that is a module."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in MODULES else target)
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _violations(layer: str, forbidden: tuple[str, ...]) -> Iterator[str]:
    for name, imported in IMPORTS.items():
        if _top(name) != layer:
            continue
        for target in sorted(imported):
            if _top(target) in forbidden:
                yield f"{name} imports {target}"


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [("coord", ("dispatch", "workers", "corral")), ("workers", ("dispatch", "corral")), ("dispatch", ("corral",))],
)
def test_imports_point_down_only(layer: str, forbidden: tuple[str, ...]) -> None:
    assert list(_violations(layer, forbidden)) == []


def test_no_coord_service_imports_the_connection_handle() -> None:
    allowed = {"coord", "coord.connection"}
    offenders = [
        f"{name} imports {target}"
        for name, imported in IMPORTS.items()
        if _top(name) == "coord" and name not in allowed
        for target in sorted(imported & {"coord", "coord.connection"})
    ]
    assert offenders == []


def test_there_is_no_import_cycle_inside_coord() -> None:
    graph = {
        name: {t for t in imported if t in MODULES and _top(t) == "coord" and t != name}
        for name, imported in IMPORTS.items()
        if _top(name) == "coord"
    }
    cycles = [component for component in _strongly_connected(graph) if len(component) > 1]
    assert cycles == []


def test_no_module_of_the_substrate_is_over_500_lines() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if _top(name) in ("coord", "dispatch", "workers") and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_layering_check_sees_the_modules_and_their_imports() -> None:
    # Guards the checks above against passing vacuously (a wrong root, a parser that finds nothing).
    assert {"coord.connection", "coord.kv.bucket", "dispatch.reclaimer", "workers.runtime"} <= MODULES.keys()
    assert {"coord.kv", "coord.tasks.codec"} <= IMPORTS["coord.tasks.engine"]
    assert "coord.connection" in IMPORTS["workers.runtime"]


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is small, but recursion limits are not worth the risk)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components
