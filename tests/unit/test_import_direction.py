"""The rooms of the house and which way imports may go, checked on the AST of every file.

    models/              imports nothing of stream_app, nor faust
    stream_app/core/     pure: no faust, mode, aiokafka, kafka; nothing of worker, brokers, lab
    stream_app/brokers/  starts brokers: nothing of worker, lab
    stream_app/worker/   the Faust shell: nothing of lab
    no import circle among stream_app's and models' modules (lazy imports inside functions count too)

The checker runs on a copy of the tree with a forbidden import added, to prove it catches one.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (room, forbidden top-level modules or stream_app sub-packages)
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("models", ("stream_app", "faust", "mode", "aiokafka")),
    ("stream_app/core", ("faust", "mode", "aiokafka", "kafka", "stream_app.worker", "stream_app.brokers",
                         "stream_app.lab", "stream_app.cli", "stream_app.offline_cli")),
    ("stream_app/brokers", ("stream_app.worker", "stream_app.lab", "stream_app.core", "faust")),
    ("stream_app/worker", ("stream_app.lab", "stream_app.cli")),
]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, package: str) -> list[str]:
    """Every module a file imports, anywhere in it (relative imports resolved against ``package``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names.append(base)
            names.extend(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "import_module", "__import__"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def _matches(name: str, forbidden: str) -> bool:
    return name == forbidden or name.startswith(forbidden + ".")


def violations(root: Path) -> list[str]:
    bad: list[str] = []
    for room, forbidden in RULES:
        for path in sorted((root / room).rglob("*.py")):
            mod = module_name(root, path)
            package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
            for name in imported_modules(path, package):
                for f in forbidden:
                    if _matches(name, f):
                        bad.append(f"{path.relative_to(root)} imports {name} ({room} must not import {f})")
    return bad


def import_graph(root: Path) -> dict[str, set[str]]:
    modules: dict[str, Path] = {}
    for top in ("stream_app", "models"):
        for path in (root / top).rglob("*.py"):
            modules[module_name(root, path)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for name in imported_modules(path, package):
            if name in modules and name != mod and not modules[name].name == "__init__.py":
                graph[mod].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_rooms_exist() -> None:
    for room in ("models", "stream_app/core", "stream_app/worker", "stream_app/brokers", "stream_app/lab"):
        assert (ROOT / room / "__init__.py").is_file(), room


def test_imports_go_one_way() -> None:
    assert violations(ROOT) == []


def test_no_import_circle() -> None:
    assert cycles(import_graph(ROOT)) == []


@pytest.mark.parametrize("room, line", [
    ("stream_app/core", "import faust\n"),
    ("stream_app/core", "from aiokafka import AIOKafkaConsumer\n"),
    ("stream_app/core", "def f():\n    from stream_app.worker import agents\n"),
    ("stream_app/core", "from ..lab import bench\n"),
    ("stream_app/worker", "from stream_app.lab.harness import http_get\n"),
    ("models", "from stream_app.core.state import encode\n"),
])
def test_the_check_catches_a_forbidden_import(tmp_path: Path, room: str, line: str) -> None:
    for top in ("stream_app", "models"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / room / "intruder.py").write_text(line)
    assert any("intruder.py" in v for v in violations(tmp_path))


def test_the_check_catches_a_circle(tmp_path: Path) -> None:
    for top in ("stream_app", "models"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "stream_app/lab/a_one.py").write_text("from stream_app.lab import a_two\n")
    (tmp_path / "stream_app/lab/a_two.py").write_text("def f():\n    import stream_app.lab.a_one\n")
    assert ["stream_app.lab.a_one", "stream_app.lab.a_two"] in cycles(import_graph(tmp_path))


def test_offline_cli_does_not_import_faust() -> None:
    names = imported_modules(ROOT / "stream_app" / "offline_cli.py", "stream_app")
    assert not [n for n in names if n.split(".")[0] == "faust"]
