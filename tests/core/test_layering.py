"""core/ is a leaf: it imports no surface (hf_integration, comfy_nodes) and not the zoo, at module level or inside
functions; and the imports among core modules form no cycle. Read statically (ast), so an import hidden in a
function that no test happens to call is caught as well."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core"
FORBIDDEN = ("hf_integration", "comfy_nodes", "zoo")
CORE_MODULES = sorted(p for p in CORE.glob("*.py"))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module path relative to the package root, dotted) of every import in ``path``, anywhere in it.

    ``from .x import y`` yields ``core.x`` and ``core.x.y`` (y may be a submodule); absolute imports of the
    package (``dynaccel.x``) are made relative to its root."""
    package = ["core"]  # every file checked here is a module of dynaccel.core
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dynaccel":
                    found.append((node.lineno, alias.name.partition(".")[2]))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if (node.module or "").split(".")[0] != "dynaccel":
                    continue
                base = node.module.split(".")[1:]
            else:
                base = package[: len(package) - (node.level - 1)] if node.level - 1 <= len(package) else None
                if base is None:
                    continue
                base = base + (node.module.split(".") if node.module else [])
            found.append((node.lineno, ".".join(base)))
            for alias in node.names:
                found.append((node.lineno, ".".join(base + [alias.name])))
    return [(line, mod) for line, mod in found if mod]


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: p.name)
def test_core_imports_no_surface_and_not_the_zoo(path):
    bad = [f"{path.name}:{line} imports {mod}" for line, mod in imported_modules(path)
           if mod.split(".")[0] in FORBIDDEN]
    assert not bad, "core/ must stay a leaf (use a hook instead): " + "; ".join(bad)


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from ..hf_integration import hub\n    from .. import zoo\n"
                      "    import dynaccel.comfy_nodes.plugin\n")
    tops = {m.split(".")[0] for _, m in imported_modules(sample)}
    assert tops == {"hf_integration", "zoo", "comfy_nodes"}


def _core_graph() -> dict[str, set[str]]:
    names = {p.stem for p in CORE_MODULES if p.name != "__init__.py"}
    graph: dict[str, set[str]] = {}
    for path in CORE_MODULES:
        if path.name == "__init__.py":
            continue
        edges = set()
        for _, mod in imported_modules(path):
            parts = mod.split(".")
            if parts[0] == "core" and len(parts) > 1 and parts[1] in names and parts[1] != path.stem:
                edges.add(parts[1])
        graph[path.stem] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_core_modules_import_each_other_without_cycles():
    graph = _core_graph()
    assert {"api", "registry", "presets", "plugins", "cli"} <= set(graph)
    assert "registry" in graph["api"] and "presets" in graph["registry"]  # the graph is really read
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle among core modules: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def _module_path_strings(path: Path) -> list[tuple[int, str]]:
    """String constants (not docstrings) that name a module path, e.g. ``".comfy_nodes.plugin"`` given to
    importlib: a way to import a surface that the import statements do not show."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
            and " " not in n.value and any(f".{p}" in f".{n.value}" for p in FORBIDDEN)]


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: p.name)
def test_core_names_no_surface_module_to_import_by_name(path):
    bad = [f"{path.name}:{line} names {text!r}" for line, text in _module_path_strings(path)]
    assert not bad, "core/ must not load surfaces by module name (the root __init__ hands over built-ins): " + \
        "; ".join(bad)
