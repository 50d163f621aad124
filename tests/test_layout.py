"""The package's architecture (design.md "Layout"): subpackages by idea, imports that point one way.

The import graph is read from the source with `ast` (every import, the lazy ones inside functions
too), so a cycle or an upward import fails here before it can fail at run time."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "resx"
# What each subpackage may import (besides itself); the top level (__init__, __main__, cli) may import all.
ALLOWED = {"core": set(), "theory": {"core"}, "runs": {"core", "theory"}, "figures": {"core"},
           "scale": {"core", "theory", "runs", "figures"}}
TOP_LEVEL = {"__init__", "__main__", "cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules `name` imports, resolved to the most specific known module (a package's
    submodule in `from pkg import sub`), external ones by their top-level name."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
            out.update(subs or [target])
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle among the internal modules as a path [a, b, ..., a], or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges:
                continue
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle_and_passes_a_chain():
    """The checker itself: a -> b -> c -> a is reported, a -> b -> c is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"os"}}) is None


def test_resx_has_no_import_cycle():
    """No module of resx imports one that imports it back, lazily or not."""
    assert find_cycle(graph()) is None, f"import cycle: {' -> '.join(find_cycle(graph()))}"


def test_resx_never_imports_streamlit():
    """resx computes, pages draw: no module of resx imports streamlit."""
    offenders = {m: sorted(i for i in deps if i.split(".")[0] == "streamlit") for m, deps in graph().items()}
    assert not {m: v for m, v in offenders.items() if v}


def test_imports_point_down_the_layers():
    """core <- theory <- runs <- scale, and figures reads results only (core): no import goes up."""
    upward = []
    for name, deps in graph().items():
        parts = name.split(".")
        if len(parts) < 3:   # resx, resx.cli, resx.__main__ and the subpackages' own __init__s
            continue
        layer = parts[1]
        for dep in deps:
            dep_parts = dep.split(".")
            if dep_parts[0] == "resx" and len(dep_parts) > 1 and dep_parts[1] != layer:
                if dep_parts[1] not in ALLOWED[layer]:
                    upward.append(f"{name} imports {dep}")
    assert not upward, upward


@pytest.mark.parametrize("sub", sorted(ALLOWED))
def test_every_subpackage_says_what_lives_there(sub):
    """Each subpackage's __init__ has a docstring that names what it may import."""
    doc = ast.get_docstring(ast.parse((PACKAGE / sub / "__init__.py").read_text()))
    assert doc and "import" in doc.lower()


def test_top_level_holds_only_the_entry_points():
    """resx/ itself holds __init__, __main__ and cli; every other module sits in a subpackage."""
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ALLOWED)
