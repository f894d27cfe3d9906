"""Wall time and validation RMSE of rayml's XGBoost on Ray Train (1 and 2 workers) against plain `xgboost.train`.

The data is the synthetic retail-sales table (--rows rows, stores x days, string columns region / category / promo /
store_id), generated once and written as parquet. Both sides boost the same rows with the same settings: rayml's own
train/validation split of that file (`rayml.train.prepare_data`, what `rayml train` uses), the same float matrix
(rayml's ordinal codes for the string columns, `TreeEncoding.matrix`), `hist`, --rounds rounds of depth --depth at
learning rate 0.1 (the shipped `jobs/configs/train_xgboost.yaml`'s 200 / 6 / 0.1), no early stopping, one thread per
process (a Ray worker with 1 CPU gets nthread=1), validation scored every round.

- plain: `xgboost.train` in this process, timed from the pandas frames to the trained booster (encode, DMatrix,
  boost): what a user runs instead. It runs before and after the Ray runs (load from elsewhere on the machine hits both
  sides alike); its time is the mean of the two.
- rayml: `rayml.train.train(config)` with `model.type=xgboost` (the real path: Ray Data shards, Ray Train's
  XGBoostTrainer, a checkpoint every `train.checkpoint_every_rounds`=10 rounds, MLflow). The ratio's time is the
  training phase, `fit_trees` (from handing the datasets to Ray Train to the final booster read back from its
  checkpoint), with Ray already started and one small warm-up run done; the whole `train()` wall time (load + validate
  + fingerprint the parquet, fit, ONNX export with its parity check, reference statistics, registration) is printed
  next to it. The validation RMSE is the registered model's (`result.metrics["val_rmse"]`).

    RESULT train_trees wall_time_ratio_1w=<rayml 1 worker / plain> target<=1.3 PASS|MISS
    RESULT train_trees val_rmse_diff_pct_1w=<100 * |rayml - plain| / plain> target<=1.0 PASS|MISS
    RESULT train_trees val_rmse_diff_pct_2w=<...> target<=1.0 PASS|MISS

(the 2-worker wall-time ratio is printed; on a 2-core machine two workers only share the cores the plain run has.)
A one-round run of both sides on the same data comes first: it shows the fixed cost of a Ray Train run (controller
and worker group start-up, Ray Data shards, checkpoint, teardown), which is what the ratio depends on: the longer
the boosting, the closer the ratio gets to the per-round cost, which is the same library doing the same work.

Usage: python benchmarks/train_trees.py [--rows 1000000] [--rounds 200] [--depth 6] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

TARGET_RATIO = 1.3
TARGET_METRIC_PCT = 1.0
ROWS_PER_STORE = 500
LEARNING_RATE = 0.1


def _cfg(data_path: str, work: str, workers: int, rounds: int, depth: int, run_name: str):
    from rayml.config import TrainJobConfig, load_config
    from rayml.testing import sales_columns

    return load_config(
        TrainJobConfig,
        None,
        [
            f"data.source={data_path}",
            *sales_columns(),
            "model.name=bench-xgboost",
            "model.type=xgboost",
            f"model.xgboost.num_boost_round={rounds}",
            f"model.xgboost.max_depth={depth}",
            f"model.xgboost.learning_rate={LEARNING_RATE}",
            f"train.num_workers={workers}",
            f"train.storage_path={work}/runs",
            f"train.run_name={run_name}",
            f"registry.tracking_uri=sqlite:///{work}/mlflow.db",
        ],
    )


def plain(prepared, rounds: int, depth: int, seed: int) -> tuple[float, float]:
    """Plain single-process `xgboost.train` on the same rows and matrix: (seconds, validation RMSE)."""
    import xgboost

    from rayml.train import TreeEncoding

    enc = TreeEncoding.of(prepared.schema)
    target = prepared.schema.target
    t0 = time.perf_counter()
    dtrain = xgboost.DMatrix(enc.matrix(prepared.train), label=prepared.train[target].to_numpy())
    dval = xgboost.DMatrix(enc.matrix(prepared.validation), label=prepared.validation[target].to_numpy())
    params = {
        "objective": "reg:squarederror",
        "eval_metric": "rmse",
        "tree_method": "hist",
        "max_depth": depth,
        "eta": LEARNING_RATE,
        "seed": seed,
        "nthread": 1,
    }
    booster = xgboost.train(params, dtrain, num_boost_round=rounds, evals=[(dval, "validation")], verbose_eval=False)
    seconds = time.perf_counter() - t0
    pred = booster.predict(dval)
    rmse = float(np.sqrt(np.mean((pred - prepared.validation[target].to_numpy()) ** 2)))
    return seconds, rmse


def rayml_train(cfg) -> tuple[float, float, float]:
    """`rayml.train.train(cfg)`: (fit_trees seconds, whole train() seconds, validation RMSE of the registered model)."""
    import rayml.train._tree_fit as tree_fit
    from rayml.train import train

    fit_s: list[float] = []
    original = tree_fit.fit_trees

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            fit_s.append(time.perf_counter() - t0)

    tree_fit.fit_trees = timed  # train() imports it from the module at call time
    try:
        t0 = time.perf_counter()
        result = train(cfg)
        whole = time.perf_counter() - t0
    finally:
        tree_fit.fit_trees = original
    if result.model_version is None or len(fit_s) != 1:
        raise RuntimeError(f"unexpected run: registered {result.model_version}, fits {fit_s}")
    return fit_s[0], whole, float(result.metrics["val_rmse"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in all (train + validation)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    logging.basicConfig(level=logging.WARNING)
    work = tempfile.mkdtemp(prefix="rayml-bench-trees-")
    os.environ["RAYML_HOME"] = work
    atexit.register(shutil.rmtree, work, True)

    import ray

    from rayml._private.ray_session import ensure_ray
    from rayml.config import SyntheticConfig
    from rayml.data import generate_sales
    from rayml.train import prepare_data

    stores = max(1, -(-args.rows // ROWS_PER_STORE))
    df = generate_sales(SyntheticConfig(segments=stores, rows_per_segment=min(args.rows, ROWS_PER_STORE), seed=0))
    data_path = os.path.join(work, "sales.parquet")
    df.to_parquet(data_path)
    warm_path = os.path.join(work, "warm.parquet")
    df.head(2000).to_parquet(warm_path)
    del df
    ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    cfg1 = _cfg(data_path, work, 1, args.rounds, args.depth, "bench-w1")
    prepared = prepare_data(cfg1.data, cfg1.train.seed)  # the split train() makes of the same file
    print(
        f"{len(prepared.train):,} train + {len(prepared.validation):,} validation rows ({stores} stores), "
        f"{args.rounds} rounds, depth {args.depth}, {cpus} CPUs (load {os.getloadavg()[0]:.1f})"
    )
    rayml_train(_cfg(warm_path, work, 1, 2, args.depth, "warmup"))  # imports, the first worker group
    # one round on the same data: what a run costs before boosting (Ray Train start-up, shards, checkpoint, teardown)
    one_fit, _, _ = rayml_train(_cfg(data_path, work, 1, 1, args.depth, "bench-one-round"))
    one_plain, _ = plain(prepared, 1, args.depth, cfg1.train.seed)

    plain_s, plain_rmse = plain(prepared, args.rounds, args.depth, cfg1.train.seed)
    print(f"plain xgboost.train (1 thread): {plain_s:.1f}s, val_rmse {plain_rmse:.4f}")
    runs = {}
    for w in workers:
        fit_s, whole_s, rmse = rayml_train(_cfg(data_path, work, w, args.rounds, args.depth, f"bench-w{w}"))
        runs[w] = (fit_s, whole_s, rmse)
        print(
            f"rayml XGBoost on Ray Train, {w} worker(s): fit {fit_s:.1f}s, whole train() {whole_s:.1f}s "
            f"(load, validate, fit, ONNX export + parity, reference stats, register), val_rmse {rmse:.4f}"
        )
    again_s, _ = plain(prepared, args.rounds, args.depth, cfg1.train.seed)
    print(f"plain xgboost.train again: {again_s:.1f}s")
    plain_mean = (plain_s + again_s) / 2
    print(f"load after: {os.getloadavg()[0]:.1f}")
    fixed = one_fit - one_plain
    print(
        f"one round: rayml fit {one_fit:.1f}s, plain {one_plain:.1f}s -> fixed cost of a Ray Train run about "
        f"{fixed:.1f}s; the remaining {args.rounds - 1} rounds: rayml {runs.get(1, (one_fit,))[0] - one_fit:.1f}s, "
        f"plain {plain_mean - one_plain:.1f}s"
    )
    for w, (fit_s, whole_s, rmse) in runs.items():
        ratio = fit_s / plain_mean
        diff = 100.0 * abs(rmse - plain_rmse) / plain_rmse
        print(f"{w} worker(s): fit / plain {ratio:.2f}, whole train() / plain {whole_s / plain_mean:.2f}")
        if w == 1:
            print(
                f"RESULT train_trees wall_time_ratio_1w={ratio:.2f} target<={TARGET_RATIO} "
                f"{'PASS' if ratio <= TARGET_RATIO else 'MISS'}"
            )
        print(
            f"RESULT train_trees val_rmse_diff_pct_{w}w={diff:.2f} target<={TARGET_METRIC_PCT} "
            f"{'PASS' if diff <= TARGET_METRIC_PCT else 'MISS'}"
        )


if __name__ == "__main__":
    main()
