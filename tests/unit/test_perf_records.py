"""Performance records on every version: the serving probe's latency and throughput, measured at registration (never
failing it), and the training run's time and peak worker memory; `rayml models show` displays them."""

from __future__ import annotations

import io
import logging
import math
import re
import shutil
import sys
import tempfile
from types import SimpleNamespace

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from rayml.cli.models import perf_summary
from rayml.models import PERF_TAGS
from rayml.registry import Registry
from rayml.registry._registry import perf_tags
from rayml.testing import register_tiny_model_set, sample_frame, write_tiny_model
from rayml.train.trainer import peak_memory_bytes

PROBE = (PERF_TAGS["latency_ms"], PERF_TAGS["throughput_rows_s"])
TRAINING = (PERF_TAGS["train_time_s"], PERF_TAGS["peak_memory_bytes"])


def _register(registry: Registry, name: str = "sales-model", **kwargs):
    out = write_tiny_model(tempfile.mkdtemp(prefix="perf-model-")).path
    run_id = registry.create_run("perf-tests", name)
    try:
        return registry.register(name, out, run_id, {"rayml.run_id": run_id}, **kwargs)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_a_trained_version_records_its_training_figures_and_the_serving_probe(registry: Registry) -> None:
    info = _register(registry, perf={"train_time_s": 12.3456789, "peak_memory_bytes": 5.2e8})
    tags = info.tags
    assert tags[PERF_TAGS["train_time_s"]] == "12.3457" and tags[PERF_TAGS["peak_memory_bytes"]] == "520000000"
    latency, throughput = (float(tags[t]) for t in PROBE)
    assert 0 < latency < 1000 and throughput > 100  # a tiny MLP: well under a second a row, many rows a second
    metrics = registry.run_metrics(info.run_id)  # the probe is on the run too
    assert metrics["serving_latency_ms"] == pytest.approx(latency, rel=1e-5)
    assert metrics["serving_throughput_rows_s"] == pytest.approx(throughput, rel=1e-5, abs=1)


def test_an_imported_model_gets_the_probe_figures_only(registry: Registry) -> None:
    from sklearn.linear_model import Ridge

    import rayml

    df = sample_frame(rows_per_segment=20, segments=2)[["price", "temperature", "sales"]]
    model = Ridge().fit(df[["price", "temperature"]], df["sales"])
    info = rayml.register_model(model, name="ridge", sample=df, target="sales", registry=registry)
    assert all(float(info.tags[t]) > 0 for t in PROBE)
    assert not set(TRAINING) & set(info.tags)  # nothing trained it here: no training figures


def test_a_model_set_is_probed_through_its_segments(registry: Registry) -> None:
    info = register_tiny_model_set(registry)  # its input example carries the segment column: rows are routed
    assert all(float(info.tags[t]) > 0 for t in PROBE)


