"""The package's modules import each other without a cycle.

The graph is read off the source: every ``import`` of a watchtower module,
at module level or inside a function (a lazy import that hides a cycle is
still a cycle for the reader), except those under ``if TYPE_CHECKING:``,
which never run.  A module's own parent packages are not edges: Python has
them imported before the module itself.  Then each module is imported in a
fresh interpreter, alone, which fails on a cycle that the order of imports
would otherwise hide.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.support.checkout import package_modules


def _imports(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import under ``node``, leaving out ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            found.extend(i for branch in child.orelse for i in _imports_of(branch))
            continue
        found.extend(_imports_of(child))
    return found


def _imports_of(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    own = [node] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
    return own + _imports(node)


def import_graph() -> dict[str, set[str]]:
    """Module -> the watchtower modules it imports."""
    modules = package_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in modules)
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in modules:
                    edges.add(submodule)
                elif target in modules:
                    edges.add(target)
        parents = {name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)}
        graph[name] = edges - parents - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_imports_at_module_level_and_inside_functions() -> None:
    graph = import_graph()
    # Module level, relative: the models take the statuses from their own module.
    assert "watchtower.statuses" in graph["watchtower.models"]
    # Inside a function: the package root imports the web app on first use.
    assert "watchtower.web" in graph["watchtower"]
    # Parents are not edges: every module of the package names the package.
    assert "watchtower" not in graph["watchtower.models"]


def test_a_cycle_is_found_when_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_module_of_the_package_is_part_of_an_import_cycle() -> None:
    assert cycles(import_graph()) == []


#: Imported alone, each module after the package was forgotten: a cycle that
#: only works in one order of imports fails here.  (``__main__`` runs the CLI.)
IMPORT_EACH_ALONE = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "watchtower" or m.startswith("watchtower.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        failed.append(f"{name}: {type(error).__name__}: {error}")
print("\\n".join(failed))
"""


def test_each_module_imports_alone() -> None:
    modules = sorted(name for name in package_modules() if not name.endswith(".__main__"))
    result = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, *modules],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", result.stdout
