"""The validation gate on multiclass models (no Ray: a local MLflow registry and ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rayml.config import GateConfig
from rayml.errors import DataError
from rayml.gate import Predictions, _slices, run_gate
from rayml.registry import Registry
from rayml.testing import MULTICLASS_TARGET, multiclass_frame, register_tiny_model

# the tiny multiclass models are noisy nearest-centroid graphs: logistic regression beats them (the linear check warns)
LENIENT = GateConfig(
    max_regression=0.5, max_segment_regression=1.0, permutation_repeats=1, linear_baseline="warn", perf_probe_s=0.1
)


def test_a_multiclass_candidate_is_judged_on_accuracy_macro_f1_and_logloss(registry: Registry) -> None:
    register_tiny_model(registry, "bands", seed=0, task="multiclass")
    registry.set_alias("bands", 1, "production")
    good = register_tiny_model(registry, "bands", seed=1, task="multiclass")
    data = multiclass_frame()
    report = run_gate(registry, "bands", good.version, data, LENIENT, log_to_mlflow=False)
    assert report.passed, report.failures
    assert any("does not beat a linear baseline (logistic regression" in w for w in report.warnings), report.warnings
    assert set(report.linear_metrics) == {"accuracy", "macro_f1", "logloss"}
    assert report.performance["candidate"]["latency_ms"] > 0 and report.performance["baseline"]["throughput_rows_s"] > 0
    assert report.primary_metric == "macro_f1" and set(report.candidate_metrics) == {"accuracy", "macro_f1", "logloss"}
    assert report.baseline == 1 and set(report.baseline_metrics) == {"accuracy", "macro_f1", "logloss"}
    # the trivial model always predicts the training data's majority class (from the reference bins), with the
    # training class shares as its probabilities
    majority = registry.load("bands:2").model_dir.reference_stats()["target"]["categories"][0]
    y = data[MULTICLASS_TARGET].to_numpy(dtype=object)
    assert report.trivial_metrics["accuracy"] == pytest.approx(np.mean(y == majority))
    assert report.trivial_metrics["logloss"] == pytest.approx(np.log(3), rel=0.01)  # about equal shares
    assert report.candidate_metrics["accuracy"] > report.trivial_metrics["accuracy"]
    assert {s["segment"] for s in report.slices} == set(data["store_id"])  # macro-F1 per store, both versions
    assert all({"candidate", "baseline", "regression"} <= set(s) for s in report.slices)

    inverted = register_tiny_model(registry, "bands", seed=0, task="multiclass", output_scale=-1.0)  # the least likely class
    bad = run_gate(registry, "bands", inverted.version, data, GateConfig(), log_to_mlflow=False)
    assert not bad.passed
    assert any(f.startswith("accuracy") and f"majority class {majority!r}" in f for f in bad.failures), bad.failures
    assert any(f.startswith("macro_f1 regressed") and "over --max-regression" in f for f in bad.failures), bad.failures


def test_validation_labels_must_be_the_models_classes(registry: Registry) -> None:
    register_tiny_model(registry, "ints", task="multiclass", class_labels=[0, 1, 2])
    data = multiclass_frame(class_labels=[0, 1, 2])
    assert run_gate(registry, "ints", 1, data, LENIENT, log_to_mlflow=False).passed  # no baseline: only the trivial model
    unknown = data.assign(**{MULTICLASS_TARGET: data[MULTICLASS_TARGET].replace({2: 7})})
    with pytest.raises(DataError) as e:
        run_gate(registry, "ints", 1, unknown, LENIENT, log_to_mlflow=False)
    assert "[7]" in e.value.message and "its classes are [0, 1, 2]" in e.value.message and e.value.hint
    as_text = data.assign(**{MULTICLASS_TARGET: data[MULTICLASS_TARGET].astype(str)})  # "0" is not the class 0
    with pytest.raises(DataError, match=r"\['0', '1', '2'\]"):
        run_gate(registry, "ints", 1, as_text, LENIENT, log_to_mlflow=False)


def test_a_regressing_multiclass_slice_fails() -> None:
    import pandas as pd

    df = pd.DataFrame({"store": ["a"] * 4 + ["b"] * 4})
    y = np.asarray(["x", "y"] * 4, dtype=object)
    base = Predictions(y.copy())  # perfect everywhere
    cand = Predictions(np.asarray(["x", "y"] * 2 + ["x"] * 4, dtype=object))  # perfect on a, half wrong on b
    slices, failures = _slices("multiclass", df, y, cand, base, ["store"], GateConfig(min_segment_rows=2), ["x", "y"])
    assert [s["candidate"] for s in slices] == [1.0, pytest.approx(1 / 3)]
    assert len(failures) == 1 and "segment 'b': macro_f1 regressed" in failures[0]


def test_a_binary_target_is_read_by_the_models_own_two_classes(tmp_path) -> None:
    """An imported classifier may call its classes "no" / "yes": the gate reads the positive one as 1."""
    from rayml.gate import true_labels
    from rayml.models import ModelDir

    named = ModelDir(tmp_path, meta={"task": "binary", "class_labels": ["no", "yes"]})
    frame = pd.DataFrame({"churned": ["yes", "no", "yes"]})
    assert true_labels(frame, "churned", named).tolist() == [1.0, 0.0, 1.0]
    plain = ModelDir(tmp_path, meta={"task": "binary"})
    assert true_labels(pd.DataFrame({"y": [0, 1, True]}), "y", plain).tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(DataError, match=r"holds \['maybe'\], not only the classes of .*\['no', 'yes'\]"):
        true_labels(pd.DataFrame({"churned": ["yes", "maybe"]}), "churned", named)
