"""No import circle in the package: an AST walk over ckf_dist/ and kernels/ (imported as ckf_dist.kernels).

Every ``import`` and ``from ... import`` counts as an edge, at module level and inside functions
alike (a lazy import hides a circle, it does not remove it); only imports under
``if TYPE_CHECKING:`` are left out (they never run). ``from pkg import name`` is an edge to
``pkg.name`` when that is a module of the package, else to ``pkg``. A circle is reported with the
file and line of each of its imports.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"ckf_dist": ROOT / "ckf_dist", "ckf_dist.kernels": ROOT / "kernels"}


def package_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (packages by their __init__)."""
    mods: dict[str, Path] = {}
    for prefix, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([prefix, *parts])] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes that run (anything but the body of ``if TYPE_CHECKING:``)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_edges(mods: dict[str, Path]) -> dict[str, dict[str, tuple[Path, int]]]:
    """module -> {imported package module: (file, line of the first such import)}."""
    edges: dict[str, dict[str, tuple[Path, int]]] = {m: {} for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]  # the package relative imports start from
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = here[: len(here) - (node.level - 1)]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                for a in node.names:
                    sub = f"{base_name}.{a.name}"
                    targets.append(sub if sub in mods else base_name)
            for t in targets:
                # `import ckf_dist.a.b` names the module; a name beyond a module is its attribute
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod:
                    edges[mod].setdefault(t, (path, node.lineno))
    return edges


def find_cycles(edges: dict[str, dict[str, tuple[Path, int]]]) -> list[list[str]]:
    """One cycle (as a closed path of module names) per strongly connected component of size > 1."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    sccs: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan; the package is small enough for recursion
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    cycles = []
    for comp in sccs:
        members, start = set(comp), comp[0]
        # shortest path start -> ... -> start inside the component (BFS)
        prev: dict[str, str] = {}
        frontier, seen, end = [start], {start}, None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v]):
                    if w == start:
                        end = v
                        break
                    if w in members and w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [end]
        while path[-1] != start:
            path.append(prev[path[-1]])
        cycles.append(list(reversed(path)) + [start])
    return cycles


def describe(cycle: list[str], edges) -> str:
    hops = []
    for a, b in zip(cycle, cycle[1:]):
        path, line = edges[a][b]
        hops.append(f"{a} -> {b} ({path.relative_to(ROOT)}:{line})")
    return "; ".join(hops)


def test_the_package_has_no_import_circle():
    mods = package_modules()
    edges = import_edges(mods)
    assert "ckf_dist.kernels.multi_lora.op" in mods and "ckf_dist.train.recipe" in mods
    assert sum(len(e) for e in edges.values()) > 50, "the walk found almost no imports"
    cycles = find_cycles(edges)
    assert not cycles, "import circles:\n" + "\n".join(describe(c, edges) for c in cycles)


def test_the_walk_finds_a_planted_circle_through_a_function_level_import(tmp_path):
    """The detector itself: a circle closed by a lazy, relative import is found and reported."""
    pkg = tmp_path / "ckf_dist"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("from ckf_dist.sub.b import g\n\ndef f():\n    return g()\n")
    (pkg / "sub" / "b.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from ckf_dist import c\n\n"
                                      "def g():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from ckf_dist.sub import b\n")
    global ROOT, SOURCES
    saved = ROOT, SOURCES
    ROOT, SOURCES = tmp_path, {"ckf_dist": pkg}
    try:
        edges = import_edges(package_modules())
        cycles = find_cycles(edges)
        text = describe(cycles[0], edges) if cycles else ""
    finally:
        ROOT, SOURCES = saved
    assert "ckf_dist.c" not in edges["ckf_dist.sub.b"], "TYPE_CHECKING imports never run"
    assert cycles == [["ckf_dist.sub.a", "ckf_dist.sub.b", "ckf_dist.sub.a"]]
    assert text == ("ckf_dist.sub.a -> ckf_dist.sub.b (ckf_dist/sub/a.py:1); "
                    "ckf_dist.sub.b -> ckf_dist.sub.a (ckf_dist/sub/b.py:6)")
