"""The ``drift:``, ``gate:`` and ``quality:`` sections: drift thresholds (monitoring, batch, serving), the validation
gate, and live quality on ground-truth labels."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rayml.config._base import _Section


class DriftConfig(_Section):
    """Drift thresholds: a feature's status is `alert` when any metric reaches its alert level, `warn` at warn level."""

    psi_warn: float = Field(default=0.1, ge=0.0, description="PSI (numeric features, predictions) that warns.")
    psi_alert: float = Field(default=0.25, ge=0.0, description="PSI that alerts.")
    # sampling noise alone puts the JS distance of ~600 clean rows over 10 bins near 0.05: warn above that
    js_warn: float = Field(default=0.08, ge=0.0, le=1.0, description="Jensen-Shannon distance (base 2) that warns.")
    js_alert: float = Field(default=0.1, ge=0.0, le=1.0, description="Jensen-Shannon distance that alerts.")
    linf_warn: float = Field(default=0.08, ge=0.0, le=1.0, description="L-infinity distance (categorical) that warns.")
    linf_alert: float = Field(default=0.1, ge=0.0, le=1.0, description="L-infinity distance that alerts.")
    min_rows: int = Field(default=100, ge=1, description="Fewer rows than this in a window: `insufficient_data`, no alert.")

    @model_validator(mode="after")
    def _warn_below_alert(self) -> DriftConfig:
        bad = [
            f"{m}_warn ({getattr(self, m + '_warn')}) is above {m}_alert ({getattr(self, m + '_alert')})"
            for m in ("psi", "js", "linf")
            if getattr(self, m + "_warn") > getattr(self, m + "_alert")
        ]
        if bad:
            raise ValueError("; ".join(bad))
        return self


