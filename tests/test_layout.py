"""The package layout: wings import only the wings below them, and no file imports itself
back through others.

Every ``import`` statement in ``fastdata/`` counts, also those inside functions (they run
too, later); the parent packages that Python imports implicitly do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fastdata"

# Lowest first: a wing may import its own modules and the wings before it.
WINGS = ["errors", "shards", "convert", "decode", "transforms", "loading", "pictures", "train",
         "tools"]  # fmt: skip
TOP = {"fastdata", "fastdata.cli", "fastdata.__main__"}  # the public face: above every wing


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _rank(module: str) -> int:
    if module in TOP:
        return len(WINGS)
    return WINGS.index(module.split(".")[1])


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The fastdata modules that ``path`` imports."""
    found = set()
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))  # fmt: skip
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_wings_import_only_wings_below() -> None:
    upward = [
        f"{src} imports {dst}"
        for src, targets in _graph().items()
        for dst in targets
        if _rank(dst) > _rank(src)
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [node, nxt]))
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_each_wing_is_a_documented_package() -> None:
    wings = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert wings == sorted(WINGS[1:])
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py", "errors.py"]
    for wing in wings:
        doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), (
            f"fastdata/{wing}/__init__.py: say what the wing may import"
        )
