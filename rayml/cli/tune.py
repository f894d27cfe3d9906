"""`rayml tune`."""

from __future__ import annotations

from typing import Annotated

import typer

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, load, setup_logging, table
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

    The search space is the `tune.space` section of the config: any of model.hidden_sizes, model.dropout,
    model.embedding_dim, train.learning_rate, train.batch_size, train.weight_decay, train.epochs, ... as
    uniform / loguniform / randint ranges or choice / grid lists. Every trial checkpoints every epoch; if the
    driver dies, run the same command with --resume.
    """
    from rayml.tune import table_rows
    from rayml.tune import tune as run_search

    setup_logging(verbose)
    cfg = load(TuneJobConfig, config, set_)
    result = run_search(cfg, resume=resume)
    if result.already_done:
        console.print(f"Search {result.name} had already finished; showing its results.")
    elif result.resumed:
        console.print(f"Search {result.name} resumed: finished trials were kept, unfinished ones continued.")
    columns, rows = table_rows(result.trials, cfg)
    # piped output (CI logs, `| tee`) would wrap the table at 80 columns; a results table is read whole
    width = None if console.is_terminal else 200
    console.print(table(f"Search {result.name}: {len(result.trials)} trials, best first", columns, rows), width=width)
    best = result.best
    early = f"; {result.stopped_early} stopped early by ASHA" if cfg.tune.scheduler == "asha" else ""
    console.print(
        f"Best trial {best.trial_id}: {result.metric}={best.best_metric:.5g} at epoch {best.best_epoch}{early}; "
        f"{result.total_epochs} epochs trained over {len(result.trials)} trials",
        width=width,
    )
    console.print(f"Results: {result.results_path}\nLearning curves: {result.plot_path}", width=width, soft_wrap=True)
    console.print(f"MLflow parent run {result.parent_run_id} (one child run per trial)")
    if result.model_version:
        v = result.model_version
        console.print(
            f"Registered model: {v.name} version {v.version}" + (f" (aliases: {', '.join(v.aliases)})" if v.aliases else "")
        )
        console.print(f"Next: rayml models show {v.name}   |   rayml models alias {v.name} {v.version} production")
    else:
        console.print(f"Best model exported to {result.model_dir} (registry.register_version is false)")
