"""The package's floor plan, read from its own imports (every import, lazy ones included).

- no import cycle between modules;
- imports go down docs/ARCHITECTURE.md's floors: the command line (``cli``) sits at the edge, and
  research harnesses (``experiments``) depend on the library, never the reverse;
- modules use each other's public names only (no ``from whispergpt.x import _private``, no
  ``module._private``), and ``inference`` calls only public model methods;
- no module grows past ``MAX_LINES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "whispergpt"
MAX_LINES = 600
# docs/ARCHITECTURE.md's floors: a module imports only from its own floor or lower ones
FLOORS = {
    "errors": 0, "audio": 0, "runtime": 0, "config_io": 0, "plots": 0, "hub": 0,
    "models": 1, "codec": 2, "checkpoint": 2, "data": 3, "config": 4, "training": 5, "semantic": 6,
    "inference": 7, "llm_codec": 7, "evaluation": 8, "experiments": 9, "cli": 10, "__main__": 10, "": 10,
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (not run, so not a dependency)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def imports(mods: dict[str, tuple[Path, ast.Module]]) -> dict[str, set[str]]:
    """module -> the whispergpt modules it imports (a package import counts as its ``__init__``)."""
    graph: dict[str, set[str]] = {}
    for name, (_, tree) in mods.items():
        deps: set[str] = set()
        skip = _type_checking_only(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == "whispergpt")
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] != "whispergpt":
                    continue
                for a in node.names:  # ``from pkg import submodule`` imports the submodule
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in mods else node.module)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(imports(modules())) == []


def floor_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""  # "" is the package's own __init__
    return FLOORS[top]


def test_imports_go_down_the_floors():
    graph = imports(modules())
    assert {n.split(".")[1] for n in graph if "." in n} <= set(FLOORS)  # a new folder gets a floor
    up = [f"{n} -> {d}" for n, deps in graph.items() for d in deps if floor_of(d) > floor_of(n)]
    assert up == []


def _private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__")


def test_modules_use_each_others_public_names():
    mods = modules()
    wrong = []
    for name, (_, tree) in mods.items():
        aliases: dict[str, str] = {}  # local name -> whispergpt module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("whispergpt"):
                for a in node.names:
                    if _private(a.name) and node.module != name:
                        wrong.append(f"{name}: from {node.module} import {a.name}")
                    if f"{node.module}.{a.name}" in mods:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("whispergpt") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr)
                    and isinstance(node.value, ast.Name) and node.value.id in aliases):  # fmt: skip
                wrong.append(f"{name}: {node.value.id}.{node.attr}")
            # inference drives models through their public methods (``self.model.step``, not ``._step``)
            if (in_package(name, "whispergpt.inference") and isinstance(node, ast.Attribute)
                    and _private(node.attr) and isinstance(node.value, ast.Attribute)
                    and node.value.attr in ("model", "fine", "decode", "codec")):  # fmt: skip
                wrong.append(f"{name}: {ast.unparse(node)}")
    assert wrong == []


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, (path, _) in modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}
