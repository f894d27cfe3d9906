"""`rayml quickstart`: the whole story on a laptop in a few minutes, printing what it does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from rayml.cli._common import VerboseOpt, console, fmt_metrics, setup_logging, table


def _step(n: int, title: str) -> None:
    console.print(f"\n[bold cyan]Step {n}[/] {title}")


def quickstart(
    workdir: Annotated[Path, typer.Option(help="Where data, MLflow DB, checkpoints and artifacts go.")] = Path(
        "rayml-quickstart"
    ),
    stores: Annotated[int, typer.Option(help="Stores (segments) in the synthetic data.")] = 8,
    days: Annotated[int, typer.Option(help="Days (rows) per store.")] = 180,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 4,
    verbose: VerboseOpt = False,
) -> None:
    """Generate data, train on Ray Train with checkpoints, register in MLflow, reload the ONNX model and predict.

    Everything is kept under --workdir (it becomes $RAYML_HOME for this run), so it never touches your other runs.
    """
    from rayml._private import constants

    setup_logging(verbose)
    t0 = time.perf_counter()
    home = constants.set_rayml_home(workdir)
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    console.print(f"[bold]rayml quickstart[/] in {home}")

    from rayml.config import SyntheticConfig, TrainJobConfig
    from rayml.data import generate_sales, write_dataset

    _step(1, "Generate a synthetic retail-sales dataset (a different price/promo/weather response per store)")
    df = generate_sales(SyntheticConfig(segments=stores, rows_per_segment=days, seed=7))
    data_dir = home / "data" / "sales"
    write_dataset(df, data_dir, files=2)
    console.print(f"  {len(df):,} rows, {stores} stores, {df.shape[1]} columns -> {data_dir}")

    _step(2, "Train on Ray Train (1 CPU worker), checkpointing every epoch, logging to MLflow")
    from rayml.train import train

    cfg = TrainJobConfig.model_validate(
        {
            "data": {"source": str(data_dir), "target": "sales", "task": "regression"},
            "model": {"name": "sales-model", "hidden_sizes": [64, 32]},
            "train": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.01, "run_name": f"quickstart-{int(time.time())}"},
            "registry": {"tracking_uri": tracking_uri, "experiment": "quickstart"},
        }
    )
    result = train(cfg)
    console.print(
        f"  run {result.run_name}: {result.epochs_completed} epochs, checkpoints in {result.storage_path}/{result.run_name}"
    )
    console.print(f"  best epoch {result.best_epoch}: {fmt_metrics(result.metrics, ['val_rmse', 'val_mae', 'val_loss'])}")

    _step(3, "Register in MLflow with lineage, and make it the production version")
    from rayml.registry import Registry

    reg = Registry(tracking_uri)
    info = result.model_version
    assert info is not None  # registration is on in this config
    reg.set_alias(info.name, info.version, "production")
    console.print(
        f"  {info.name} version {info.version}: data fingerprint {info.tags['rayml.data_fingerprint']}, "
        f"commit {info.tags['rayml.git_commit'][:12]}, "
        f"ray {info.tags['rayml.ray_version']}, torch {info.tags['rayml.torch_version']}"
    )

    _step(4, "Reload the ONNX model from the registry by alias and predict raw rows (no torch, no pickles)")
    loaded = reg.load(f"{info.name}@production")
    sample = df.sample(5, random_state=1)
    preds = loaded.predict(sample)
    rows = [
        [r.store_id, r.date, r.category, r.promo, f"{r.price:.2f}", f"{r.sales:.1f}", f"{p:.1f}"]
        for r, p in zip(sample.itertuples(), preds, strict=True)
    ]
    console.print(table("  predictions", ["store", "date", "category", "promo", "price", "actual sales", "predicted"], rows))
    console.print(f"  ONNX inputs: {', '.join(f'{i.name}:{i.datatype}' for i in loaded.predictor.inputs)}")

    console.print(f"\n[bold green]Done[/] in {time.perf_counter() - t0:.0f}s. Try next:")
    console.print(f"  export RAYML_HOME={home}")
    console.print("  rayml models list")
    console.print(f"  rayml models show {info.name}:{info.version}")
    console.print("  rayml train --config jobs/configs/train.yaml")
