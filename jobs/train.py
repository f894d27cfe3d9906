"""Ray job entrypoint: train, export and register one model.

    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/train.yaml [--set train.epochs=3]

Exit codes: 0 registered (or already registered by an earlier attempt), 2 bad config/data, 1 training failed.
Re-submitting the same job after a driver crash resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rayml.config import TrainJobConfig, load_config
from rayml.errors import RaymlError, UserError
from rayml.train import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see jobs/configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override: section.field=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(TrainJobConfig, args.config, args.overrides)
        result = train(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RaymlError as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    v = result.model_version
    print(f"registered {v.name} version {v.version}" if v else f"trained run {result.run_name} (not registered)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
