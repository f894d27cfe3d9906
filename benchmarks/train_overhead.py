"""Epoch time of Ray Train (one CPU worker) over a plain PyTorch loop on the same data and model, in one run.

Both sides train the same TabularMLP on the same encoded rows with the same batch size, optimizer and thread count
(one thread: a Ray worker with one CPU gets OMP_NUM_THREADS=1), and validate every epoch. The Ray Train side is
rayml's real path (`rayml.train.fit`): Ray Data shard, per-epoch checkpoint to storage, report, MLflow logging.
Its epoch time is start-to-start (so it includes checkpoint + report); epoch 1 (shard caching) is excluded on both
sides, and the plain loop runs both before and after the Ray run. Prints one RESULT line:

    RESULT train_overhead epoch_time_ratio=<ray/plain> target<=1.15 PASS|MISS

Usage: python benchmarks/train_overhead.py [--rows-per-store 2000] [--stores 150] [--epochs 4]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time

import numpy as np
import torch

TARGET = 1.15


def plain_epoch_times(prepared, spec, cfg) -> list[float]:
    from rayml.models import build_model
    from rayml.train._loop import _tensors, evaluate

    torch.set_num_threads(1)
    model = build_model(spec, seed=cfg.train.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    loss_fn = torch.nn.MSELoss()
    num, cat, y = _tensors(prepared.train, spec, prepared.schema.target)
    vnum, vcat, vy = _tensors(prepared.validation, spec, prepared.schema.target)
    times = []
    for epoch in range(1, cfg.train.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(y), cfg.train.batch_size):
            idx = perm[i : i + cfg.train.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(num[idx], cat[idx], raw=True), y[idx])
            loss.backward()
            opt.step()
        evaluate(model, vnum, vcat, vy, torch.device("cpu"))
        times.append(time.perf_counter() - t0)
    return times[1:]


def ray_epoch_times(prepared, spec, cfg, tracking_uri: str) -> list[float]:
    from rayml.registry import Registry
    from rayml.train import fit

    reg = Registry(tracking_uri)
    run_id = reg.create_run("bench", "train-overhead")
    fit(cfg, prepared, spec, cfg.train.run_name, cfg.train.storage_path, tracking_uri, run_id)
    history = sorted(reg.client.get_metric_history(run_id, "previous_epoch_wall_s"), key=lambda m: m.step)
    compute = sorted(reg.client.get_metric_history(run_id, "epoch_time_s"), key=lambda m: m.step)
    print(f"Ray Train compute-only epoch times (train + validate): {', '.join(f'{m.value:.2f}' for m in compute)}")
    # the value logged at epoch k is the wall time of epoch k-1; drop epoch 1 (it caches the shard)
    return [m.value for m in history if m.step >= 3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=150)
    parser.add_argument("--rows-per-store", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = tempfile.mkdtemp(prefix="rayml-bench-")
    os.environ["RAYML_HOME"] = work

    from rayml.config import TrainJobConfig, load_config
    from rayml.models import build_spec
    from rayml.train import prepare_data

    cfg = load_config(
        TrainJobConfig,
        None,
        [
            f"data.synthetic.segments={args.stores}",
            f"data.synthetic.rows_per_segment={args.rows_per_store}",
            f"train.epochs={args.epochs}",
            "train.batch_size=256",
            "model.hidden_sizes=[128, 64]",
            f"train.storage_path={work}/runs",
            "train.run_name=bench-train-overhead",
        ],
    )
    prepared = prepare_data(cfg.data, cfg.train.seed)
    spec = build_spec(prepared.train, prepared.schema, cfg.model.hidden_sizes, cfg.model.dropout, cfg.model.embedding_dim)
    print(f"data: {len(prepared.train):,} train rows, {len(prepared.validation):,} validation rows; {args.epochs} epochs")

    # the plain loop runs before and after Ray Train, so load from elsewhere on the machine hits both sides alike
    plain = plain_epoch_times(prepared, spec, cfg)
    ray_times = ray_epoch_times(prepared, spec, cfg, f"sqlite:///{work}/mlflow.db")
    plain += plain_epoch_times(prepared, spec, cfg)
    p, r = statistics.median(plain), statistics.median(ray_times)
    ratio = r / p
    print(f"plain PyTorch loop: median epoch {p:.3f}s  ({', '.join(f'{t:.2f}' for t in plain)})")
    print(f"Ray Train, 1 worker: median epoch {r:.3f}s  ({', '.join(f'{t:.2f}' for t in ray_times)})")
    print(f"samples/s: plain {len(prepared.train) / p:,.0f}, Ray Train {len(prepared.train) / r:,.0f}")
    print(f"RESULT train_overhead epoch_time_ratio={ratio:.2f} target<={TARGET} {'PASS' if ratio <= TARGET else 'MISS'}")
    assert np.isfinite(ratio)


if __name__ == "__main__":
    main()
