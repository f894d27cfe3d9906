"""`rayml quickstart`: the whole story on a laptop in a few minutes, printing what it does."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from rayml.cli._common import VerboseOpt, console, fmt_metrics, table
from rayml.cli._output import start_output
from rayml.cli._progress import Bar, FollowSearch, FollowTraining
from rayml.cli.validate import print_gate_failures

MODEL = "sales-model"
FAMILY = "sales-per-store"
TREES_FAMILY = "sales-per-store-lgbm"


@dataclass
class _Ctx:
    """What the steps share."""

    home: Path
    tracking_uri: str
    stores: int
    days: int
    epochs: int
    trials: int
    data_dir: Path = Path()
    df: Any = None
    versions: dict[str, int] = field(default_factory=dict)
    registry: Any = None
    serve_url: str | None = None  # the serve step leaves the app up when the drift step follows
    skip: list[str] = field(default_factory=list)


def _data_and_train(ctx: _Ctx) -> None:
    from rayml.config import SyntheticConfig, TrainJobConfig, synthetic_roles
    from rayml.data import generate_sales, write_dataset
    from rayml.registry import Registry
    from rayml.train import train

    _step("Generate a synthetic retail-sales dataset (a different price/promo/weather response per store)")
    ctx.df = generate_sales(SyntheticConfig(segments=ctx.stores, rows_per_segment=ctx.days, seed=7))
    ctx.data_dir = ctx.home / "data" / "sales"
    write_dataset(ctx.df, ctx.data_dir, files=2)
    console.print(f"  {len(ctx.df):,} rows, {ctx.stores} stores, {ctx.df.shape[1]} columns -> {ctx.data_dir}")

    _step("Train on Ray Train (1 CPU worker), checkpointing every epoch, logging to MLflow")
    cfg = TrainJobConfig.model_validate(
        {
            "data": {"source": str(ctx.data_dir), **synthetic_roles(), "task": "regression"},
            "model": {"name": MODEL, "hidden_sizes": [64, 32]},
            "train": {
                "epochs": ctx.epochs,
                "batch_size": 64,
                "learning_rate": 0.01,
                "run_name": f"quickstart-{int(time.time())}",
            },
            "registry": {"tracking_uri": ctx.tracking_uri, "experiment": "quickstart"},
        }
    )
    with Bar("epochs", total=ctx.epochs) as bar, FollowTraining(bar, ctx.tracking_uri, "quickstart", MODEL, cfg.train.run_name):
        result = train(cfg)
    console.print(
        f"  run {result.run_name}: {result.epochs_completed} epochs, checkpoints in {result.storage_path}/{result.run_name}"
    )
    console.print(f"  best epoch {result.best_epoch}: {fmt_metrics(result.metrics, ['val_rmse', 'val_mae', 'val_loss'])}")

    _step("Register in MLflow with lineage, and make it the production version")
    ctx.registry = Registry(ctx.tracking_uri)
    info = result.model_version
    if info is None:
        raise RuntimeError("the quickstart config registers its model")
    ctx.registry.set_alias(info.name, info.version, "production")
    ctx.versions["trained"] = info.version
    tags = info.tags
    console.print(
        f"  {info.name} version {info.version}: data fingerprint {tags['rayml.data_fingerprint']}, "
        f"commit {tags['rayml.git_commit'][:12]}, ray {tags['rayml.ray_version']}, torch {tags['rayml.torch_version']}"
    )

    _step("Reload the ONNX model from the registry by alias and predict raw rows (no torch, no pickles)")
    loaded = ctx.registry.load(f"{MODEL}@production")
    sample = ctx.df.sample(5, random_state=1)
    preds = loaded.predict(sample)
    rows = [
        [r.store_id, r.date, r.category, r.promo, f"{r.price:.2f}", f"{r.sales:.1f}", f"{p:.1f}"]
        for r, p in zip(sample.itertuples(), preds, strict=True)
    ]
    console.print(table("  predictions", ["store", "date", "category", "promo", "price", "actual sales", "predicted"], rows))
    console.print(f"  ONNX inputs: {', '.join(f'{i.name}:{i.datatype}' for i in loaded.predictor.inputs)}")


def _tune(ctx: _Ctx) -> None:
    from rayml.config import TuneJobConfig, synthetic_roles
    from rayml.tune import tune

    _step(f"Tune on Ray Tune: {ctx.trials} trials, ASHA stops the weak ones early")
    cfg = TuneJobConfig.model_validate(
        {
            "data": {"source": str(ctx.data_dir), **synthetic_roles(), "task": "regression"},
            "model": {"name": MODEL},
            "train": {"epochs": max(ctx.epochs, 4), "batch_size": 64, "seed": 0},
            "registry": {"tracking_uri": ctx.tracking_uri, "experiment": "quickstart"},
            "tune": {
                "name": f"quickstart-{int(time.time())}",
                "num_samples": ctx.trials,
                "max_concurrent_trials": 2,
                "scheduler": "asha",
                "asha": {"grace_period": 1, "reduction_factor": 2},
                "space": {
                    "train.learning_rate": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
                    "model.hidden_sizes": {"type": "choice", "values": [[32], [64, 32]]},
                },
            },
        }
    )
    with Bar("trials", total=ctx.trials) as bar, FollowSearch(bar, ctx.tracking_uri, "quickstart", cfg.tune.name):
        result = tune(cfg)
    rows = [
        [t.trial_id, ", ".join(f"{k}={_short(v)}" for k, v in t.params.items()), _short(t.best_metric), t.epochs_run, t.status]
        for t in result.trials
    ]
    console.print(table(f"  trials (best first, {result.metric})", ["trial", "params", result.metric, "epochs", "status"], rows))
    console.print(f"  best config: {', '.join(f'{k}={_short(v)}' for k, v in result.best_params.items())}")
    console.print(
        f"  {result.total_epochs} epochs in all; {result.stopped_early} trial(s) stopped early; curves: {result.plot_path}"
    )
    if result.model_version:
        ctx.versions["tuned"] = result.model_version.version
        console.print(f"  registered {result.model_version.name} version {result.model_version.version}")


def _many_models(ctx: _Ctx) -> None:
    from rayml.config import ManyModelsJobConfig, synthetic_roles
    from rayml.manymodels import train_model_set

    _step(
        f"Many models: one model per store ({ctx.stores} stores) trained in parallel Ray tasks, one model-set version; "
        "then the same with one LightGBM booster per store"
    )
    common = {
        "data": {"source": str(ctx.data_dir), **synthetic_roles(), "task": "regression"},
        "registry": {"tracking_uri": ctx.tracking_uri, "experiment": "quickstart"},
    }
    cfg = ManyModelsJobConfig.model_validate(
        {
            **common,
            "model": {"name": FAMILY, "hidden_sizes": [32]},
            "train": {
                "epochs": max(ctx.epochs * 5, 20),
                "batch_size": 64,
                "learning_rate": 0.01,
                "run_name": f"qs-{int(time.time())}",
            },
        }
    )
    with Bar("segments") as bar:
        result = train_model_set(cfg, progress=lambda done, total: bar.update(done, total))
    console.print(
        f"  {result.segments} segments: {result.trained} trained, {result.fell_back} on the global fallback, "
        f"{len(result.failed)} failed; {result.models_per_min:,.0f} models/min"
    )
    if result.model_version is None:
        raise RuntimeError("the model set was not registered")
    ctx.versions["family"] = result.model_version.version
    ctx.registry.set_alias(FAMILY, result.model_version.version, "production")
    m = result.metrics
    if "median_segment_val_rmse" in m and "median_global_val_rmse" in m:
        console.print(
            f"  median validation RMSE per store: {m['median_segment_val_rmse']:.2f} with its own model vs "
            f"{m['median_global_val_rmse']:.2f} with the global model; {m.get('segments_beating_global_share', 0):.0%} "
            "of stores are better served by their own model"
        )

    # the same stores, split and fallback with gradient-boosted trees (model.type: lightgbm; the MLP family stays the
    # production one that the next steps batch-score)
    trees_cfg = ManyModelsJobConfig.model_validate(
        {
            **common,
            "model": {
                "name": TREES_FAMILY,
                "type": "lightgbm",
                "lightgbm": {"num_boost_round": 200, "num_leaves": 15, "min_data_in_leaf": 10, "early_stopping_rounds": 10},
            },
            "train": {"run_name": f"qs-lgbm-{int(time.time())}"},
        }
    )
    with Bar("segments") as bar:
        trees = train_model_set(trees_cfg, progress=lambda done, total: bar.update(done, total))
    if trees.model_version is None:
        raise RuntimeError("the LightGBM model set was not registered")
    console.print(
        f"  {TREES_FAMILY} version {trees.model_version.version}: {trees.trained} LightGBM boosters trained, "
        f"{trees.fell_back} on the fallback, {len(trees.failed)} failed; {trees.models_per_min:,.0f} models/min"
    )
    rows = [_family_row("mlp", result), _family_row("lightgbm", trees)]
    headers = ["model.type", "median store val RMSE", "global model's", "stores beating it", "train s"]
    console.print(table("  validation RMSE on each store's own split (lower is better)", headers, rows))


def _family_row(label: str, result: Any) -> list[str]:
    m = result.metrics
    return [
        label,
        f"{m.get('median_segment_val_rmse', float('nan')):.2f}",
        f"{m.get('median_global_val_rmse', float('nan')):.2f}",
        f"{m.get('segments_beating_global_share', 0):.0%}",
        f"{result.train_wall_s:.1f}",
    ]


def _batch(ctx: _Ctx) -> None:
    from rayml.batch import run_batch

    _step("Batch-score the data with the model set on Ray Data (each file committed atomically, exactly once)")
    out = ctx.home / "scores"
    with Bar("files") as bar:
        summary = run_batch(
            model=f"{FAMILY}@production",
            input=str(ctx.data_dir),
            output=str(out),
            registry=ctx.registry,
            progress=lambda _result, done, total: bar.update(done, total),
        )
    console.print(
        f"  {summary.rows:,} rows in {summary.wall_s:.1f}s ({summary.rows_per_s:,.0f} rows/s), {summary.committed} file(s) "
        f"committed, {summary.skipped} skipped -> {out}"
    )
    again = run_batch(model=f"{FAMILY}@production", input=str(ctx.data_dir), output=str(out), registry=ctx.registry)
    console.print(f"  the same command again: {again.committed} committed, {again.skipped} skipped (nothing scored twice)")


def _gate(ctx: _Ctx) -> None:
    from rayml.config import GateConfig
    from rayml.gate import run_gate

    _step("Validation gate: a deliberately broken candidate is refused")
    prod = ctx.registry.load(f"{MODEL}@production")
    broken_dir = ctx.home / "broken-model"
    _write_broken_copy(prod.path, broken_dir)
    run_id = ctx.registry.create_run("quickstart", "broken-candidate")
    broken = ctx.registry.register(MODEL, broken_dir, run_id, {**prod.info.tags, "rayml.note": "quickstart: broken on purpose"})
    holdout = ctx.df.sample(frac=0.3, random_state=3)
    ctx.versions["broken"] = broken.version
    report = run_gate(ctx.registry, MODEL, broken.version, holdout, GateConfig(), baseline_alias="production")
    verdict = "[bold green]PASSED[/]" if report.passed else "[bold red]REFUSED[/]"
    console.print(f"  candidate v{broken.version} vs production v{report.baseline}: {verdict}")
    saved = ctx.home / f"gate-report-v{broken.version}.json"
    saved.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    print_gate_failures(report, f"all of them in {saved}", indent="    ")
    top = list(report.feature_importance.items())[:3]
    console.print(f"  most important features (permutation): {', '.join(f'{k} ({v:.3g})' for k, v in top)}")


def _write_broken_copy(src: Path, dst: Path) -> None:
    """A copy of a model whose output is scaled by 25: valid ONNX, wrong answers (what a bad retrain looks like)."""
    import shutil

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from rayml.models import ModelDir

    shutil.copytree(src, dst, dirs_exist_ok=True)
    model_file = ModelDir(dst).model_file
    m = onnx.load(str(model_file))
    out = m.graph.output[0].name
    m.graph.initializer.append(numpy_helper.from_array(np.array(25.0, dtype="float32"), "quickstart_scale"))
    for node in m.graph.node:
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = "unscaled_prediction"
    m.graph.node.append(helper.make_node("Mul", ["unscaled_prediction", "quickstart_scale"], [out]))
    onnx.save(m, str(model_file))


def _serve(ctx: _Ctx) -> None:
    from rayml.cli._demo import canary_demo

    stable = ctx.versions["trained"]
    canary = ctx.versions.get("tuned") or _copy_version(ctx, stable, "canary")
    shadow = ctx.versions.get("broken") or _copy_version(ctx, stable, "shadow")
    _step(f"Serve on Ray Serve: v{stable} stable, v{canary} as a 10% canary, v{shadow} in shadow; then promote v{canary}")
    keep = "drift" not in ctx.skip
    requests = 300
    with Bar("requests", total=requests) as bar:
        result = canary_demo(
            ctx.tracking_uri,
            MODEL,
            ctx.df.sample(200, random_state=5),
            versions=(stable, canary, shadow),
            requests=requests,
            report=lambda line: console.print(f"  {line}"),
            keep_running=keep,
            on_request=bar.update,
        )
    ctx.versions["served"] = result.promoted
    ctx.serve_url = result.url if keep else None
    if result.failed:
        console.print(f"  [bold red]{result.failed} request(s) failed[/]")
    console.print(f"  the old version stays as {MODEL}@previous: `rayml rollback --model {MODEL}` restores it in one command")


def _drift(ctx: _Ctx) -> None:
    import httpx
    import numpy as np

    from rayml.config import ServeJobConfig
    from rayml.data.synthetic import apply_drift, parse_drift
    from rayml.serve import drift_status, undeploy

    _step("Online drift: the served model counts every row into its training bins; a price shift is caught")
    if ctx.serve_url is None:
        console.print("  skipped: needs the serve step")
        return
    try:
        served, previous = ctx.versions["served"], ctx.versions["trained"]
        rows = ctx.df.sample(600, random_state=11, replace=len(ctx.df) < 600)
        (shift,) = parse_drift(["shift:price=2"])
        drifted = apply_drift(rows, shift, np.random.default_rng(0))
        with httpx.Client(base_url=ctx.serve_url, timeout=30) as client:
            types = {i["name"]: i["datatype"] for i in client.get(f"/v2/models/{MODEL}").json()["inputs"]}
            inputs = list(types)
            # clean rows pinned to the previous version, drifted rows (prices up 2 std) through the production route
            for i in range(0, len(rows), 100):
                clean = rows.iloc[i : i + 100][inputs].to_dict("records")
                client.post(f"/v2/models/{MODEL}/versions/{previous}/infer", json=_v2(clean, types)).raise_for_status()
                bad = drifted.iloc[i : i + 100][inputs].to_dict("records")
                client.post(f"/v1/models/{MODEL}:predict", json={"instances": bad}).raise_for_status()
        console.print(f"  sent {len(rows)} clean rows to v{previous} and {len(rows)} rows with prices shifted up to v{served}")
        report: dict = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # replicas push their counts every stats flush (about 1 s)
            report = drift_status(ServeJobConfig(), model=MODEL).get(MODEL, {})  # the serve step used the default app
            if all(report.get(v, {}).get("rows", 0) >= len(rows) for v in (served, previous)):
                break  # every row just sent is counted (the canary phase's rows are in the window too)
            time.sleep(1.0)
        headers = ["version", "rows", "status", "price PSI", "alerting features"]
        rows_out = []
        for version in sorted(report):
            r = report[version]
            price = r["features"].get("price", {}).get("metrics", {})
            drifted_names = ", ".join(r.get("drifted_features", [])) or "-"
            rows_out.append([f"v{version}", r["rows"], r["status"], f"{price.get('psi', float('nan')):.3f}", drifted_names])
        console.print(table("  drift per served version", headers, rows_out))
        console.print("  the same numbers are Prometheus gauges: ray_rayml_feature_drift{model,version,feature,metric}")
    finally:
        undeploy(ServeJobConfig(), keep_ray=False)


def _v2(records: list[dict], types: dict[str, str]) -> dict:
    """An Open Inference Protocol v2 request: one tensor per column, typed as the model's metadata says."""
    return {
        "inputs": [
            {"name": name, "shape": [len(records)], "datatype": dtype, "data": [r[name] for r in records]}
            for name, dtype in types.items()
        ]
    }


