"""The ``staleness:`` section: how model age is measured against quality (`rayml monitor staleness`, the pipeline's
``staleness`` stage)."""

from __future__ import annotations

from pydantic import Field

from rayml.config._base import _Section


class StalenessConfig(_Section):
    """Staleness measured, not assumed: the newest versions of a model scored on the newest labelled data, quality
    against age, and the age at which quality has fallen by a tolerated amount."""

    versions: int = Field(
        default=5,
        ge=2,
        le=100,
        description="How many of the model's newest registered versions are scored (the newest scored one is the "
        "reference every other is compared with).",
    )
    max_degradation: float = Field(
        default=0.05,
        gt=0.0,
        description="Tolerated relative degradation of the primary metric (RMSE, AUC, macro F1) from a fresh model: "
        "0.05 = 5% worse. The recommended max age is the age at which the fitted degradation reaches it.",
    )
    max_rows: int = Field(
        default=50_000,
        ge=100,
        description="Without --data: how many of the newest labelled captured rows are scored (read newest hour first).",
    )
