"""Many models: one small model per segment (store, region, SKU family), trained in parallel Ray tasks and registered
as ONE model set (see :class:`rayml.registry.ModelSet` for loading it)."""

from rayml.manymodels._fit import (
    FitSettings,
    SegmentOutcome,
    base_settings,
    fit_segment,
    fit_settings,
    fit_with_retries,
)
from rayml.manymodels._plan import Accounting, account, auto_segments_per_task, segment_table, split_trainable
from rayml.manymodels._run import ModelSetResult, cleanup, train_model_set
from rayml.manymodels._tasks import GLOBAL_KEY

__all__ = [
    "GLOBAL_KEY",
    "Accounting",
    "FitSettings",
    "ModelSetResult",
    "SegmentOutcome",
    "account",
    "auto_segments_per_task",
    "base_settings",
    "cleanup",
    "fit_segment",
    "fit_settings",
    "fit_with_retries",
    "segment_table",
    "split_trainable",
    "train_model_set",
]
