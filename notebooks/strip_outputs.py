"""Strip outputs and execution counts from notebooks, so git holds only their source: `make strip-notebooks`.

Usage: python notebooks/strip_outputs.py [--check] [NOTEBOOK.ipynb ...]   (default: every notebook next to this file)
--check changes nothing and exits 1 when a notebook still has outputs (what the unit test checks).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
# per-run metadata that Jupyter adds; never worth a diff
RUN_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def strip(nb: nbformat.NotebookNode) -> bool:
    """Remove outputs, execution counts and per-run metadata in place; returns whether anything changed."""
    changed = False
    for cell in nb.cells:
        for key in RUN_METADATA:
            if key in cell.get("metadata", {}):
                del cell.metadata[key]
                changed = True
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count = [], None
            changed = True
    if "widgets" in nb.metadata:
        del nb.metadata["widgets"]
        changed = True
    return changed


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [Path(a) for a in argv if a != "--check"] or sorted(HERE.glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if strip(nb):
            dirty.append(path)
            if not check:
                nbformat.write(nb, path)
    for path in dirty:
        print(f"{'has outputs' if check else 'stripped'}: {path}")  # noqa: T201 (a command-line tool)
    return 1 if check and dirty else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
