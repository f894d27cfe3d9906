"""Training on Ray Train: the worker loop, checkpointing, crash recovery, CPU/GPU, DDP, export + registration."""

from rayml.train.trainer import (
    PreparedData,
    TrainResult,
    export_model_dir,
    fit,
    lineage_tags,
    loop_config,
    prepare_data,
    run_name_for,
    storage_path_for,
    train,
)

__all__ = [
    "PreparedData",
    "TrainResult",
    "export_model_dir",
    "fit",
    "lineage_tags",
    "loop_config",
    "prepare_data",
    "run_name_for",
    "storage_path_for",
    "train",
]
