"""ASHA vs full-budget random search (FIFO) on the same space, seeds and trials.

    python benchmarks/tune_asha.py [--trials 12] [--epochs 16] [--concurrency 1] [--grace-period 2] [--reduction-factor 3]

Both searches use the same searcher seed, so they train the same sampled configurations (checked below); only the
scheduler differs. One trial at a time by default: asynchronous ASHA's stop decisions depend on which trials reach a
rung first, so with concurrent trials the epoch count varies from run to run. Prints the training epochs and wall
time of each, and ends with one line per target:

    RESULT tune_asha epochs_ratio=<ASHA epochs / FIFO epochs> target<=0.50 PASS|MISS
    RESULT tune_asha best_metric_gap=<(ASHA best - FIFO best) / FIFO best> target<=0.02 PASS|MISS

Everything (local Ray, MLflow, checkpoints) lives in a temporary RAYML_HOME that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time

EPOCHS_RATIO_TARGET = 0.50
GAP_TARGET = 0.02


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, list) else str(value)


def _config(name: str, scheduler: str, args: argparse.Namespace, home: str):
    from rayml.config import TuneJobConfig

    return TuneJobConfig.model_validate(
        {
            "data": {"synthetic": {"segments": 16, "rows_per_segment": 1000, "seed": 0}},
            "model": {"name": "bench-model"},
            "train": {"epochs": args.epochs, "batch_size": 64, "seed": 0},
            "registry": {"tracking_uri": f"sqlite:///{home}/mlflow.db", "experiment": "bench", "register_version": False},
            "tune": {
                "name": name,
                "metric": "val_rmse",
                "search": "random",
                "scheduler": scheduler,
                "asha": {"grace_period": args.grace_period, "reduction_factor": args.reduction_factor},
                "num_samples": args.trials,
                "max_concurrent_trials": args.concurrency,
                "seed": args.seed,
                "space": {
                    "train.learning_rate": {"loguniform": [1e-4, 3e-2]},
                    "train.batch_size": {"choice": [32, 64, 128]},
                    "train.weight_decay": {"loguniform": [1e-6, 1e-2]},
                    "model.hidden_sizes": {"choice": [[32], [64, 32], [128, 64]]},
                    "model.dropout": {"uniform": [0.0, 0.3]},
                },
            },
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # ASHA's saving grows with the budget it can cut: with 8 epochs and rungs at 2/4/8 even synchronous halving keeps
    # half of the epochs, so the defaults are a budget a real search would have (12 trials x 16 epochs, rungs 2/6)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="max_concurrent_trials; 1 makes ASHA's decisions deterministic, more makes them depend on trial timing",
    )
    parser.add_argument("--seed", type=int, default=0, help="searcher seed shared by both searches")
    parser.add_argument("--grace-period", type=int, default=2, help="ASHA: epochs before a trial can be stopped")
    parser.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA: keep the best 1/rf at each rung")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    home = tempfile.mkdtemp(prefix="rayml-bench-tune-")
    os.environ["RAYML_HOME"] = home
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        from rayml._private.ray_session import ensure_ray
        from rayml.tune import tune

        ensure_ray()
        runs = {}
        for scheduler in ("asha", "fifo"):
            t0 = time.perf_counter()
            result = tune(_config(f"bench-{scheduler}", scheduler, args, home))
            runs[scheduler] = (result, time.perf_counter() - t0)
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(home, ignore_errors=True)

    asha, asha_s = runs["asha"]
    fifo, fifo_s = runs["fifo"]

    def configs(r):
        return sorted(json.dumps(t.params, sort_keys=True) for t in r.trials)

    if configs(asha) != configs(fifo):
        print("error: the two searches sampled different configurations; the comparison would be meaningless")
        return 1
    print(f"\n{args.trials} trials x up to {args.epochs} epochs, {args.concurrency} at a time, same sampled configs")
    fifo_by_params = {json.dumps(t.params, sort_keys=True): t for t in fifo.trials}
    print(f"{'configuration':>90}  {'ASHA epochs':>11} {'ASHA best':>9}  {'FIFO best':>9} {'at epoch':>8}")
    for t in asha.trials:
        f = fifo_by_params[json.dumps(t.params, sort_keys=True)]
        shown = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in t.params.items())
        print(f"{shown:>90}  {t.epochs_run:>11} {t.best_metric:9.3f}  {f.best_metric:9.3f} {f.best_epoch:>8}")
    for label, (r, wall) in (("ASHA", runs["asha"]), ("FIFO (full budget)", runs["fifo"])):
        print(
            f"{label:>20}: {r.total_epochs:3d} training epochs, {wall:6.1f} s wall, best val_rmse {r.best_metric:.4f} "
            f"(trial {r.best.trial_id}, {r.stopped_early} stopped early)"
        )
    ratio = asha.total_epochs / fifo.total_epochs
    gap = (asha.best_metric - fifo.best_metric) / abs(fifo.best_metric)
    print(f"wall time ratio ASHA/FIFO: {asha_s / fifo_s:.2f}")
    print(f"ASHA best within 2% of full-budget best: {'yes' if gap <= GAP_TARGET else 'no'} (gap {gap:+.4f})")
    ratio_ok = "PASS" if ratio <= EPOCHS_RATIO_TARGET else "MISS"
    gap_ok = "PASS" if gap <= GAP_TARGET else "MISS"
    print(f"RESULT tune_asha epochs_ratio={ratio:.3f} target<={EPOCHS_RATIO_TARGET:.2f} {ratio_ok}")
    print(f"RESULT tune_asha best_metric_gap={gap:.4f} target<={GAP_TARGET:.2f} {gap_ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
