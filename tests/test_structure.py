"""The shape of the code: in device/ no module imports another that (directly or not) imports it back,
function-level imports included (a circle means two modules that cannot be read, tested or changed
apart), and no module of the product grows past a size one can hold in one's head."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVICE = ROOT / "device"
MAX_LINES = 400


def module_names() -> dict[str, Path]:
    names = {}
    for path in DEVICE.rglob("*.py"):
        parts = path.relative_to(DEVICE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The device modules `name` imports anywhere in its file (a package's own parents excluded)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    out = set()
    for target in targets:
        while target and target not in known:  # `from device.x import name`: the module device.x
            target = target.rpartition(".")[0]
        if target.startswith("device") and target != name and not name.startswith(target + "."):
            out.add(target)
    return out


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(frozenset(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles_in_device() -> None:
    known = module_names()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert "device.pipeline" in graph["device.daemon"]  # the graph sees what it should
    assert "device.web.state" in graph["device.web.api"]
    found = [sorted(group) for group in circles(graph)]
    assert found == [], f"import circles: {found}"


def test_the_composition_root_imports_neither_the_daemon_nor_the_web() -> None:
    known = module_names()
    assert not {m for m in imported("device.pipeline", known["device.pipeline"], known)
                if m == "device.daemon" or m.startswith("device.web")}


def test_no_module_is_longer_than_400_lines() -> None:
    modules = [p for folder in ("device", "converters", "bench") for p in (ROOT / folder).rglob("*.py")]
    assert len(modules) > 50
    long = {str(p.relative_to(ROOT)): n for p in modules if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"split these by concern: {long}"
