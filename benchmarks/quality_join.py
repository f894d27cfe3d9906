"""Live-quality join at scale: N captured predictions joined to their labels on Ray Data, metrics per version.

Generates N captured rows (binary task: the probability of class 1) as Parquet files of 100,000 rows, the size
the serving app writes, spread over 48 hourly folders and three versions: v1 and v2 share the primary traffic, v3
mirrors a fifth of it as a shadow (same inference ids). Labels arrive for about half of the requests, plus 1% of
labels with ids no capture has. Then :func:`rayml.feedback.quality_report` runs on a local Ray, the way
`rayml monitor quality` does, while a thread samples memory. Prints two RESULT lines:

    RESULT quality_join peak_memory_gib=<driver RSS + Ray processes' RSS> target<=24 PASS|MISS
    RESULT quality_join seconds=<wall time of quality_report> target<=<rows / 50,000> PASS|MISS

Memory is the peak over the run of the driver's RSS plus the RSS of every process Ray started (raylet, GCS,
workers); pages of the object store that several workers map are counted once per worker, so the figure is an
upper bound. Data generation runs in a separate process, so the driver's figure is the join's alone.

Usage: python benchmarks/quality_join.py [--rows 10000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import psutil
import pyarrow as pa

MEMORY_TARGET_GIB = 24.0
# Time target: 50,000 captured rows per second on the whole machine, i.e. 200 s for 10M rows on a 2-core laptop.
# A day of a 100 req/s endpoint with one shadow is ~10M rows: its nightly quality report should take minutes, not an
# hour; a cluster divides the join by its cores (the driver's share, the metrics, does not grow with the rows).
ROWS_PER_SECOND_TARGET = 50_000
ROWS_PER_FILE = 100_000
HOURS = 48
MODEL = "bench-model"


def _hex_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """n random 32-character hex ids (like uuid4().hex), built straight into an Arrow string array."""
    raw = rng.integers(0, 256, size=n * 16, dtype=np.uint8).tobytes().hex().encode()
    offsets = np.arange(0, 32 * n + 1, 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(raw))


def generate(dest: str, rows: int, seed: int = 0) -> dict[str, int]:
    """Write the captures and labels under ``dest``; returns what was written."""
    from rayml.feedback._store import CAPTURE_SCHEMA, LABEL_SCHEMA, capture_dir, labels_dir, write_table

    rng = np.random.default_rng(seed)
    start = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=HOURS)
    shadow_rows = rows // 6  # v3 mirrors a fifth of the primary requests: primary = 5/6, shadow = 1/6 of the rows
    primary_rows = rows - shadow_rows
    n_files = max(1, -(-primary_rows // ROWS_PER_FILE))
    written = {"captured": 0, "labels": 0, "files": 0}
    label_parts: list[pa.Table] = []
    shadow_left = shadow_rows
    for f in range(n_files):
        n = min(ROWS_PER_FILE, primary_rows - f * ROWS_PER_FILE)
        hour = start + dt.timedelta(hours=f * HOURS // n_files)
        ids = _hex_ids(rng, n)
        y = rng.random(n) < 0.3
        version = 1 + f % 2
        score = np.clip(np.where(y, 0.65, 0.35) + rng.normal(0, 0.25 if version == 1 else 0.35, n), 0, 1)
        ts = pa.array(hour.timestamp() * 1000 + rng.integers(0, 3_600_000, n), pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        versions = [(version, "primary", slice(0, n))]
        m = min(shadow_left, n * shadow_rows // primary_rows + 1)
        if m > 0:
            versions.append((3, "shadow", slice(0, m)))
            shadow_left -= m
        for v, route, part in versions:
            k = part.stop - part.start
            table = pa.table(
                {
                    "inference_id": ids[part],
                    "row": pa.array(np.zeros(k, np.int32)),
                    "ts": ts[part],
                    "model": pa.array([MODEL] * k),
                    "version": pa.array(np.full(k, v, np.int64)),
                    "route": pa.array([route] * k),
                    "segment": pa.nulls(k, pa.string()),
                    "prediction": pa.array(score[part] if v != 3 else np.clip(score[part] + rng.normal(0, 0.1, k), 0, 1)),
                    "predicted_label": pa.array(np.where(score[part] > 0.5, "1", "0")),
                    "probabilities": pa.nulls(k, pa.list_(pa.float64())),
                    "inputs": pa.array(['{"x": 1.0}'] * k),
                },
                schema=CAPTURE_SCHEMA,
            )
            write_table(capture_dir(dest, MODEL, v, hour.strftime("%Y-%m-%dT%H")), table)
            written["captured"] += k
            written["files"] += 1
        chosen = np.flatnonzero(rng.random(n) < 0.5)
        delay_ms = rng.exponential(3_600_000, len(chosen)).astype(np.int64)
        label_parts.append(
            pa.table(
                {
                    "inference_id": ids.take(pa.array(chosen)),
                    "row": pa.array(np.zeros(len(chosen), np.int32)),
                    "label": pa.array(np.where(y[chosen], "1", "0")),
                    "received_at": pa.array(ts.take(pa.array(chosen)).cast(pa.int64()).to_numpy() + delay_ms).cast(
                        pa.timestamp("ms", tz="UTC")
                    ),
                    "model": pa.array([MODEL] * len(chosen)),
                    "source": pa.array(["http"] * len(chosen)),
                },
                schema=LABEL_SCHEMA,
            )
        )
        if len(label_parts) == 10 or f == n_files - 1:
            table = pa.concat_tables(label_parts)
            unknown = max(1, table.num_rows // 100)
            table = pa.concat_tables(
                [table, table.slice(0, unknown).set_column(0, LABEL_SCHEMA.field("inference_id"), _hex_ids(rng, unknown))]
            )
            write_table(labels_dir(dest, MODEL, "2024-01-01"), table)
            written["labels"] += table.num_rows
            label_parts = []
    return written


class MemorySampler(threading.Thread):
    """Samples the driver's RSS plus the RSS of every process under it (Ray's) until stopped; keeps the peaks."""

    def __init__(self, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak_total = 0
        self.peak_driver = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._stop_event.is_set():
            total = driver = me.memory_info().rss
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # a worker that just exited
                    total += child.memory_info().rss
            self.peak_total = max(self.peak_total, total)
            self.peak_driver = max(self.peak_driver, driver)
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="captured rows in all (default 10,000,000)")
    parser.add_argument("--keep", default=None, help="write the data here and keep it (default: a temp dir, removed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.keep or tempfile.mkdtemp(prefix="rayml-bench-quality-")
    os.environ["RAYML_HOME"] = os.path.join(work, "home")
    dest = os.path.join(work, "captures")
    try:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            written = pool.submit(generate, dest, args.rows).result()
        print(
            f"generated {written['captured']:,} captured rows in {written['files']} files and {written['labels']:,} labels "
            f"in {time.perf_counter() - t0:.0f} s under {dest}"
        )

        from rayml._private.ray_session import ensure_ray
        from rayml.feedback import quality_report

        ensure_ray()
        sampler = MemorySampler()
        sampler.start()
        t0 = time.perf_counter()
        report = quality_report(dest, MODEL, task="binary", class_labels=[0, 1], offline_metrics={1: {"val_auc": 0.9}})
        seconds = time.perf_counter() - t0
        sampler.stop()
        for v in report["versions"]:
            auc = v["metrics"]["auc"]
            print(
                f"  v{v['version']}: {v['labelled']:,}/{v['captured']:,} labelled, auc={auc['value']:.4f} "
                f"[{auc['low']:.4f}, {auc['high']:.4f}], delay p50={v['label_delay_s']['median']:.0f}s, {v['status']}"
            )
        print(f"labels: {report['labels']}")
        gib = sampler.peak_total / 2**30
        print(f"peak memory: {gib:.2f} GiB (driver {sampler.peak_driver / 2**30:.2f} GiB)")
        target_s = args.rows / ROWS_PER_SECOND_TARGET
        memory_ok = "PASS" if gib <= MEMORY_TARGET_GIB else "MISS"
        time_ok = "PASS" if seconds <= target_s else "MISS"
        print(f"RESULT quality_join peak_memory_gib={gib:.2f} target<={MEMORY_TARGET_GIB:g} {memory_ok}")
        print(f"RESULT quality_join seconds={seconds:.1f} target<={target_s:.0f} {time_ok}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
