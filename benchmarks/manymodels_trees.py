"""Many models with LightGBM: models per minute of `rayml manymodels train` over a sequential loop, and the median
per-segment validation RMSE against the many-MLP run on the same data, measured in one run.

The settings are the shipped configs': `jobs/configs/manymodels_lightgbm.yaml` (one single-threaded booster per store,
200 rounds at most, early-stopped on the store's own validation split) and `jobs/configs/manymodels.yaml` (one MLP per
store), with `data.source` pointed at the same generated parquet file (--segments stores x --rows days).

Throughput is measured as in `benchmarks/train_many_models.py` (its `sequential` helper): both sides train the same
segments with the same per-segment function (`rayml.manymodels.fit_with_retries`: boost, ONNX conversion + parity
check, reference statistics) on the same split, plus the global fallback model; the sequential side is one process,
one model after another; the parallel side is `train_model_set` (batched Ray tasks), timed over its training phase
(`train_wall_s`) with Ray already started. Both sides are warmed up first (a 4-segment run).

    RESULT manymodels_trees models_per_min_ratio=<parallel/sequential> target>=1.6 PASS|MISS
    RESULT manymodels_trees median_val_rmse_lightgbm_over_mlp=<LightGBM / MLP> target<1.0 PASS|MISS

(the second is a report: which model type wins on small per-segment data, and by how much; it is printed too.)

Usage: python benchmarks/manymodels_trees.py [--segments 300] [--rows 400] [--model-type lightgbm|xgboost]
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.6
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark's helpers

from train_many_models import sequential  # noqa: E402


def _cfg(yaml_name: str, data_path: str, work: str, *extra: str):
    from rayml.config import ManyModelsJobConfig, load_config
    from rayml.testing import sales_columns

    return load_config(
        ManyModelsJobConfig,
        ROOT / "jobs" / "configs" / yaml_name,
        [
            f"data.source={data_path}",
            *sales_columns(),
            f"train.storage_path={work}/runs",
            f"registry.tracking_uri=sqlite:///{work}/mlflow.db",
            *extra,
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--rows", type=int, default=400, help="rows per segment")
    parser.add_argument("--model-type", choices=["lightgbm", "xgboost"], default="lightgbm")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = tempfile.mkdtemp(prefix="rayml-bench-mmt-")
    os.environ["RAYML_HOME"] = work
    atexit.register(shutil.rmtree, work, True)

    import ray

    from rayml._private.ray_session import ensure_ray
    from rayml.config import SyntheticConfig
    from rayml.data import generate_sales
    from rayml.manymodels import train_model_set

    tree_yaml = f"manymodels_{args.model_type}.yaml"
    df = generate_sales(SyntheticConfig(segments=args.segments, rows_per_segment=args.rows, seed=0))
    data_path = os.path.join(work, "sales.parquet")
    df.to_parquet(data_path)
    cfg = _cfg(tree_yaml, data_path, work, "model.name=bench-stores-trees")
    ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    print(
        f"{args.segments} segments x {args.rows} rows, {args.model_type} as in jobs/configs/{tree_yaml}, {cpus} CPUs "
        f"(load {os.getloadavg()[0]:.1f})"
    )

    warm = df[df.store_id.isin(sorted(df.store_id.unique())[:4])]
    warm_path = os.path.join(work, "warm.parquet")
    warm.to_parquet(warm_path)
    sequential(cfg, warm)
    train_model_set(_cfg(tree_yaml, warm_path, work, "model.name=warmup", "train.run_name=warmup"))

    seq_s, n_models = sequential(cfg, df)
    seq_rate = 60.0 * n_models / seq_s
    print(f"sequential: {n_models} models in {seq_s:.1f}s = {seq_rate:.0f} models/min")

    t0 = time.perf_counter()
    trees = train_model_set(cfg)
    wall = time.perf_counter() - t0
    par_rate = 60.0 * n_models / trees.train_wall_s
    print(
        f"rayml manymodels ({args.model_type}, batched Ray tasks): {n_models} models in {trees.train_wall_s:.1f}s "
        f"= {par_rate:.0f} models/min; whole train_model_set incl. data + registry: {wall:.1f}s"
    )

    t0 = time.perf_counter()
    mlp = train_model_set(_cfg("manymodels.yaml", data_path, work, "model.name=bench-stores-mlp"))
    print(
        f"rayml manymodels (MLP, jobs/configs/manymodels.yaml): {n_models} models in {mlp.train_wall_s:.1f}s "
        f"= {60.0 * n_models / mlp.train_wall_s:.0f} models/min; whole: {time.perf_counter() - t0:.1f}s"
    )
    t, m = trees.metrics, mlp.metrics
    print(
        f"median per-segment val RMSE: {args.model_type} {t['median_segment_val_rmse']:.2f}, "
        f"MLP {m['median_segment_val_rmse']:.2f}; global fallback model: {args.model_type} "
        f"{t['median_global_val_rmse']:.2f}, MLP {m['median_global_val_rmse']:.2f}"
    )
    print(
        f"segments beating the global model: {args.model_type} {t.get('segments_beating_global_share', 0):.0%}, "
        f"MLP {m.get('segments_beating_global_share', 0):.0%}"
    )
    ratio = par_rate / seq_rate
    err = t["median_segment_val_rmse"] / m["median_segment_val_rmse"]
    print(f"load after: {os.getloadavg()[0]:.1f}")
    print(f"RESULT manymodels_trees models_per_min_ratio={ratio:.2f} target>={TARGET} {'PASS' if ratio >= TARGET else 'MISS'}")
    if err < 1:
        print(f"{args.model_type} wins: its median segment val RMSE is {100 * (1 - err):.0f}% lower than the MLP's")
    else:
        print(f"the MLP wins: its median segment val RMSE is {100 * (1 - 1 / err):.0f}% lower than {args.model_type}'s")
    print(
        f"RESULT manymodels_trees median_val_rmse_{args.model_type}_over_mlp={err:.2f} target<1.0 {'PASS' if err < 1 else 'MISS'}"
    )


if __name__ == "__main__":
    main()
