"""Training on Ray Train: the worker loop, checkpointing, crash recovery, CPU/GPU, DDP, export + registration.

:class:`ResumableRun` and :class:`RunIdentity` are what ``train``, ``tune`` and ``manymodels`` share about a run that a
rerun of the same command continues: its name, its state file and its MLflow run. The worker loop (``run_loop``,
``train_loop_per_worker``, ``LoopSession``) imports Ray Train, and the tree helpers many models and tune share
(``boost_in_process``, ``tree_onnx``, ``TreeEncoding``, ``run_tree_loop``, ``fit_trees`` ...) import ONNX, so they load
on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayml._private.lazy import lazy_getattr
from rayml.train._numerics import raise_if_diverged as raise_if_diverged
from rayml.train._run import (
    ALL as ALL,
    EXECUTION_FIELDS as EXECUTION_FIELDS,
    Fields as Fields,
    ResumableRun as ResumableRun,
    RunIdentity as RunIdentity,
    all_but as all_but,
    config_params as config_params,
    create_or_resume_run as create_or_resume_run,
    identity_digest as identity_digest,
    only as only,
)
from rayml.train.trainer import (
    TRAIN_IDENTITY as TRAIN_IDENTITY,
    PreparedData as PreparedData,
    TrainResult,
    export_model_dir as export_model_dir,
    fit as fit,
    lineage_tags as lineage_tags,
    loop_config as loop_config,
    prepare_data as prepare_data,
    run_name_for as run_name_for,
    spec_for as spec_for,
    storage_path_for as storage_path_for,
    train,
)

if TYPE_CHECKING:
    from rayml.train._loop import (
        InMemorySession as InMemorySession,
        LoopSession as LoopSession,
        run_loop as run_loop,
        train_loop_per_worker as train_loop_per_worker,
    )
    from rayml.train._tree_fit import (
        best_booster as best_booster,
        boost_in_process as boost_in_process,
        export_tree_model_dir as export_tree_model_dir,
        fit_trees as fit_trees,
        tree_loop_config as tree_loop_config,
        tree_onnx as tree_onnx,
        tree_validation_metrics as tree_validation_metrics,
    )
    from rayml.train._trees import (
        TreeEncoding as TreeEncoding,
        read_tree_checkpoint as read_tree_checkpoint,
        run_tree_loop as run_tree_loop,
    )

_LAZY = {name: "rayml.train._loop" for name in ("InMemorySession", "LoopSession", "run_loop", "train_loop_per_worker")}
# trees: shared with many models (per-segment boosters); they import ONNX and the boosters' packages on first use
_LAZY |= {
    name: "rayml.train._tree_fit"
    for name in (
        "best_booster",
        "boost_in_process",
        "export_tree_model_dir",
        "fit_trees",
        "tree_loop_config",
        "tree_onnx",
        "tree_validation_metrics",
    )
}
_LAZY |= {name: "rayml.train._trees" for name in ("TreeEncoding", "read_tree_checkpoint", "run_tree_loop")}


__getattr__ = lazy_getattr(__name__, {name: (module, name) for name, module in _LAZY.items()}, globals())


# What users import. Names re-exported above as `X as X` are shared with other rayml packages: importable, but
# not part of the public API.
__all__ = [
    "TrainResult",
    "train",
]
