"""`rayml train`."""

from __future__ import annotations

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, fmt_metrics, load
from rayml.cli._output import start_output
from rayml.cli._progress import Bar, FollowTraining
from rayml.config import TrainJobConfig


def train(config: ConfigOpt = None, set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Train a model on Ray Train, export it to ONNX and register it in MLflow.

    model.type picks the model: mlp (a torch network, trained by epochs) or xgboost / lightgbm (gradient-boosted
    trees on Ray Train's XGBoost / LightGBM trainers, trained by boosting rounds). Checkpoints every epoch (trees:
    every train.checkpoint_every_rounds rounds). If the driver crashes, run the same command again: it resumes from
    the last checkpoint (the run name comes from the config and the data fingerprint). A run that already registered
    its model is not trained again; change the config or --set train.run_name=NAME for a new run.
    """
    from rayml.train import train as run_training

    cfg = load(TrainJobConfig, config, set_)
    start_output("train", verbose)
    tree = getattr(cfg.model, cfg.model.type) if cfg.model.is_tree else None
    unit = "round" if tree is not None else "epoch"
    total = tree.num_boost_round if tree is not None else cfg.train.epochs
    with (
        Bar(f"{unit}s", total=total) as bar,
        FollowTraining(bar, cfg.registry.tracking_uri, cfg.registry.experiment, cfg.model.name, cfg.train.run_name),
    ):
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


_SHOWN = ["val_loss", "val_rmse", "val_mae", "val_accuracy", "val_auc"]
