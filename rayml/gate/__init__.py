"""The validation gate: may a candidate version replace the baseline?

On a fixed, fingerprinted validation set the candidate must
- output only finite numbers;
- beat a trivial model: the training mean for regression; for binary AUC above 0.5 and accuracy above the majority
  share; for multiclass accuracy and macro-F1 above always predicting the training data's majority class;
- beat a linear baseline (ridge / logistic regression cross-fitted on the validation rows; ``gate.linear_baseline``);
- not regress the primary metric (:func:`rayml.models.metrics.primary_metric`: RMSE for regression, AUC for binary,
  macro-F1 for multiclass) by more than ``max_regression`` relative to the baseline alias;
- not regress any important slice (segment) by more than ``max_segment_regression``;
- not be much worse for one group of ``gate.group_columns`` than for another (``gate.max_group_gap``);
- be rebuildable from a clean commit when it is released (``gate.require_reproducible_lineage``);
- and, when set to ``fail``, use only features that are worth more than noise (``gate.unimportant_features``) and
  not serve or train much slower or hungrier than the baseline (``gate.perf_regressions``); by default these warn.
Metrics are those of :func:`rayml.models.metrics.task_metrics` (multiclass: accuracy, macro-F1 and log-loss over the
model's class labels). The report also carries each feature's permutation importance, noise level and cost (its
footprint in the ONNX graph), the probed latency and throughput of both versions, and what changed between them
(data fingerprint, features, library versions). It is logged to MLflow and tagged on the candidate version.
The gate reads only the model directory (task, target, class labels, outputs), whatever framework made the model.
"""

from __future__ import annotations

from rayml.gate._baselines import LinearBaseline, linear_baseline
from rayml.gate._cost import feature_costs
from rayml.gate._features import Importance, importance_with_noise, permutation_importance
from rayml.gate._groups import _slices as _slices, group_gaps
from rayml.gate._lineage import unreproducible
from rayml.gate._perf import performance
from rayml.gate._predictions import Predictions, predict, relative_regression, true_labels
from rayml.gate._run import GATE_EXPERIMENT, REPORT_FILE, GateReport, run_gate, write_report

__all__ = [
    "GATE_EXPERIMENT",
    "REPORT_FILE",
    "GateReport",
    "Importance",
    "LinearBaseline",
    "Predictions",
    "feature_costs",
    "group_gaps",
    "importance_with_noise",
    "linear_baseline",
    "performance",
    "permutation_importance",
    "predict",
    "relative_regression",
    "run_gate",
    "true_labels",
    "unreproducible",
    "write_report",
]
