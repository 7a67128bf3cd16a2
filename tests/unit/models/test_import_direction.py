"""models/ must never depend on the streaming side (faust, stream_app): checked on the AST."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = ("faust", "stream_app")
MODELS_DIR = Path(__file__).resolve().parents[3] / "models"


def imported_modules(path: Path) -> list[str]:
    """Every module name imported anywhere in a file (top level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("import_module", "__import__"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def test_models_files_exist() -> None:
    assert (MODELS_DIR / "rnn.py").is_file()


def test_models_never_import_faust_or_stream_app() -> None:
    bad = []
    for path in sorted(MODELS_DIR.rglob("*.py")):
        for name in imported_modules(path):
            if name.split(".")[0] in FORBIDDEN:
                bad.append(f"{path.name}: {name}")
    assert not bad, f"models/ imports the streaming side: {bad}"


def test_offline_cli_does_not_import_faust() -> None:
    cli = MODELS_DIR.parent / "stream_app" / "offline_cli.py"
    names = imported_modules(cli)
    assert not [n for n in names if n.split(".")[0] == "faust"]
