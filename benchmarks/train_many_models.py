"""Models per minute of `rayml manymodels train` (the library path) over a sequential loop, measured in one run.

Both sides train the same models with the same per-segment function (`rayml.manymodels.fit_with_retries`: a plain
torch loop, ONNX export + parity check, reference statistics) on the same split, one torch thread: every segment
with at least min_rows rows plus the global fallback model. The sequential side is one process, one model after
another. The parallel side is `train_model_set` (batched Ray tasks over the object-store table); its time is the
training phase (`train_wall_s`: from the first task submitted to the last result), with Ray already started. The
whole `train_model_set` wall time (data loading, validation, writing and registering the set) is printed too.
Both sides are warmed up first (a 4-segment run: imports, the first ONNX export), so the ratio compares steady-state
throughput, not which side paid for torch's first import.

    RESULT train_many_models models_per_min_ratio=<parallel/sequential> target>=1.6 PASS|MISS

With --compare it also measures the alternatives the design rejected, on the same data: one Ray task per segment,
Ray Data `groupby().map_groups()` (task-based), Ray Tune (one trial per segment, on --tune-segments segments) and
Ray Train (one TorchTrainer per segment, on --train-segments segments), each as models per minute.

Usage: python benchmarks/train_many_models.py [--segments 300] [--rows 400] [--epochs 10] [--compare]
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import logging
import os
import shutil
import tempfile
import time

TARGET = 1.6


def _cfg(data_path: str, epochs: int, work: str, *extra: str):
    from rayml.config import ManyModelsJobConfig, load_config
    from rayml.testing import sales_columns

    return load_config(
        ManyModelsJobConfig,
        None,
        [
            f"data.source={data_path}",
            *sales_columns(),
            "model.name=bench-stores",
            "model.hidden_sizes=[32, 16]",
            f"train.epochs={epochs}",
            "train.batch_size=32",
            "train.learning_rate=0.01",
            f"train.storage_path={work}/runs",
            "manymodels.min_rows=50",
            f"registry.tracking_uri=sqlite:///{work}/mlflow.db",
            *extra,
        ],
    )


def sequential(cfg, df) -> tuple[float, int]:
    """The same per-segment function, one model after another in this process."""
    import torch

    from rayml.data import infer_schema
    from rayml.manymodels import base_settings, fit_settings, fit_with_retries, segment_table, split_trainable
    from rayml.manymodels._plan import VAL_COLUMN

    torch.set_num_threads(1)
    schema = infer_schema(df, cfg.data)
    table = segment_table(df, cfg.data.segment, cfg.data.validation_fraction, cfg.train.seed)
    trainable, _ = split_trainable(table.segments, cfg.manymodels.min_rows)
    candidates = fit_settings(cfg)
    frame = table.frame
    t0 = time.perf_counter()
    for s in trainable:
        part = frame.iloc[s.start : s.start + s.rows]
        is_val = part[VAL_COLUMN].to_numpy()
        out = fit_with_retries(s.key, s.index, part[~is_val], part[is_val], schema, candidates, 0)
        if out.status != "trained":
            raise RuntimeError(out.error)
    is_val = frame[VAL_COLUMN].to_numpy()
    global_train = frame[~is_val]
    if len(global_train) > cfg.manymodels.global_max_rows:
        global_train = global_train.sample(n=cfg.manymodels.global_max_rows, random_state=cfg.train.seed)
    settings = dataclasses.replace(base_settings(cfg), batch_size=cfg.manymodels.global_batch_size)
    fit_with_retries("__global__", -1, global_train, frame[is_val], schema, [settings], 0)
    return time.perf_counter() - t0, len(trainable) + 1


def map_groups_rate(cfg, df) -> float:
    """Ray Data groupby().map_groups() (task-based: an actor pool deadlocks on 2 CPUs): models per minute."""
    import ray.data

    from rayml.data import infer_schema
    from rayml.manymodels import fit_settings

    schema = infer_schema(df, cfg.data).to_dict()
    candidates = fit_settings(cfg)

    def train_group(group):
        import torch

        from rayml.data import Schema, train_validation_split
        from rayml.manymodels import fit_segment

        torch.set_num_threads(1)
        key = str(group["store_id"].iloc[0])
        split = train_validation_split(group, cfg.data.validation_fraction, cfg.train.seed)
        out = fit_segment(key, split.train, split.validation, Schema.from_dict(schema), candidates)
        return {"key": [key], "bytes": [len(out.onnx)]}

    ds = ray.data.from_pandas(df).groupby("store_id", num_partitions=8)
    t0 = time.perf_counter()
    n = ds.map_groups(train_group, batch_format="pandas").count()
    return 60.0 * n / (time.perf_counter() - t0)


def tune_rate(cfg, df, n_segments: int) -> float:
    """Ray Tune, one trial per segment (the trainable calls the same per-segment function): models per minute."""
    from ray import tune

    from rayml.data import infer_schema
    from rayml.manymodels import fit_settings

    keys = sorted(df["store_id"].unique())[:n_segments]
    schema = infer_schema(df, cfg.data).to_dict()
    candidates = fit_settings(cfg)
    frames = {k: df[df.store_id == k] for k in keys}

    def trainable(config):
        import torch

        from rayml.data import Schema, train_validation_split
        from rayml.manymodels import fit_segment

        torch.set_num_threads(1)
        part = frames[config["key"]]
        split = train_validation_split(part, cfg.data.validation_fraction, cfg.train.seed)
        out = fit_segment(config["key"], split.train, split.validation, Schema.from_dict(schema), candidates)
        return {"val_loss": out.metrics["val_loss"]}

    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"key": tune.grid_search(keys)},
        run_config=tune.RunConfig(storage_path=os.path.join(tempfile.mkdtemp(), "tune"), verbose=0),
    )
    tuner.fit()
    return 60.0 * len(keys) / (time.perf_counter() - t0)


def ray_train_rate(cfg, df, n_segments: int) -> float:
    """One Ray Train TorchTrainer (1 worker, checkpoints) per segment, as `rayml train` runs one model."""
    from rayml.data import infer_schema, train_validation_split
    from rayml.models import build_spec
    from rayml.train import PreparedData, fit

    keys = sorted(df["store_id"].unique())[:n_segments]
    schema = infer_schema(df, cfg.data)
    t0 = time.perf_counter()
    for k in keys:
        part = df[df.store_id == k].reset_index(drop=True)
        split = train_validation_split(part, cfg.data.validation_fraction, cfg.train.seed)
        prepared = PreparedData(split.train, split.validation, schema, "bench", "bench")
        spec = build_spec(split.train, schema, cfg.model.hidden_sizes, 0.0, cfg.model.embedding_dim)
        fit(cfg, prepared, spec, f"bench-{k}", cfg.train.storage_path, None, None)
    return 60.0 * len(keys) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=300)
    parser.add_argument("--rows", type=int, default=400, help="rows per segment")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--compare", action="store_true", help="also measure the rejected mechanisms")
    parser.add_argument("--tune-segments", type=int, default=24)
    parser.add_argument("--train-segments", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = tempfile.mkdtemp(prefix="rayml-bench-mm-")
    os.environ["RAYML_HOME"] = work
    atexit.register(shutil.rmtree, work, True)  # gigabytes of generated data and outputs

    import ray

    from rayml._private.ray_session import ensure_ray
    from rayml.config import SyntheticConfig
    from rayml.data import generate_sales
    from rayml.manymodels import train_model_set

    df = generate_sales(SyntheticConfig(segments=args.segments, rows_per_segment=args.rows, seed=0))
    data_path = os.path.join(work, "sales.parquet")
    df.to_parquet(data_path)
    cfg = _cfg(data_path, args.epochs, work)
    ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    print(f"{args.segments} segments x {args.rows} rows, {args.epochs} epochs, {cpus} CPUs (load {os.getloadavg()[0]:.1f})")

    warm = df[df.store_id.isin(sorted(df.store_id.unique())[:4])]
    warm_path = os.path.join(work, "warm.parquet")
    warm.to_parquet(warm_path)
    sequential(cfg, warm)
    train_model_set(_cfg(warm_path, 1, work, "train.run_name=warmup"))

    seq_s, n_models = sequential(cfg, df)
    seq_rate = 60.0 * n_models / seq_s
    print(f"sequential: {n_models} models in {seq_s:.1f}s = {seq_rate:.0f} models/min")

    t0 = time.perf_counter()
    result = train_model_set(cfg)
    wall = time.perf_counter() - t0
    par_rate = 60.0 * n_models / result.train_wall_s
    print(
        f"rayml manymodels (batched Ray tasks, auto segments_per_task): {n_models} models in {result.train_wall_s:.1f}s "
        f"= {par_rate:.0f} models/min; whole train_model_set incl. data + registry: {wall:.1f}s"
    )
    if args.compare:
        one = train_model_set(_cfg(data_path, args.epochs, work, "manymodels.segments_per_task=1", "train.run_name=per1"))
        print(f"one Ray task per segment: {60.0 * n_models / one.train_wall_s:.0f} models/min")
        print(f"Ray Data groupby().map_groups() (tasks): {map_groups_rate(cfg, df):.0f} models/min")
        rate = tune_rate(cfg, df, args.tune_segments)
        print(f"Ray Tune, one trial per segment ({args.tune_segments} segments): {rate:.0f} models/min")
        print(
            f"Ray Train, one TorchTrainer per segment ({args.train_segments} segments): "
            f"{ray_train_rate(cfg, df, args.train_segments):.1f} models/min"
        )
    ratio = par_rate / seq_rate
    print(f"load after: {os.getloadavg()[0]:.1f}")
    print(f"RESULT train_many_models models_per_min_ratio={ratio:.2f} target>={TARGET} {'PASS' if ratio >= TARGET else 'MISS'}")


if __name__ == "__main__":
    main()