class GateConfig(_Section):
    """The validation gate: a candidate version against the baseline alias on a fixed validation set."""

    @field_validator("unimportant_features", "linear_baseline", "perf_regressions", mode="before")
    @classmethod
    def _off_is_not_false(cls, value: object) -> object:
        # YAML reads a bare `off` (in a file or a --set) as false: it means the action `off`
        return "off" if value is False else value

    max_regression: float = Field(
        default=0.02,
        ge=0.0,
        description="Largest allowed relative regression of the primary metric (RMSE for regression, AUC for binary): "
        "0.02 = the candidate may be at most 2% worse than the baseline.",
    )
    segment_columns: list[str] | None = Field(
        default=None, description="Columns that define slices (null = the model's segment columns; [] = no slices)."
    )
    important_segments: list[str] = Field(
        default_factory=list, description="Slices that must not regress (values of the segment key; [] = every slice)."
    )
    max_segment_regression: float = Field(
        default=0.10, ge=0.0, description="Largest allowed relative regression of the primary metric within a slice."
    )
    min_segment_rows: int = Field(default=30, ge=1, description="Slices with fewer validation rows are not judged.")
    permutation_repeats: int = Field(default=2, ge=1, le=20, description="Shuffles per feature for permutation importance.")
    seed: int = Field(default=0, description="Seed of the permutation shuffles, the linear baseline's folds and its row sample.")
    unimportant_features: Literal["warn", "fail", "off"] = Field(
        default="warn",
        description="What a feature whose permutation importance is not above noise does: `warn` (listed under the "
        "report's warnings), `fail` the gate, or `off`. Noise = the standard error of the importance, from the loss "
        "measured per block of validation rows and per shuffle.",
    )
    importance_sigmas: float = Field(
        default=2.0, ge=0.0, description="A feature is above noise when its importance exceeds this many standard errors."
    )
    require_reproducible_lineage: bool | None = Field(
        default=None,
        description="Refuse a candidate whose `rayml.git_commit` tag is missing, `unknown` or ends with `-dirty` (not "
        "rebuildable from its code). null = on when the gate judges a release against `production` (the pipeline's "
        "gate, `rayml validate --release`), off otherwise; false for experiments from a dirty checkout.",
    )
    linear_baseline: Literal["fail", "warn", "off"] = Field(
        default="fail",
        description="A candidate that does not beat a linear baseline (ridge / logistic regression on its features, "
        "5-fold cross-fitted on the validation rows): `fail` the gate, `warn`, or `off` (not fitted). Without "
        "scikit-learn or with fewer than 20 rows the baseline is skipped with a warning.",
    )
    linear_tolerance: float = Field(
        default=0.02,
        ge=0.0,
        description="How much worse than the linear baseline the candidate's primary metric may be, relative (0 = it "
        "must beat it; 0.02 = less than 2% worse: a nonlinear model on a linear problem ties with it up to noise).",
    )
    group_columns: list[str] = Field(
        default_factory=list,
        description="Columns of the validation data whose groups must be served alike (fairness / inclusion; need not "
        "be model features): the primary metric per group value, judged by gate.max_group_gap. [] = none.",
    )
    max_group_gap: float = Field(
        default=0.20,
        ge=0.0,
        description="Largest allowed gap between a group column's best and worst group (groups of at least "
        "min_segment_rows rows): (best - worst) / |best| of the primary metric when higher is better (AUC, macro-F1), "
        "(worst - best) / |best| when lower is (RMSE). 0.20: the worst group at most 20% worse than the best (the "
        "four-fifths rule of thumb).",
    )
    perf_regressions: Literal["warn", "fail", "off"] = Field(
        default="warn",
        description="What a performance regression against the baseline does (latency and throughput probed side by "
        "side in this process; training time and peak memory from the versions' rayml.perf.* tags): `warn`, `fail` "
        "or `off` (not probed). Timing is noisy: warn by default.",
    )
    max_latency_regression: float = Field(
        default=0.5, ge=0.0, description="Largest allowed relative rise of single-row latency (0.5 = 50% slower)."
    )
    max_throughput_regression: float = Field(
        default=0.33,
        ge=0.0,
        le=1.0,
        description="Largest allowed relative drop of batch throughput (0.33 = a third fewer rows/s).",
    )
    max_train_time_regression: float = Field(
        default=1.0, ge=0.0, description="Largest allowed relative rise of training time (1.0 = twice as long)."
    )
    max_memory_regression: float = Field(
        default=0.5, ge=0.0, description="Largest allowed relative rise of peak training memory (0.5 = 50% more)."
    )
    perf_probe_s: float = Field(
        default=0.5,
        gt=0.0,
        le=60.0,
        description="About how long each model's latency and throughput are probed, in seconds (at least 5 single-row "
        "calls and 3 batches each, whatever the time).",
    )


class QualityConfig(_Section):
    """Live model quality: captured predictions joined to ground-truth labels (`rayml monitor quality`)."""

    destination: str | None = Field(
        default=None,
        description="Where the captures and labels are (serve.models.<m>.capture.destination: a local folder or a "
        "pyarrow URI); null = $RAYML_HOME/captures.",
    )
    max_gap: float = Field(
        default=0.1,
        ge=0.0,
        description="Largest allowed relative degradation of the live primary metric (RMSE, AUC, macro F1) from the "
        "version's offline validation value: 0.1 = 10% worse. A version is `gap` only when even the favourable end "
        "of its confidence interval is beyond it.",
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1.0, description="Level of the two-sided confidence intervals of the live metrics."
    )
    min_labels: int = Field(
        default=30, ge=1, description="Labelled predictions a version needs to be judged (fewer: `insufficient_labels`)."
    )
    bootstrap_samples: int = Field(
        default=200, ge=20, le=10_000, description="Bootstrap resamples behind each confidence interval."
    )
    bootstrap_max_rows: int = Field(
        default=20_000,
        ge=100,
        description="Rows per bootstrap resample; a version with more labelled rows is resampled at this size and the "
        "spread rescaled by sqrt(size / rows) (an m-out-of-n bootstrap), so the cost does not grow with the data.",
    )
    seed: int = Field(default=0, description="Seed of the bootstrap resamples (the same data gives the same intervals).")
