"""Many models: one small model per segment (store, region, SKU family), trained in parallel Ray tasks and registered
as ONE model set (see :class:`rayml.registry.ModelSet` for loading it)."""

from rayml.manymodels._fit import (
    FitSettings as FitSettings,
    SegmentOutcome,
    base_settings as base_settings,
    fit_segment as fit_segment,
    fit_settings as fit_settings,
    fit_with_retries as fit_with_retries,
)
from rayml.manymodels._plan import (
    Accounting as Accounting,
    account as account,
    auto_segments_per_task as auto_segments_per_task,
    segment_table as segment_table,
    split_trainable as split_trainable,
)
from rayml.manymodels._run import ModelSetResult, cleanup as cleanup, train_model_set
from rayml.manymodels._tasks import GLOBAL_KEY as GLOBAL_KEY

# What users import. Names re-exported above as `X as X` are shared with other rayml packages: importable, but
# not part of the public API.
__all__ = [
    "ModelSetResult",
    "SegmentOutcome",
    "train_model_set",
]
