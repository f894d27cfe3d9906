"""Ray job entrypoint: train one model per segment and register them as one model set.

    ray job submit --working-dir . -- python jobs/manymodels_train.py --config jobs/configs/manymodels.yaml [--set ...]

Exit codes: 0 registered (or already registered by an earlier attempt), 2 bad config/data, 1 failed (the global model
failed, or more segments failed than manymodels.max_failed_share allows). Re-submitting after a driver crash reuses
the segments that already trained.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rayml.config import ManyModelsJobConfig, load_config
from rayml.errors import RaymlError, UserError
from rayml.manymodels import train_model_set


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see jobs/configs/manymodels.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override: section.field=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(ManyModelsJobConfig, args.config, args.overrides)
        result = train_model_set(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RaymlError as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    print(f"segments {result.segments}: {result.trained} trained, {result.fell_back} fell back, {len(result.failed)} failed")
    if not result.ok:
        print(f"failed: {result.failed_share:.1%} of segments failed (> {result.max_failed_share:.1%})", file=sys.stderr)
        return 1
    v = result.model_version
    print(f"registered model set {v.name} version {v.version}" if v else f"model set written to {result.model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
