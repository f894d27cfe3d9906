"""The ``drift:``, ``gate:`` and ``quality:`` sections: drift thresholds (monitoring, batch, serving), the validation
gate, and live quality on ground-truth labels."""

from __future__ import annotations

from pydantic import Field, model_validator

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
    seed: int = Field(default=0, description="Seed of the permutation shuffles.")


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
