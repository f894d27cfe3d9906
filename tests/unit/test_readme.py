"""The README stays true to the code: every `rayml` command it shows exists, every path it names is in the repo."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rayml.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    out = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("rayml "):
                out.append(shlex.split(line)[1:])
    return out


def test_readme_opens_with_the_two_setup_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
    assert "make demo" in first_block and "make test" in first_block


@pytest.mark.parametrize("args", _commands(), ids=lambda a: " ".join(a[:3]))
def test_every_readme_command_exists_and_its_options_parse(args: list[str]) -> None:
    words = [a for a in args if not a.startswith("-")]
    path = []
    for w in words:  # the sub-command path: stop at the first positional argument
        probe = CliRunner().invoke(app, [*path, w, "--help"])
        if probe.exit_code != 0 or "Usage:" not in probe.output:
            break
        path.append(w)
        if "Commands" not in probe.output:
            break
    assert path, f"no such command: rayml {' '.join(args)}"
    help_text = CliRunner().invoke(app, [*path, "--help"], terminal_width=200).output
    for opt in (a.split("=", 1)[0] for a in args if a.startswith("--")):
        assert opt in help_text, f"`rayml {' '.join(path)}` has no option {opt}"


def test_every_repo_path_in_the_readme_exists() -> None:
    for path in set(re.findall(r"\b((?:jobs|benchmarks|clusters|notebooks|rayml)/[\w./-]+\.(?:py|yaml|md|ipynb))", README)):
        assert (ROOT / path).exists(), path


def test_every_rayml_name_in_the_readmes_python_blocks_exists() -> None:
    import rayml

    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README shows the Python API"
    names = {m for block in blocks for m in re.findall(r"\brayml\.(\w+)", block)}
    assert names, "no rayml.<name> in the README's Python blocks"
    for name in sorted(names):
        assert hasattr(rayml, name), f"README uses rayml.{name}, which does not exist"
