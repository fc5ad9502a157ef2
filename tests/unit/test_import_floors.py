"""The floors of lxsub (docs/ARCHITECTURE.md, "Floors"): no import runs
upward. Every module's imports are read with ast, those in `if
TYPE_CHECKING:` blocks and inside functions included, so a floor cannot be
crossed by a late or type-only import either."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Upward imports tolerated for now, each (importing module, imported
# module); an entry that no longer happens fails the test too, so the list
# cannot outlive the violations it names. Empty: keep it so.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(module: str, is_package: bool, node: ast.AST) -> list[str]:
    """The modules an import statement names (for `from X import y`, both X
    and X.y: y may be a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]


def import_graph() -> dict[str, set[str]]:
    """module -> every lxsub module (or package) it imports, anywhere in its
    text; `from X import name` counts X and, if it is a module, X.name."""
    paths = sorted(SRC.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        module = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        out: set[str] = set()
        for node in ast.walk(tree):
            out.update(n for n in _imported(module, path.name == "__init__.py", node)
                       if n in modules)
        graph[module] = out
    return graph


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _crossings(graph: dict[str, set[str]], lower: tuple[str, ...],
               upper: tuple[str, ...]) -> set[tuple[str, str]]:
    """(module, imported module) where a module under `lower` imports one
    under `upper`; of a package and its module (`from X import y`), the
    module is named."""
    found = set()
    for module, names in graph.items():
        if not any(_under(module, p) for p in lower):
            continue
        for name in names:
            if any(_under(name, p) for p in upper):
                finer = [n for n in names if n != name and _under(n, name)]
                if not finer:
                    found.add((module, name))
    return found


def test_the_graph_sees_type_checking_and_late_imports():
    # The rule below would pass on an empty graph: check it reads what it must.
    graph = import_graph()
    assert "lxsub.kernel.instance" in graph["lxsub.kernel.dispatch"]     # TYPE_CHECKING only
    assert "lxsub.kernel.fs.drvfs" in graph["lxsub.kernel.fs.registry"]  # inside a function
    assert "lxsub.kernel.vfs.vfs" in graph["lxsub.kernel.instance"]


def test_vfs_does_not_import_the_instance():
    """kernel/vfs/ is given a Vfs and a Caller, never the Instance."""
    found = _crossings(import_graph(), ("lxsub.kernel.vfs",), ("lxsub.kernel.instance",))
    assert found == set()


def test_kernel_and_lxbus_do_not_import_manager_or_cli():
    found = _crossings(import_graph(), ("lxsub.kernel", "lxsub.lxbus"),
                       ("lxsub.manager", "lxsub.cli"))
    assert found - KNOWN_UPWARD == set(), "new upward imports"
    assert KNOWN_UPWARD - found == set(), "fixed: take them out of KNOWN_UPWARD"


def test_platform_imports_nothing_of_the_kernel():
    found = _crossings(import_graph(), ("lxsub.platform",), ("lxsub.kernel",))
    assert found == set()
