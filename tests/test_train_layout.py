"""train/'s layout: packages by concern, each importing only those below
it, the command lines and wiring at the top, and no module importing
itself back through others. Read from the source (imports inside
functions included), so a lazy import cannot hide a wrong-way edge."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "train")

# A package may import those of lower rank only. The top level (the
# command lines and the wiring) may import any package; no package may
# import the top level.
RANK = {"runtime": 0, "data": 1, "model": 2, "loop": 3, "interop": 3,
        "plan": 4}


def _modules():
    """{dotted module name: path} of every module under train/."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3]
                dotted = rel.replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(path):
    """The train modules that `path` imports, at any depth."""
    imported = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names.append(node.module)
        else:
            continue
        for name in names:
            # The longest prefix that is a module: `from train.data import
            # order` imports train.data.order, `from train.data.order
            # import X` imports train.data.order.
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != "train":
                imported.add(name)
    return imported


GRAPH = {module: _imports(path) - {module}
         for module, path in MODULES.items()}


def _package(module):
    parts = module.split(".")
    if len(parts) < 2:
        return None  # train/__init__.py, the top level
    return parts[1] if len(parts) > 2 or parts[1] in RANK else None


def test_every_subpackage_is_ranked():
    packages = {p for p in map(_package, MODULES) if p}
    assert packages == set(RANK)
    assert len(MODULES) > 40


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _package(m)))
def test_a_package_imports_only_packages_below_it(module):
    own = _package(module)
    for target in GRAPH[module]:
        other = _package(target)
        assert other is not None, (
            f"{module} imports the top level ({target})")
        assert other == own or RANK[other] < RANK[own], (
            f"{module} ({own}) imports {target} ({other}): upward")


def test_no_module_imports_itself_back():
    done, active = set(), []

    def visit(module):
        if module in active:
            cycle = active[active.index(module):] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        active.append(module)
        for target in sorted(GRAPH[module]):
            visit(target)
        active.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def test_the_checker_sees_lazy_and_wrong_way_imports(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from train.loop import trainer\n"
                    "    import train.flags\n")
    assert _imports(str(path)) == {"train.loop", "train.loop.trainer",
                                   "train.flags"}


def test_the_longest_test_files_named_for_scheduling_exist():
    """tests/conftest.py starts these files first; a renamed file would
    silently go back to its alphabetical turn."""
    from tests.conftest import LONGEST_FILES
    here = os.path.dirname(os.path.abspath(__file__))
    missing = [name for name in LONGEST_FILES
               if not os.path.isfile(os.path.join(here, name))]
    assert not missing
    assert len(set(LONGEST_FILES)) == len(LONGEST_FILES)
