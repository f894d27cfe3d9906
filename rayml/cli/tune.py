"""`rayml tune`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, load, table
from rayml.cli._output import start_output
from rayml.cli._progress import Bar, FollowSearch
from rayml.config import TuneJobConfig

ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted search of the same name: finished trials are kept, unfinished ones continue "
        "from their checkpoints.",
    ),
]


def tune(config: ConfigOpt = None, set_: SetOpt = None, resume: ResumeOpt = False, verbose: VerboseOpt = False) -> None:
    """Search hyperparameters on Ray Tune (ASHA or FIFO; random, grid or Optuna) and register the best model.

    The search space is the config's `tune.space`: fields such as train.learning_rate, train.batch_size,
    model.hidden_sizes or model.dropout (with model.factory: model.factory_kwargs.<name>; with model.type xgboost or
    lightgbm: the booster's settings, e.g. model.xgboost.max_depth), each a uniform / loguniform / randint range or a
    choice / grid list. Example configs: jobs/configs/tune.yaml (MLP), jobs/configs/tune_xgboost.yaml (trees).

    Every trial checkpoints every epoch (trees: every train.checkpoint_every_rounds boosting rounds). If the driver
    dies, run the same command with --resume.
    """
    from rayml.tune import table_rows, tune as run_search

    cfg = load(TuneJobConfig, config, set_)
    start_output("tune", verbose)
    with Bar("trials", total=trial_count(cfg)) as bar, FollowSearch(
        bar, cfg.registry.tracking_uri, cfg.registry.experiment, cfg.tune.name
    ):
        result = run_search(cfg, resume=resume)
    if result.already_done:
        console.print(f"Search {result.name} had already finished; showing its results.")
    elif result.resumed:
        console.print(f"Search {result.name} resumed: finished trials were kept, unfinished ones continued.")
    columns, rows = table_rows(result.trials, cfg)
    # piped output (CI logs, `| tee`) would wrap the table at 80 columns; a results table is read whole
    out = console if console.is_terminal else Console(width=200, highlight=False, file=console.file)
    out.print(table(f"Search {result.name}: {len(result.trials)} trials, best first", columns, rows))
    best = result.best
    early = f"; {result.stopped_early} stopped early by ASHA" if cfg.tune.scheduler == "asha" else ""
    out.print(
        f"Best trial {best.trial_id}: {result.metric}={best.best_metric:.5g} at {cfg.epoch_word} {best.best_epoch}{early}; "
        f"{result.total_epochs} {cfg.epoch_word}s trained over {len(result.trials)} trials",
    )
    out.print(f"Results: {result.results_path}\nLearning curves: {result.plot_path}")
    out.print(f"MLflow parent run {result.parent_run_id} (one child run per trial)")
    if result.model_version:
        v = result.model_version
        out.print(
            f"Registered model: {v.name} version {v.version}" + (f" (aliases: {', '.join(v.aliases)})" if v.aliases else "")
        )
        out.print(f"Next: rayml models show {v.name}   |   rayml models alias {v.name} {v.version} production")
    else:
        out.print(f"Best model exported to {result.model_dir} (registry.register_version is false)")


def trial_count(cfg: TuneJobConfig) -> int:
    """How many trials the search runs: every sample walks the whole grid (Tune's ``num_samples`` x grid points)."""
    points = 1
    for dim in cfg.tune.space.values():
        if dim.type == "grid":
            points *= len(dim.values or [])
    return cfg.resolved_num_samples * points
