"""Dependency changes under a served version (rayml.serve._dependencies), without Ray Serve: what a version recorded,
which differences with this process's libraries count, and the rayml_dependency_mismatch series a loaded version
exports (and stops exporting once retired)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st

from rayml.models import ModelDir
from rayml.serve import _dependencies, _model
from rayml.serve._dependencies import Dependency, DependencyGauges, compare, differs, installed_version, recorded_versions
from rayml.serve._inline import InlineVersion
from rayml.testing import write_tiny_model


class FakeGauge:
    """Records what DependencyMetrics.publish sets (the real gauge needs a Ray metrics agent to be read back)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, int, list[Dependency]]] = []

    def publish(self, model: str, version: int, dependencies: Any) -> None:
        self.published.append((model, version, list(dependencies)))


def test_what_each_kind_of_version_records() -> None:
    lineage = {"rayml.rayml_version": "0.1.0", "rayml.onnxruntime_version": "1.20.1", "rayml.ray_version": "2.60.0"}
    # trained by rayml: a network exported by torch.onnx
    assert recorded_versions(lineage, {"framework": "rayml-mlp", "torch": "2.5.1+cpu"}) == {
        "rayml": "0.1.0",
        "onnxruntime": "1.20.1",
        "torch": "2.5.1+cpu",
    }
    # imported: the converter that wrote the graph (torch.onnx is torch's)
    sk = {"framework": "sklearn", "framework_version": "1.5", "converter": "skl2onnx", "converter_version": "1.17.0"}
    assert recorded_versions(lineage, sk)["skl2onnx"] == "1.17.0"
    assert recorded_versions({}, {"converter": "torch.onnx", "converter_version": "2.4.0"}) == {"torch": "2.4.0"}
    # what a version did not record (or recorded as unknown) is not compared; a name that is no package is dropped
    assert recorded_versions({"rayml.onnxruntime_version": "unknown"}, {}) == {}
    assert recorded_versions({}, {"converter": "a b{}", "converter_version": "1.0"}) == {}
    assert recorded_versions({}, {"framework": "xgboost", "xgboost": "2.1.0"}) == {}  # a framework does not run here
    assert len(recorded_versions({"rayml.rayml_version": "1." * 500}, {})["rayml"]) == 64  # it becomes a metric label


@pytest.mark.parametrize(
    ("library", "recorded", "installed", "mismatch"),
    [
        ("rayml", "0.1.0", "0.1.0", False),
        ("rayml", "0.1.0", "0.1.1", True),  # any rayml change: it prepares every feed
        ("onnxruntime", "1.20.0", "1.20.1", False),  # patch releases fix bugs
        ("onnxruntime", "1.20.1", "1.21.0", True),
        ("onnxruntime", "1.20.1", "2.20.1", True),
        ("torch", "2.5.1+cpu", "2.5.0", False),  # a local build tag is not a release
        ("skl2onnx", "1.17.0", "1.18.0", True),
        ("onnx", "nightly", "nightly", False),  # not a release number: the same text only
        ("onnx", "nightly", "1.17.0", True),
    ],
)
def test_which_differences_count(library: str, recorded: str, installed: str, mismatch: bool) -> None:
    assert differs(library, recorded, installed) is mismatch


_release = st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99))


@given(a=_release, b=_release, library=st.sampled_from(["onnxruntime", "skl2onnx", "onnxmltools", "torch"]))
def test_a_library_mismatches_exactly_when_its_major_or_minor_release_differs(
    a: tuple[int, int, int], b: tuple[int, int, int], library: str
) -> None:
    recorded, installed = ".".join(map(str, a)), ".".join(map(str, b))
    assert differs(library, recorded, installed) is (a[:2] != b[:2])
    assert differs(library, recorded, installed) is differs(library, installed, recorded)


@given(st.text(max_size=30), st.text(max_size=30))
def test_any_recorded_text_is_compared_without_an_error(recorded: str, installed: str) -> None:
    for library in ("rayml", "onnxruntime"):
        assert isinstance(differs(library, recorded, installed), bool)
    assert differs("onnxruntime", recorded, recorded) is False


def test_only_libraries_installed_here_are_compared() -> None:
    lineage = {"rayml.rayml_version": "0.1.0", "rayml.onnxruntime_version": "1.18.0"}
    source = {"converter": "onnxmltools", "converter_version": "1.12.0"}
    here = {"rayml": "0.1.0", "onnxruntime": "1.20.0"}  # a serving image without the converter
    assert compare(lineage, source, here.get) == [
        Dependency("onnxruntime", "1.18.0", "1.20.0", True),
        Dependency("rayml", "0.1.0", "0.1.0", False),
    ]
    # what this process really has, read without importing it
    assert installed_version("onnxruntime") is not None and installed_version("no-such-package-rayml") is None