@pytest.mark.parametrize("failure", ["the probe raises", "no input example"])
def test_a_probe_failure_never_fails_registration(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    out = write_tiny_model(tempfile.mkdtemp(prefix="perf-model-")).path
    if failure == "the probe raises":
        import rayml.registry._registry as registry_module

        def broken(*args, **kwargs):
            raise RuntimeError("onnxruntime fell over")

        monkeypatch.setattr(registry_module, "probe_serving", broken)
    else:  # a directory written before rayml wrote MLflow files
        (out / "MLmodel").unlink()
    run_id = registry.create_run("perf-tests", "broken-probe")
    with caplog.at_level(logging.INFO, logger="rayml.registry"):
        info = registry.register("sales-model", out, run_id, {}, perf={"train_time_s": 3.0})
    assert info.version == 1 and info.tags[PERF_TAGS["train_time_s"]] == "3"
    assert not set(PROBE) & set(info.tags)
    raised = failure == "the probe raises"
    expected = "the serving probe failed (RuntimeError: onnxruntime fell over)" if raised else "no MLflow input example"
    record = next(r for r in caplog.records if expected in r.getMessage())
    assert record.levelno == (logging.WARNING if raised else logging.INFO)
    assert registry.load(info.ref).predict(sample_frame().head(3)).shape == (3,)  # registered and usable


_figures = st.fixed_dictionaries(
    {},
    optional={
        k: st.one_of(st.none(), st.floats(min_value=-1e15, max_value=1e15), st.sampled_from([math.nan, math.inf, -math.inf]))
        for k in PERF_TAGS
    },
)


@settings(max_examples=200, deadline=None, database=None)
@given(figures=_figures)
def test_perf_tags_keep_every_finite_figure_and_read_back(figures: dict[str, float | None]) -> None:
    tags = perf_tags(figures)
    finite = {k: v for k, v in figures.items() if v is not None and math.isfinite(v)}
    assert set(tags) == {PERF_TAGS[k] for k in finite}
    for key, value in finite.items():
        back = float(tags[PERF_TAGS[key]])
        if key in ("throughput_rows_s", "peak_memory_bytes"):
            assert back == round(value) and tags[PERF_TAGS[key]].lstrip("-").isdigit()
        else:
            assert back == pytest.approx(value, rel=1e-5, abs=1e-300)
    text = perf_summary(tags)  # and `rayml models show` reads them back
    assert (text == "") == (not finite)


def test_perf_tags_refuse_what_is_not_a_performance_figure() -> None:
    with pytest.raises(ValueError, match=r"not performance figures: \['latency'\]"):
        perf_tags({"latency": 1.0})


@settings(max_examples=100, deadline=None, database=None)
@given(tags=st.dictionaries(st.sampled_from([*PERF_TAGS.values(), "rayml.other"]), st.text(max_size=12)))
def test_models_show_reads_any_tag_text_without_failing(tags: dict[str, str]) -> None:
    compact = perf_summary(tags, compact=True)
    assert compact == "" or len(compact.split(" ")) == 4


def test_peak_memory_is_the_largest_sample_of_any_worker(registry: Registry) -> None:
    run_id = registry.create_run("perf-tests", "peak")
    assert peak_memory_bytes(registry, run_id, workers=2) is None
    for epoch, (rank0, rank1) in enumerate([(100.0, 300.0), (250.0, 200.0)], start=1):
        registry.log_metrics(run_id, {"worker0_memory_rss_bytes": rank0, "worker1_memory_rss_bytes": rank1}, step=epoch)
    assert peak_memory_bytes(registry, run_id, workers=2) == 300.0
    assert peak_memory_bytes(registry, run_id, workers=1) == 250.0  # an in-process run has rank 0 only


def test_a_search_records_the_best_trials_peak_memory() -> None:
    from rayml.tune._outputs import _peak_memory
    from rayml.tune._report import TrialSummary

    def result(trial_id: str, rows: list[dict[str, float]]):
        return SimpleNamespace(metrics={"trial_id": trial_id}, path=f"/x/trial_{trial_id}", metrics_dataframe=pd.DataFrame(rows))

    grid = [
        result("a", [{"epoch": 1, "worker0_memory_rss_bytes": 9e9}]),
        result("b", [{"epoch": 1, "worker0_memory_rss_bytes": 1e8}, {"epoch": 2, "worker0_memory_rss_bytes": 3e8}]),
        result("c", [{"epoch": 1, "val_loss": 1.0}]),
    ]
    best = TrialSummary("b", {}, "FINISHED", None, 2, 2, 1.0, 2)
    assert _peak_memory(grid, best) == 3e8
    assert _peak_memory(grid, TrialSummary("c", {}, "FINISHED", None, 1, 1, 1.0, 1)) is None


def test_models_show_displays_the_records(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    from rayml.cli.models import console, show

    _register(registry, perf={"train_time_s": 42.0, "peak_memory_bytes": 512 * 2**20})
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)  # the console follows sys.stdout
    monkeypatch.setattr(console, "_width", 250)  # the table's cells unwrapped
    show("sales-model:1", config=None, set_=[f"registry.tracking_uri={registry.tracking_uri}"])
    detail = out.getvalue()
    assert "  performance: serving p50 latency " in detail and " ms, throughput (rows/s) " in detail
    assert "training time 42.0 s, peak worker memory 512 MiB" in detail
    out.seek(0), out.truncate()
    show("sales-model", config=None, set_=[f"registry.tracking_uri={registry.tracking_uri}"])
    row = next(line for line in out.getvalue().splitlines() if "512MiB" in line)
    assert re.search(r"│ [0-9.]+ms [0-9.]+[kMG]?/s 42\.0s 512MiB\s+│", row), row


def test_a_version_registered_before_the_records_shows_none() -> None:
    assert perf_summary({"rayml.run_id": "x"}) == "" and perf_summary({}, compact=True) == ""