def _copy_version(ctx: _Ctx, version: int, why: str) -> int:
    """Another version of the same model (when the step that makes one was skipped)."""
    loaded = ctx.registry.load(f"{MODEL}:{version}")
    run_id = ctx.registry.create_run("quickstart", f"{why}-copy")
    return ctx.registry.register(MODEL, loaded.path, run_id, {**loaded.info.tags, "rayml.note": f"quickstart {why} copy"}).version


STEPS: dict[str, Callable[[_Ctx], None]] = {
    "train": _data_and_train,
    "tune": _tune,
    "manymodels": _many_models,
    "batch": _batch,
    "gate": _gate,
    "serve": _serve,
    "drift": _drift,
}
_step_no = 0


def _step(title: str) -> None:
    global _step_no
    _step_no += 1
    console.print(f"\n[bold cyan]Step {_step_no}[/] {title}")


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def quickstart(
    workdir: Annotated[Path, typer.Option(help="Where data, MLflow DB, checkpoints and artifacts go.")] = Path(
        "rayml-quickstart"
    ),
    stores: Annotated[int, typer.Option(help="Stores (segments) in the synthetic data.")] = 24,
    days: Annotated[int, typer.Option(help="Days (rows) per store.")] = 120,
    epochs: Annotated[int, typer.Option(help="Training epochs of the global model.")] = 4,
    trials: Annotated[int, typer.Option(help="Tuning trials.")] = 4,
    skip: Annotated[
        list[str] | None, typer.Option(help=f"Skip a step (repeatable): {', '.join(s for s in STEPS if s != 'train')}.")
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Generate data, train on Ray Train with checkpoints, register in MLflow, reload the ONNX model and predict; then
    tune with ASHA, train one model per store (MLPs, then LightGBM boosters, side by side), batch-score with the model
    set, show the validation gate refusing a broken model, serve: a weighted canary with the broken model in shadow,
    then promotion, and finally catch drifted traffic online (per-version drift status from every replica's counts).

    Everything is kept under --workdir (it becomes $RAYML_HOME for this run), so it never touches your other runs;
    the logs of Ray, MLflow and the workers go to --workdir/logs/ (--verbose shows them instead).
    """
    from rayml._private import constants
    from rayml.errors import ConfigError

    unknown = sorted(set(skip or []) - set(STEPS) | ({"train"} & set(skip or [])))
    if unknown:
        raise ConfigError(f"--skip {unknown} is not a step that can be skipped", hint=f"steps: {', '.join(list(STEPS)[1:])}")
    t0 = time.perf_counter()
    home = constants.set_rayml_home(workdir)
    ctx = _Ctx(
        home=home,
        tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        stores=stores,
        days=days,
        epochs=epochs,
        trials=trials,
        skip=list(skip or []),
    )
    console.print(f"[bold]rayml quickstart[/] in {home}")
    start_output("quickstart", verbose)  # after set_rayml_home: the log goes under --workdir with the rest
    for name, step in STEPS.items():
        if name not in (skip or []):
            step(ctx)

    console.print(f"\n[bold green]Done[/] in {time.perf_counter() - t0:.0f}s. Try next:")
    console.print(f"  export RAYML_HOME={home}")
    console.print("  rayml models list")
    console.print(f"  rayml models show {MODEL}:{ctx.versions['trained']}")
    console.print(f"  rayml monitor drift --model {MODEL}@production --data {ctx.data_dir}")
    console.print("  rayml train --config jobs/configs/train.yaml")
