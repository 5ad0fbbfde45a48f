"""No import cycles in haloserve: the module graph, read from the source with ``ast``, is a DAG.

Every import counts, wherever it is written: at module level, inside a function (an import moved into
a function to dodge a cycle is still a cycle), under ``if TYPE_CHECKING:`` (a type named from a module
above is still a dependency on it) and in ``try``. Only the body of ``if __name__ == "__main__":`` is
left out: it runs when the file is a program (``python -m``), never when the module is imported.
An import names the most specific haloserve module it can: ``from haloserve.a import b`` is an edge to
``haloserve.a.b`` when that is a module, else to ``haloserve.a``; parent packages are not added.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from pathlib import Path

import haloserve

SRC = Path(haloserve.__file__).parent

# Back edges of cycles that work in progress is removing, each with who removes it. Empty since issue 14
# landed; the list only shrinks: an entry whose edge is gone fails test_allowed_back_edges_still_exist.
ALLOWED: dict[tuple[str, str], str] = {}


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file for every module under the package directory ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides
    )


def _imports(node: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt) and _is_main_guard(child):
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _imports(child)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (see the module docstring for what counts)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules)
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in modules:
                    graph[name].add(target)
                elif source in modules:
                    graph[name].add(source)
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    """One cycle's modules and the imports between them, for the failure message."""
    edges = [f"  {a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
    return "\n".join([" <-> ".join(component), *edges])


@functools.cache
def _haloserve() -> dict[str, frozenset[str]]:
    return {name: frozenset(targets) for name, targets in import_graph(SRC).items()}


def test_haloserve_has_no_import_cycles() -> None:
    graph = {name: set(targets) for name, targets in _haloserve().items()}
    assert len(graph) > 100  # the walk found the package
    for a, b in ALLOWED:
        graph[a].discard(b)
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(graph, c) for c in found)


def test_allowed_back_edges_still_exist() -> None:
    graph = _haloserve()
    gone = [f"{a} -> {b} ({who})" for (a, b), who in ALLOWED.items() if b not in graph.get(a, frozenset())]
    assert not gone, "remove these fixed cycles from ALLOWED: " + ", ".join(gone)


def test_finder_sees_cycles_through_functions_and_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import b\n"
    )
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import x\n")
    (pkg / "c.py").write_text("import pkg.a\nx = 1\n")
    (pkg / "d.py").write_text("from pkg import a\nif __name__ == '__main__':\n    import pkg.e\n")
    (pkg / "e.py").write_text("from . import d\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.b"] == {"pkg.c"}
    assert graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
