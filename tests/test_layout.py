"""The shape of the code, checked: layers only import downwards, no import cycles, no sys.path
tricks, no private attribute of another library read in product code.

Layers (lowest first): distributed <- reporting <- tuning <- cifar_lab (the command lines);
benchmarks may use all of them. Imports inside functions count as much as those at the top.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"distributed": 0, "reporting": 1, "tuning": 2, "cifar_lab": 3}
PRODUCT = [*LAYERS, "benchmarks"]


def _modules() -> dict[str, Path]:
    out = {}
    for package in PRODUCT:
        for path in sorted((ROOT / package).glob("*.py")):
            name = f"{package}.{path.stem}" if path.stem != "__init__" else package
            out[name] = path
    return out


def _is_main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`: code that runs when the file is executed, never when imported."""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and getattr(test.left, "id", "") == "__name__"
            and any(getattr(c, "value", None) == "__main__" for c in test.comparators))


def _imports(path: Path) -> set[str]:
    """Project modules that importing this file pulls in, lazy imports inside functions included
    (package-level `from x import y` resolved to x.y when y is a module). The `__main__` block of
    a script is not part of the import graph: `distributed/train.py` run as a script hands over to
    `cifar_lab.cli`, but `import distributed.train` imports nothing above its layer."""
    mods = _modules()
    found = set()
    tree = ast.parse(path.read_text())
    tree.body = [n for n in tree.body if not _is_main_block(n)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in LAYERS}
    return found


def test_layers_only_import_downwards():
    upward = []
    for name, path in _modules().items():
        layer = LAYERS.get(name.split(".")[0])
        if layer is None:
            continue  # benchmarks sit on top of everything
        upward += [f"{name} -> {dep}" for dep in _imports(path) if LAYERS[dep.split(".")[0]] > layer]
    assert upward == []


def test_no_import_cycles():
    graph = {name: {d for d in _imports(path) if d in _modules() and d != name} for name, path in _modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_the_checks_above_can_fail(tmp_path, monkeypatch):
    """An upward import and a cycle, planted in a copy of a package, are found."""
    fake = tmp_path / "distributed"
    fake.mkdir()
    (fake / "a.py").write_text("from distributed import b\nfrom reporting import report\n")
    (fake / "b.py").write_text("def f():\n    from distributed import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setitem(LAYERS, "reporting", 1)
    (tmp_path / "reporting").mkdir()
    (tmp_path / "reporting" / "report.py").write_text("")
    for package in ("tuning", "cifar_lab", "benchmarks"):
        (tmp_path / package).mkdir()
    with pytest.raises(AssertionError, match="distributed.a -> reporting.report"):
        test_layers_only_import_downwards()
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycles()


def _offences(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
            out.append(f"{path.name}:{node.lineno}: sys.path manipulation (the project is installed)")
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            out.append(f"{path.name}:{node.lineno}: reads the private attribute {node.attr!r} of another object")
    return out


@pytest.mark.parametrize("path", [p for package in PRODUCT for p in sorted((ROOT / package).glob("*.py"))],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_path_tricks_and_no_private_reads_of_other_libraries(path):
    assert _offences(path) == []


def test_the_private_read_check_can_fail(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text("import sys\nsys.path.insert(0, '.')\ndef f(grid):\n    return grid._experiment_analysis\n")
    assert sorted(o.split(": ", 1)[1][:20] for o in _offences(planted)) == ["reads the private at", "sys.path manipulatio"]