def _recording_model(tmp_path: Path, lineage: dict[str, str], source: dict[str, str]) -> str:
    """The tiny model, written again with the library versions a registered version records."""
    tiny = write_tiny_model(str(tmp_path / "tiny"), seed=0, name="dep")
    meta = {**tiny.meta, "lineage": lineage, "source": source}
    out = tmp_path / "recorded"
    ModelDir.write_model(out, onnx_bytes=tiny.model_file.read_bytes(), meta=meta, reference_stats=tiny.reference_stats())
    return str(out)


def test_a_loaded_version_exports_its_dependencies_and_a_retired_one_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rayml_here, torch_here = installed_version("rayml"), installed_version("torch")
    assert rayml_here and torch_here
    major, minor = torch_here.split(".")[:2]
    lineage = {"rayml.rayml_version": rayml_here, "rayml.onnxruntime_version": "0.1.0"}
    source = {"framework": "rayml-mlp", "torch": f"{major}.{minor}.999"}  # a patch release apart: not a mismatch
    gauge = FakeGauge()
    gauges = DependencyGauges(metrics=gauge, period_s=3600)  # refreshed by hand below
    monkeypatch.setattr(_model, "dependency_gauges", lambda: gauges)
    with caplog.at_level(logging.WARNING, logger="rayml.serve"):
        v = InlineVersion("dep", 3, "sqlite:///unused.db", _recording_model(tmp_path, lineage, source), 1, 300.0, 1.0)
    by_library = {d.library: d for d in v.dependencies}
    assert set(by_library) == {"onnxruntime", "rayml", "torch"}
    assert by_library["onnxruntime"].mismatch and by_library["onnxruntime"].recorded == "0.1.0"
    assert not by_library["rayml"].mismatch and not by_library["torch"].mismatch
    assert gauge.published == [("dep", 3, v.dependencies)]  # set as soon as the version is loaded
    assert "dep:3 was registered with onnxruntime 0.1.0" in caplog.text and "rayml validate --model dep" in caplog.text
    assert v.metadata()["dependencies"][0] == {
        "library": "onnxruntime",
        "recorded": "0.1.0",
        "installed": installed_version("onnxruntime"),
        "mismatch": True,
    }
    assert gauges.refresh() == 1 and len(gauge.published) == 2
    asyncio.run(v.close_drift())  # what retiring a version placed in the ingress calls
    assert gauges.refresh() == 0 and len(gauge.published) == 2


def test_a_version_without_recorded_versions_exports_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gauge = FakeGauge()
    monkeypatch.setattr(_model, "dependency_gauges", lambda: DependencyGauges(metrics=gauge))
    path = write_tiny_model(str(tmp_path / "m"), seed=0, name="bare").path
    v = InlineVersion("bare", 1, "sqlite:///unused.db", str(path), 1, 300.0, 1.0)
    assert v.dependencies == [] and gauge.published == [] and v.metadata()["dependencies"] == []


def test_a_failed_check_never_fails_the_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> Any:
        raise OSError("metadata unreadable")

    monkeypatch.setattr(_model, "check_model_dir", broken)
    path = write_tiny_model(str(tmp_path / "m"), seed=0, name="m").path
    assert InlineVersion("m", 1, "sqlite:///unused.db", str(path), 1, 300.0, 1.0).dependencies == []


def test_the_refresher_sets_the_series_again_until_none_is_shown() -> None:
    gauge = FakeGauge()
    gauges = DependencyGauges(metrics=gauge, period_s=0.01)
    owner = object()
    gauges.show(owner, "m", 1, [Dependency("onnxruntime", "1.18.0", "1.20.0", True)])
    deadline = time.monotonic() + 5.0
    while len(gauge.published) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(gauge.published) >= 3  # Ray would drop a gauge that is not set again
    gauges.hide(owner)
    while gauges._thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gauges._thread is None  # nothing left to show: the thread ends


def test_the_real_gauge_gets_a_value_for_every_label() -> None:
    # Ray refuses to set a gauge when one of its tag keys has no value: publish() must fill all five
    _dependencies.DependencyMetrics().publish("m", 1, [Dependency("onnxruntime", "1.18.0", "1.20.0", True)])
