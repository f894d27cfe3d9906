"""`rayml train`."""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated

import typer

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, fmt_metrics, load, setup_logging
from rayml.cli._output import start_output
from rayml.cli._progress import Bar, FollowTraining
from rayml.config import TrainJobConfig

InProcessOpt = Annotated[
    bool,
    typer.Option(
        "--in-process",
        help="Debug mode: run the training loop in this process, without Ray (same as --set train.in_process=true). "
        "A breakpoint() in your model code stops here.",
    ),
]


def train(config: ConfigOpt = None, set_: SetOpt = None, in_process: InProcessOpt = False, verbose: VerboseOpt = False) -> None:
    """Train a model on Ray Train, export it to ONNX and register it in MLflow.

    model.type picks the model: mlp (a torch network, trained by epochs) or xgboost / lightgbm (gradient-boosted
    trees on Ray Train's XGBoost / LightGBM trainers, trained by boosting rounds). Checkpoints every epoch (trees:
    every train.checkpoint_every_rounds rounds). If the driver crashes, run the same command again: it resumes from
    the last checkpoint (the run name comes from the config and the data fingerprint). A run that already registered
    its model is not trained again; change the config or --set train.run_name=NAME for a new run.

    A NaN or infinite loss stops training at once with an error that names the epoch and batch; nothing diverged is
    checkpointed or registered.

    --in-process (train.in_process) debugs a model step by step on small data: the same training loop runs in this
    process, with no Ray (one worker, no retries, no progress bar, nothing redirected to a log file), and writes the
    same checkpoints, model and registered version as a Ray run. Put breakpoint() in your model.factory network and
    step through it; from Python, rayml.train.train(cfg, overrides={"train.in_process": True}).
    """
    from rayml.train import train as run_training

    cfg = load(TrainJobConfig, config, [*(set_ or []), *(["train.in_process=true"] if in_process else [])])
    tree = getattr(cfg.model, cfg.model.type) if cfg.model.is_tree else None
    unit = "round" if tree is not None else "epoch"
    total = tree.num_boost_round if tree is not None else cfg.train.epochs
    if cfg.train.in_process:
        # a debugger talks to this terminal: no log capture, no live progress bar redrawing over its prompt
        setup_logging(verbose, default_level=logging.WARNING)
        console.print(f"Training in this process without Ray (train.in_process): {total} {unit}(s), one worker.")
        progress: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    else:
        start_output("train", verbose)
        bar = Bar(f"{unit}s", total=total)
        progress = _following(bar, cfg)
    with progress:
        result = run_training(cfg)
    if result.already_done:
        console.print(f"Run {result.run_name} already finished; nothing to train again.")
    elif len(result.resumed_from) > 1 or (result.resumed_from and result.resumed_from[0] > 0):
        resumed = [e for e in result.resumed_from if e > 0]
        console.print(f"Run {result.run_name} resumed from the checkpoint of {unit} {', '.join(map(str, resumed))}.")
    console.print(
        f"Trained {result.epochs_completed} {unit}(s), best {unit} {result.best_epoch}"
        f"{' (early stopped)' if result.early_stopped else ''}: {fmt_metrics(result.metrics, _SHOWN)}"
    )
    console.print(f"Data fingerprint {result.data_fingerprint}; MLflow run {result.mlflow_run_id}")
    if result.model_version:
        v = result.model_version
        console.print(
            f"Registered model: {v.name} version {v.version}" + (f" (aliases: {', '.join(v.aliases)})" if v.aliases else "")
        )
        console.print(f"Next: rayml models show {v.name}   |   rayml models alias {v.name} {v.version} production")
    else:
        console.print(f"Model exported to {result.model_dir} (registry.register_version is false)")


@contextlib.contextmanager
def _following(bar: Bar, cfg: TrainJobConfig):
    """The bar, moved by the epochs the run logs to MLflow."""
    with bar, FollowTraining(bar, cfg.registry.tracking_uri, cfg.registry.experiment, cfg.model.name, cfg.train.run_name):
        yield


_SHOWN = ["val_loss", "val_rmse", "val_mae", "val_accuracy", "val_auc"]
