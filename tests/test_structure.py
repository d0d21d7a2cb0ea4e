"""The package's shape: stages import downwards only, and private names stay in their module.

Read from the source with ``ast``, so nothing is imported: every import
statement counts, at the top of a module or inside a function.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tf_cnnvis"
# Helpers of the test suite itself, which tests may share.
LOCAL_HELPERS = {"conftest", "numerics", "model_fuzz", "common"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PACKAGE_MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: pathlib.Path):
    """(module imported, names taken from it) for every import statement of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, [alias.name for alias in node.names]


def package_edges(name: str, path: pathlib.Path) -> set[str]:
    """The package's modules that ``name`` imports (a ``from package import module`` included)."""
    edges = set()
    for module, names in imports(path):
        if not module.startswith("tf_cnnvis"):
            continue
        for target in [module] + [f"{module}.{item}" for item in names]:
            if target in PACKAGE_MODULES and target != name and target != "tf_cnnvis":
                edges.add(target)
    return edges


def test_no_import_cycle_between_the_packages_modules():
    graph = {name: package_edges(name, path) for name, path in PACKAGE_MODULES.items()
             if name != "tf_cnnvis"}  # the package's own file only re-exports, lazily
    # A parent package's __init__ runs before its modules: the edge module -> parent is implied,
    # so a parent that imports its own modules is no cycle.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target.startswith(node + "."):
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def python_files():
    for folder in ("tf_cnnvis", "tests", "benchmarks", "examples"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_private_name_is_taken_from_another_module():
    offences = []
    for path in python_files():
        own = module_name(path) if path.is_relative_to(PACKAGE) else path.stem
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_aliases = {}
        for module, names in imports(path):
            if module in LOCAL_HELPERS or module == own or module == "__future__":
                continue
            if module.startswith("tf_cnnvis"):
                offences += [f"{path.relative_to(ROOT)}: from {module} import {name}"
                             for name in names if name.startswith("_") and not name.startswith("__")]
        for node in ast.walk(tree):  # import tf_cnnvis.x as y / from tf_cnnvis import x
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    full = alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
                    if full in PACKAGE_MODULES and full != own:
                        module_aliases[alias.asname or alias.name.split(".")[-1]] = full
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                                f"{module_aliases[node.value.id]}.{node.attr}")
    assert not offences, "private names used outside their module:\n" + "\n".join(offences)


def test_the_version_is_written_once():
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert not re.search(r"version\s*=\s*[\"']", setup)  # setup.py reads it from the package
    assignments = [path for path in PACKAGE.rglob("*.py")
                   if re.search(r"^__version__\s*=", path.read_text(encoding="utf-8"), re.MULTILINE)]
    assert assignments == [PACKAGE / "__init__.py"]
