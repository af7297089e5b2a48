"""The house rules that import-linter cannot express, checked on the source (docs/architecture.md).

- A package's private modules (``_name.py``) are imported only from inside that package: other packages
  import the names its ``__init__`` lists.
- No module is over MAX_LINES lines unless its docstring says why it must be one piece ("one piece").
- The layer contracts themselves are checked by ``lint-imports`` in ``make lint``; the last test here runs
  it too, so that a plain ``pytest`` run also fails on an upward import.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"syncsnapd": REPO / "daemon" / "syncsnapd", "syncsnap": REPO / "client" / "syncsnap"}
# A module this long is hard to read whole; split it by concern (STYLE.md: one concern per module).
MAX_LINES = 600


def _modules() -> list[tuple[str, Path]]:
    out = []
    for top, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [top, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            out.append((".".join(parts), path))
    return out


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


def _imported(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every ``from X import`` and ``import X`` in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = _package_of(module, path)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            # `from .pkg import _private` imports a private module too.
            out.extend((node.lineno, f"{name}.{a.name}") for a in node.names if a.name.startswith("_"))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
    return out


def test_private_modules_are_imported_only_inside_their_package() -> None:
    bad = []
    for module, path in _modules():
        importer_pkg = _package_of(module, path)
        for line, name in _imported(module, path):
            parts = name.split(".")
            if parts[0] not in ROOTS:
                continue
            for i, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__"):
                    # A private module belongs to its package (and that package's subpackages).
                    owner = ".".join(parts[:i])
                    if importer_pkg != owner and not importer_pkg.startswith(owner + "."):
                        bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
                    break
    assert not bad, "import these through the package's __init__:\n" + "\n".join(bad)


def test_modules_are_small_or_say_why() -> None:
    long = []
    for _, path in _modules():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and "one piece" not in doc:
            long.append(f"{path.relative_to(REPO)}: {lines} lines")
    assert not long, f"modules over {MAX_LINES} lines without a reason in their docstring:\n" + "\n".join(long)


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("lint-imports is not installed (make setup installs it with the dev extra)")
    run = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
