"""The house's rules, read from the import graph: no circles, and DESIGN's one-way arrows.

grimp reads every import statement, including those inside functions and under
``TYPE_CHECKING``, so a lazy import cannot hide a circle. The layer contracts
themselves run as ``lint-imports`` in ``make test`` (``[tool.importlinter]`` in
``pyproject.toml``); this test keeps the circle rule, which import-linter has no
contract for.
"""

from __future__ import annotations

import grimp
import pytest

PACKAGES = ("binsearch", "index", "server")


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm over the module graph: every component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def test_no_import_circles(graph: grimp.ImportGraph) -> None:
    assert strongly_connected(graph) == []


def test_the_circle_finder_finds_a_circle() -> None:
    """The oracle itself: a hand-made graph with one circle of three and a tail."""
    g = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        g.add_import(importer=a, imported=b)
    assert strongly_connected(g) == [["p.a", "p.b", "p.c"]]


def test_index_imports_numpy_and_numba_only() -> None:
    """DESIGN: ``index`` imports no torch, no strings-and-documents layer, nothing of ours above it."""
    g = grimp.build_graph(*PACKAGES, cache_dir=None, include_external_packages=True)
    allowed_outside = {"numpy", "numba", "llvmlite", "faiss"}  # faiss only lazily, for interop
    for module in g.find_descendants("index") | {"index"}:
        for imported in g.find_modules_directly_imported_by(module):
            top = imported.split(".")[0]
            if top in ("binsearch", "server"):
                raise AssertionError(f"{module} imports {imported}")
            if top not in PACKAGES and top not in allowed_outside and not _stdlib(top):
                raise AssertionError(f"{module} imports {imported}")


def _stdlib(name: str) -> bool:
    import sys

    return name in sys.stdlib_module_names
