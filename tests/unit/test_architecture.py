"""Architecture rules that import-linter cannot express (it cannot forbid ray.serve, a subpackage of an external,
nor "private to its package" for every package at once)."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "rayml"


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


# --- nobody imports another package's privates ---------------------------------------------------------------------
# Scripts that use rayml as a user does; tests/ and benchmarks/ may reach into internals (benchmarks measure them).
SCRIPT_DIRS = ("jobs", "clusters", "notebooks")


def _imported_modules(tree: ast.AST, importer: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import in ``tree``; ``from M import n`` yields ``M.n`` (n may be a module)."""
    package = importer.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield from ((node.lineno, f"{base}.{a.name}") for a in node.names)


def _private_owner(name: str) -> str | None:
    """The package that ``name`` is private to, None if it is public: ``rayml.serve`` for a private module or name
    anywhere under it (``rayml.serve._deploy``, ``rayml.serve.app._hash``).

    ``rayml._private`` holds the shared internals: private to the library as a whole (``rayml``).
    """
    parts = name.split(".")
    if parts[0] != "rayml":
        return None
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            return "rayml" if i == 1 else ".".join(parts[:2])
    return None


def _sources() -> Iterator[tuple[str, str, str]]:
    """(path for messages, importing module, source) of the library, the scripts and the notebooks' code cells."""
    for p in sorted(PKG.rglob("*.py")):
        module = ".".join(p.relative_to(ROOT).with_suffix("").parts)  # a package's own: rayml.serve.__init__
        yield str(p.relative_to(ROOT)), module, p.read_text()
    for d in SCRIPT_DIRS:
        for p in sorted((ROOT / d).rglob("*.py")):
            yield str(p.relative_to(ROOT)), f"<script>.{p.stem}", p.read_text()
        for p in sorted((ROOT / d).rglob("*.ipynb")):
            cells = json.loads(p.read_text())["cells"]
            for i, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
                lines = "".join(cell["source"]).splitlines()
                code = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in lines)  # IPython magics
                yield f"{p.relative_to(ROOT)} (code cell {i + 1})", f"<script>.{p.stem}", code


def test_no_module_imports_another_packages_private_modules() -> None:
    # rayml.X._Y is X's business: other packages, jobs, cluster scripts and notebooks use what rayml.X exports
    offenders = []
    for where, importer, source in _sources():
        for line, name in _imported_modules(ast.parse(source), importer):
            owner = _private_owner(name)
            if owner is not None and not importer.startswith(f"{owner}."):
                offenders.append(f"{where}:{line}: {name}")
    assert offenders == [], "import the package's public name instead (add it to its __all__ if it is missing)"


def test_private_import_rule() -> None:
    assert _private_owner("rayml.serve._deploy.deploy") == "rayml.serve"
    assert _private_owner("rayml.config.tune._MAXIMISED_METRICS") == "rayml.config"  # fine inside rayml.config
    assert _private_owner("rayml.serve.deploy") is None and _private_owner("ray.serve._private.x") is None
    assert _private_owner("rayml._private.constants") == "rayml"  # any rayml module may use the shared internals
    assert _private_owner("rayml.models.__version__") is None
    tree = ast.parse("from . import _spec\nfrom ..registry import Registry")
    assert list(_imported_modules(tree, "rayml.serve._deploy")) == [(1, "rayml.serve._spec"), (2, "rayml.registry.Registry")]


def test_the_no_rayml_testing_contract_lists_every_product_module() -> None:
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c.get("forbidden_modules") == ["rayml.testing"]]
    top_level = {f"rayml.{p.stem}" for p in PKG.glob("*.py") if p.name != "__init__.py"}
    top_level |= {f"rayml.{p.parent.name}" for p in PKG.glob("*/__init__.py")}
    assert set(contract["source_modules"]) == top_level - {"rayml.testing"}
    # the root package cannot be a source (rayml.testing is inside it): check it by hand
    assert not any(name == "rayml.testing" or name.startswith("rayml.testing.") for _, name in _root_imports())


def _root_imports() -> Iterator[tuple[int, str]]:
    init = PKG / "__init__.py"
    return _imported_modules(ast.parse(init.read_text()), "rayml.__init__") if init.is_file() else iter(())


# --- MLflow's client stays behind the registry facade ------------------------------------------------------------------
def _client_uses(source: str) -> list[int]:
    """Lines of ``source`` that reach an attribute named ``client`` (``registry.client``, ``self.registry.client.x``)."""
    nodes = ast.walk(ast.parse(source))
    return sorted({n.lineno for n in nodes if isinstance(n, ast.Attribute) and n.attr == "client"})


def test_only_the_registry_touches_the_mlflow_client() -> None:
    # train, tune, many models, the gate and the pipeline go through Registry methods (runs, metrics, tags, artifacts):
    # one place knows MLflow's client API, its batch limits and its entity types
    offenders = [
        f"{p.relative_to(ROOT)}:{line}"
        for p in sorted(PKG.rglob("*.py"))
        if "registry" not in p.relative_to(PKG).parts[:1]
        for line in _client_uses(p.read_text())
    ]
    assert offenders == [], "add the call you need to rayml.registry.Registry instead of using its .client"


def test_client_rule_sees_every_shape_of_access() -> None:
    src = "registry.client.set_tag(r, k, v)\nc = ctx.registry.client\nself.registry.client.get_run(r)\nx = client.get_run(r)\n"
    assert _client_uses(src) == [1, 2, 3]
