"""Architecture rules that import-linter cannot express (it cannot forbid ray.serve, a subpackage of an external)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "rayml"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("package", ["data", "models"])
def test_data_and_models_never_import_ray_serve(package: str) -> None:
    offenders = {
        str(p.relative_to(PKG)): sorted(i for i in _imports(p) if i == "ray.serve" or i.startswith("ray.serve."))
        for p in (PKG / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_library_never_prints() -> None:
    # the CLI prints; the library logs (ruff T201 checks this too, but a per-file ignore could hide it)
    printing = [
        str(p.relative_to(PKG))
        for p in PKG.rglob("*.py")
        if "cli" not in p.parts and re.search(r"(?<![\w.])print\(", p.read_text())
    ]
    assert printing == []
