"""The notebooks in git hold source only (no outputs, no execution counts) and each one says what it shows."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = ROOT / "notebooks"
EXPECTED = [
    "01_train_and_tune.ipynb",
    "02_many_models_batch.ipynb",
    "03_serving_canary_shadow.ipynb",
    "04_monitoring_drift.ipynb",
    "05_bring_your_own_model.ipynb",
    "06_closed_loop.ipynb",
]


def test_the_six_notebooks_exist() -> None:
    assert sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_stripped_and_valid(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{name}: cells {dirty} have outputs or execution counts; run `make strip-notebooks`"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_opens_with_a_title_and_the_equivalent_commands(name: str) -> None:
    first = nbformat.read(NOTEBOOKS_DIR / name, as_version=4).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert re.search(r"```bash\n(.*\n)*?rayml ", first.source), f"{name} should show the equivalent `rayml` commands"


def test_notebook_cells_end_by_stopping_ray() -> None:
    for name in EXPECTED:
        last = nbformat.read(NOTEBOOKS_DIR / name, as_version=4).cells[-1]
        assert last.cell_type == "code" and "ray.shutdown()" in last.source, f"{name}: the last cell stops Ray"


def test_strip_tool_check_mode_passes_on_the_committed_notebooks() -> None:
    strip = runpy.run_path(str(NOTEBOOKS_DIR / "strip_outputs.py"))
    assert strip["main"](["--check"]) == 0
