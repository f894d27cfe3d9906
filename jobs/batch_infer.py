"""Ray job entrypoint: score files with a model or model set, exactly once per input file (restartable).

    ray job submit --working-dir . -- python jobs/batch_infer.py --config jobs/configs/batch.yaml \
        [--set batch.model=sales-stores@production --set batch.input=s3://bucket/in/ --set batch.output=s3://bucket/out/]

Exit codes: 0 every file committed, 2 bad config/model/input, 1 a file or the run failed. Re-submitting the same job
skips the files already committed and scores the rest.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rayml.batch import run_batch
from rayml.config import BatchJobConfig, load_config
from rayml.errors import RaymlError, UserError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see jobs/configs/batch.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override: section.field=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(BatchJobConfig, args.config, args.overrides)
        summary = run_batch(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RaymlError as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    print(
        f"{summary.model_ref}: {summary.committed} committed, {summary.skipped} skipped, {len(summary.failed)} failed; "
        f"{summary.rows} rows ({summary.rows_per_s:.0f} rows/s) -> {summary.output}"
    )
    for path, error in sorted(summary.failed.items()):
        print(f"failed: {path}: {error}", file=sys.stderr)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
