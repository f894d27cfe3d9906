"""The ML Test Score scorecard (`rayml scorecard`): every pointer in it is valid, and the README shows it as it is."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rayml.cli.main import app
from rayml.cli.scorecard import AUTOMATED, ITEMS, SECTIONS, final_score, markdown, section_scores

ROOT = Path(__file__).resolve().parents[2]
README_BEGIN, README_END = "<!-- scorecard:begin -->", "<!-- scorecard:end -->"


def test_the_rubric_is_complete_seven_tests_per_section() -> None:
    assert len(ITEMS) == 28
    for s in SECTIONS:
        assert sorted(i.number for i in ITEMS if i.section == s) == list(range(1, 8)), s
    assert len({i.test for i in ITEMS}) == 28


@pytest.mark.parametrize("item", ITEMS, ids=lambda i: f"{i.section}-{i.number}")
def test_every_code_pointer_exists(item) -> None:
    assert item.code, "say where the code is"
    for pointer in item.code:
        if "#" in pointer:  # a repository file and a name inside it
            path, needle = pointer.split("#", 1)
            assert needle in (ROOT / path).read_text(), pointer
            continue
        module, _, attr = pointer.partition(":")
        obj = importlib.import_module(module)
        for part in filter(None, attr.split(".")):
            assert hasattr(obj, part), f"{pointer}: {obj!r} has no {part!r}"
            obj = getattr(obj, part)


@pytest.mark.parametrize("item", ITEMS, ids=lambda i: f"{i.section}-{i.number}")
def test_every_test_pointer_names_a_test_that_exists(item) -> None:
    if item.status == AUTOMATED:
        assert item.tests, "an automated item names the test that proves it"
    for pointer in item.tests:
        path, _, name = pointer.partition("::")
        source = (ROOT / path).read_text()
        assert re.search(rf"^\s*def {re.escape(name)}\(", source, re.M), f"{pointer}: no such test"


def test_the_score_is_the_lowest_section() -> None:
    scores = section_scores()
    assert final_score() == min(scores.values()) and set(scores) == set(SECTIONS)
    assert all(0 <= v <= 7 for v in scores.values())


def test_the_readme_table_is_the_scorecard() -> None:
    readme = (ROOT / "README.md").read_text()
    assert README_BEGIN in readme and README_END in readme
    shown = readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert shown == markdown(), "regenerate it: rayml scorecard --format markdown"


def test_the_command_prints_the_score_and_the_pointers() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["scorecard", "--details"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert f"ML Test Score: {final_score():g}" in text
    assert "Dependency changes result in notification" in text and "tests/unit/test_scorecard.py" not in text
    body = json.loads(runner.invoke(app, ["scorecard", "--format", "json"]).output)
    assert body["score"] == final_score() and len(body["items"]) == 28
    assert body["items"][0]["tests"] and body["sections"]["data"] == section_scores()["data"]
