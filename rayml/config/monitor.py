"""The ``drift:`` and ``gate:`` sections: drift thresholds (monitoring, batch, serving) and the validation gate."""

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
