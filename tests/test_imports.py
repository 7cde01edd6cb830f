"""The modules of ``worldkit`` import one another one way: no circle.

Every module under ``worldkit/`` is parsed with ``ast`` (nothing is imported), and each ``import`` of a
``worldkit`` module, at module level or inside a function, is an edge of the graph. A lazy import inside
a function still closes a circle: the two modules then each need the other, and neither can be read
(or moved) alone.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "worldkit"


def module_names() -> dict[str, Path]:
    """``worldkit.x.y`` -> its file, for every module of the package."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("worldkit",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported(node: ast.AST, here: str, is_package: bool, modules: set[str]) -> list[str]:
    """The ``worldkit`` modules one import statement needs (a package's ``__init__`` counts as a module)."""
    def nearest(name: str) -> str:  # worldkit.x.attr -> worldkit.x
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from . import x, from ..y import z
            package = here.split(".") if is_package else here.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" for alias in node.names]
    found = []
    for name in names:
        if name == "worldkit" or name.startswith("worldkit."):
            target = nearest(name)
            if target != here and target not in found:
                found.append(target)
    return found


def import_graph() -> dict[str, list[str]]:
    files = module_names()
    modules = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported(node, name, path.name == "__init__.py", modules):
                    if target not in edges:
                        edges.append(target)
        graph[name] = sorted(edges)
    return graph


def tangled_parts(graph: dict[str, list[str]]) -> list[set[str]]:
    """The strongly connected parts of the graph with more than one module: each module of a part
    reaches every other (Tarjan)."""
    index, low, stack, on_stack, parts = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.add(w)
                if w == v:
                    break
            if len(part) > 1:
                parts.append(part)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(parts, key=min)


def circle(graph: dict[str, list[str]], part: set[str]) -> list[str]:
    """A shortest circle inside ``part`` through its first module: ``[a, b, ..., a]``."""
    start = min(part)
    previous, frontier = {start: None}, [start]
    while frontier:
        following = []
        for v in frontier:
            if start in graph[v]:
                path = [start]
                while v is not None:
                    path.append(v)
                    v = previous[v]
                return path[::-1]
            for w in graph[v]:
                if w in part and w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise ValueError(f"{sorted(part)} is not a strongly connected part")


def cycles(graph: dict[str, list[str]]) -> list[str]:
    """Each circle as ``a -> b -> a``, with every module of its strongly connected part."""
    return [f"{' -> '.join(circle(graph, part))}   (all tangled: {', '.join(sorted(part))})"
            for part in tangled_parts(graph)]


def test_the_graph_sees_imports_at_module_level_and_inside_functions(tmp_path):
    graph = import_graph()
    assert "worldkit.rollout" in graph["worldkit.training"]  # module level
    assert "worldkit.animation" in graph["worldkit.evaluate"]  # inside a function
    assert "worldkit" in graph["worldkit.cli"]  # from worldkit import DISTRIBUTION
    assert cycles({"a": ["b", "d"], "b": ["c"], "c": ["a"], "d": ["a"], "e": ["a"]}) == [
        "a -> d -> a   (all tangled: a, b, c, d)"]
    assert cycles({"a": ["b"], "b": []}) == []


def test_worldkit_modules_import_one_another_without_a_circle():
    found = cycles(import_graph())
    assert not found, "import circles in worldkit/ (each line: a imports b imports ... a):\n" + "\n".join(found)


def test_the_core_imports_no_plugin_and_no_kernel():
    """``worldkit`` reaches its plugins and the kernels only through the registry (entry points): a module
    of the core that imported ``worldkit_plugins`` or ``worldkit_kernels`` would tie it to them."""
    found = []
    for name, path in module_names().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{name} imports {t}" for t in targets if t.split(".")[0] in ("worldkit_plugins", "worldkit_kernels")]
    assert not found, "\n".join(found)
