"""The package's house, read from its own imports (``ast``): no import circle, and every import goes down the
rooms of docs/design.md ("The house") or stays in its room, apart from the short, commented allow-list below."""
import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mnist_lenet_spark"

#: the rooms, bottom first; a module belongs to the longest prefix that names it (docs/design.md, "The house")
ROOMS = [
    ("leaves", ["", "files", "loop.sharding", "loop.sums"]),  # "": the package's __init__ (its version)
    ("layers", ["nn"]),
    ("settings and data", ["config", "data"]),
    ("networks", ["models"]),
    ("the driver's loop", ["loop"]),
    ("the task side", ["wire", "executor"]),
    ("the driver's Spark side", ["cluster", "session", "spark_conf", "readers", "progress", "plots"]),
    ("trainers", ["spark", "async_sgd", "local"]),
    ("fit and its outputs", ["tracking", "mlflow_model", "images", "fit"]),
    ("the estimator", ["ml"]),
    ("commands", ["jobs"]),
]

#: imports that go up a room, each with its reason; at most two
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(ROOMS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + ".") or prefix == "":
                if len(prefix) > best:
                    best, rank = len(prefix), i
    return rank


def imports() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports (at any depth of its code)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    found = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").startswith("mnist_lenet_spark"):
                    source = node.module[len("mnist_lenet_spark"):].lstrip(".")
                else:
                    continue
                for alias in node.names:  # `from package import module` names the module
                    candidate = f"{source}.{alias.name}" if source else alias.name
                    targets.add(candidate if candidate in modules else source)
            elif isinstance(node, ast.Import):
                targets |= {a.name[len("mnist_lenet_spark"):].lstrip(".") for a in node.names
                            if a.name.startswith("mnist_lenet_spark")}
        found[name] = {t for t in targets if t != name and t in modules}
    return found


def test_every_module_has_a_room():
    assert all(room(m) is not None for m in imports())


def test_no_import_circle():
    graph, state, stack = imports(), {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_imports_go_down_the_rooms():
    upward = sorted((m, t) for m, targets in imports().items() for t in targets if room(t) > room(m))
    unexplained = [f"{m} ({ROOMS[room(m)][0]}) -> {t} ({ROOMS[room(t)][0]})" for m, t in upward
                   if (m, t) not in ALLOWED_UPWARD]
    assert not unexplained, "upward imports:\n" + "\n".join(unexplained)
    assert len(ALLOWED_UPWARD) <= 2


def test_the_check_finds_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above could fail: on a made-up package with both faults they do."""
    fake = tmp_path / "mnist_lenet_spark"
    (fake / "loop").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "loop" / "__init__.py").write_text("")
    (fake / "files.py").write_text("from mnist_lenet_spark import ml\n")  # a leaf importing the estimator
    (fake / "ml.py").write_text("from . import files\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    graph = imports()
    assert graph["files"] == {"ml"} and graph["ml"] == {"files"}
    with pytest.raises(AssertionError, match="files -> ml -> files"):
        test_no_import_circle()
    with pytest.raises(AssertionError, match=r"files \(leaves\) -> ml \(the estimator\)"):
        test_imports_go_down_the_rooms()
