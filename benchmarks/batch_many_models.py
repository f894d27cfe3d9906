"""Rows per second of `rayml batch` (the library path) with a model set, against two baselines, in one run.

Data: --segments stores x --rows-per-segment rows (default 1,000 x 8,000 = 8M rows) in --files parquet files
(split by whole stores, as `rayml data generate --files` writes them); a model set with one MLP per store plus the
fallback (weights are random: scoring costs the same as with trained weights, and setup stays short). The files
are read once before timing so every side finds them in the page cache; Ray is started before timing.

- library: `rayml.batch.run_batch` end to end (resolve the version, list inputs, actor pool start-up with one model
  set load per actor, read, score, stage, commit, ledger);
- single process: pandas + onnxruntime, every model loaded once up front; per file: read it, `groupby` the store,
  predict each group with its model, write the same output columns to parquet;
- naive Ray Data: `read_parquet().groupby(store).map_groups(fn)` where fn loads the group's ONNX model and predicts
  (task-based, with enough partitions not to deadlock), then `write_parquet`.

The library and single-process sides run --repeat times (default 2), alternating, and each side's best run counts
(other processes on a shared machine slow both alike); every run's time is printed. For that to hold, both sides
work at the same CPU priority: Ray starts its workers at nice 15 (to keep a node's raylet and drivers responsive),
which on a busy machine hands the single process, at nice 0, most of the CPU; this run's local Ray starts its
workers at nice 0 (RAY_worker_niceness=0).

    RESULT batch_many_models vs_single_process=<library rows/s / single-process rows/s> target>=1.6 PASS|MISS
    RESULT batch_many_models vs_naive_map_groups=<library rows/s / naive rows/s> target>=3 PASS|MISS

The default size amortises `rayml batch`'s fixed start-up (Ray Data starting the actor pool, each actor importing
and loading the set: about 1 s on 2 cores, 2 s in a process's first run, when Ray Data also starts its own actors;
the time to the first committed file is printed below); at 1M rows that start-up is a large part of the run.

Usage: python benchmarks/batch_many_models.py [--segments 1000] [--rows-per-segment 8000] [--files 32]
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rayml.models import ModelDir

TARGET_SINGLE = 1.6
TARGET_NAIVE = 3.0
NAME = "bench-stores"


def build_model_set(df: pd.DataFrame, work: Path, tracking_uri: str) -> tuple[str, Path]:
    from rayml.config import DataConfig
    from rayml.data import infer_schema
    from rayml.models import build_model, build_spec, export_onnx
    from rayml.registry import KIND_MODEL_SET, KIND_TAG, ModelSetWriter, Registry

    schema = infer_schema(df, DataConfig())
    writer = ModelSetWriter(work / "model_set", ["store_id"])
    for i, (key, part) in enumerate(df.groupby("store_id", sort=True)):
        writer.add_segment(str(key), i, export_onnx(build_model(build_spec(part, schema, [32, 16], 0.0, 4), seed=i)), len(part))
    global_onnx = export_onnx(build_model(build_spec(df, schema, [32, 16], 0.0, 4), seed=0))
    meta = {"task": "regression", "target": "sales", "schema": schema.to_dict()}
    path = writer.finish(global_onnx, serve_fallback=True, meta=meta, reference_stats={"global": {}, "segments": {}})
    reg = Registry(tracking_uri)
    info = reg.register(NAME, path, reg.create_run("bench", "batch"), {})
    reg.set_model_tag(NAME, KIND_TAG, KIND_MODEL_SET)
    return info.ref, path


def single_process(files: list[Path], model_dir: Path, out: Path) -> float:
    """pandas groupby + onnxruntime in one process, every model loaded once. Returns seconds."""
    from rayml.models import OnnxPredictor

    t0 = time.perf_counter()
    meta = ModelDir.read(model_dir).meta
    models = {key: OnnxPredictor(model_dir / e["file"]) for key, e in meta["segments"].items()}
    fallback = OnnxPredictor(model_dir / meta["fallback"])
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        df = pd.read_parquet(f)
        pred = np.empty(len(df), dtype=np.float32)
        served = np.empty(len(df), dtype=object)
        for key, idx in df.groupby("store_id", sort=False).indices.items():
            model = models.get(key)
            pred[idx] = (model or fallback).predict(df.iloc[idx])
            served[idx] = key if model else "__fallback__"
        result = df[["store_id", "date", "sales", "high_sales"]].copy()
        result["prediction"] = pred
        result["model_name"], result["model_version"], result["segment_model"] = NAME, 1, served
        key = hashlib.sha256(str(f).encode()).hexdigest()[:16]
        result["batch_run_id"] = "single"
        result["inference_id"] = np.char.add(f"b-{key}-", np.arange(len(df)).astype(str))
        result["error"] = None
        result.to_parquet(out / f.name, index=False)
    return time.perf_counter() - t0


def naive_map_groups(input_dir: Path, model_dir: Path, out: Path, partitions: int) -> float:
    """Ray Data groupby().map_groups() loading the group's model in each group. Returns seconds."""
    import ray.data

    meta = ModelDir.read(model_dir).meta
    files = {k: str(model_dir / e["file"]) for k, e in meta["segments"].items()}
    fallback = str(model_dir / meta["fallback"])

    def score_group(group: pd.DataFrame) -> pd.DataFrame:
        from rayml.models import OnnxPredictor

        key = str(group["store_id"].iloc[0])
        result = group[["store_id", "date", "sales", "high_sales"]].copy()
        result["prediction"] = OnnxPredictor(files.get(key, fallback)).predict(group)
        result["segment_model"] = key if key in files else "__fallback__"
        return result

    t0 = time.perf_counter()
    ds = ray.data.read_parquet(str(input_dir)).groupby("store_id", num_partitions=partitions)
    ds.map_groups(score_group, batch_format="pandas").write_parquet(str(out))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=1000)
    parser.add_argument("--rows-per-segment", type=int, default=8000)
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--partitions", type=int, default=32, help="groupby partitions of the naive baseline")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side (the best counts)")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="rayml-bench-batch-"))
    os.environ["RAYML_HOME"] = str(work)
    atexit.register(shutil.rmtree, work, True)  # gigabytes of generated data and outputs
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"

    import ray

    from rayml._private.ray_session import ensure_ray
    from rayml.batch import run_batch
    from rayml.config import SyntheticConfig
    from rayml.data import generate_sales, write_dataset

    df = generate_sales(SyntheticConfig(segments=args.segments, rows_per_segment=args.rows_per_segment, seed=1))
    files = write_dataset(df, work / "in", files=args.files)
    rows = len(df)
    t0 = time.perf_counter()
    ref, model_dir = build_model_set(df, work, tracking_uri)
    setup_s = time.perf_counter() - t0
    print(f"setup: {rows:,} rows in {len(files)} files, model set {ref} of {args.segments} models ({setup_s:.0f}s)")
    del df
    for f in files:  # page cache: every side reads warm files
        pd.read_parquet(f)
    # read by the raylet that ensure_ray starts (Ray config names are case-sensitive): workers at nice 0, like the single process
    os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112
    ensure_ray()
    print(f"{int(ray.cluster_resources().get('CPU', 1))} CPUs, load {os.getloadavg()[0]:.1f}")

    from rayml.config import BatchJobConfig

    cfg = BatchJobConfig.model_validate({"registry": {"tracking_uri": tracking_uri}})

    def library(rep: int) -> float:
        first: list[float] = []
        t0 = time.perf_counter()

        def on_file(_result, done: int, _total: int) -> None:
            if done == 1:
                first.append(time.perf_counter() - t0)

        s = run_batch(cfg, model=ref, input=str(work / "in"), output=str(work / f"out-rayml-{rep}"), progress=on_file)
        if not s.ok or s.rows != rows:
            raise SystemExit(f"rayml batch failed: {s}")
        print(f"  rayml batch: {s.wall_s:.1f}s ({s.actors} actors; first file committed after {first[0]:.1f}s)")
        return s.wall_s

    # alternate the two sides and keep each one's best run: other processes on the machine hit both alike
    lib_s, single_s = float("inf"), float("inf")
    for rep in range(args.repeat):
        lib_s = min(lib_s, library(rep))
        t = single_process(files, model_dir, work / f"out-single-{rep}")
        print(f"  single process: {t:.1f}s (load {os.getloadavg()[0]:.1f})")
        single_s = min(single_s, t)
    lib_rate, single_rate = rows / lib_s, rows / single_s
    print(f"rayml batch: best {lib_s:.1f}s = {lib_rate:,.0f} rows/s")
    print(f"single process (pandas groupby + onnxruntime): best {single_s:.1f}s = {single_rate:,.0f} rows/s")
    ratio_single = lib_rate / single_rate

    ratio_naive = None
    if not args.skip_naive:
        naive_s = naive_map_groups(work / "in", model_dir, work / "out-naive", args.partitions)
        naive_rate = rows / naive_s
        print(f"naive Ray Data groupby().map_groups(): {naive_s:.1f}s = {naive_rate:,.0f} rows/s")
        ratio_naive = lib_rate / naive_rate
    print(f"load after: {os.getloadavg()[0]:.1f}")
    print(
        f"RESULT batch_many_models vs_single_process={ratio_single:.2f} target>={TARGET_SINGLE} "
        f"{'PASS' if ratio_single >= TARGET_SINGLE else 'MISS'}"
    )
    if ratio_naive is not None:
        print(
            f"RESULT batch_many_models vs_naive_map_groups={ratio_naive:.2f} target>={TARGET_NAIVE:g} "
            f"{'PASS' if ratio_naive >= TARGET_NAIVE else 'MISS'}"
        )


if __name__ == "__main__":
    main()
