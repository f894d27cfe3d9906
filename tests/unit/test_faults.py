"""Test-only fault injection parses strictly and fires once."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayml._private import faults
from rayml.errors import ConfigError


def test_parse() -> None:
    assert faults.parse(None) == []
    assert faults.parse("kill_worker@epoch=3, sleep@seconds=0.5") == [
        faults.Fault("kill_worker", epoch=3),
        faults.Fault("sleep", seconds=0.5),
    ]
    with pytest.raises(ConfigError, match="unknown kind"):
        faults.parse("explode@epoch=1")
    with pytest.raises(ConfigError, match="unknown key"):
        faults.parse("raise@when=1")


def test_raise_fires_once_per_marker(tmp_path: Path) -> None:
    marker = str(tmp_path / "m")
    spec = faults.parse("raise@epoch=2")
    faults.mid_epoch(spec, epoch=1, rank=0, marker=marker)  # wrong epoch: nothing
    faults.mid_epoch(spec, epoch=2, rank=1, marker=marker)  # only rank 0 fails
    with pytest.raises(RuntimeError, match="injected failure in epoch 2"):
        faults.mid_epoch(spec, epoch=2, rank=0, marker=marker)
    faults.mid_epoch(spec, epoch=2, rank=0, marker=marker)  # the restarted worker group runs clean
