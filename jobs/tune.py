"""Ray job entrypoint: a hyperparameter search on Ray Tune; the best model is exported and registered.

    ray job submit --working-dir . -- python jobs/tune.py --config jobs/configs/tune.yaml [--set tune.num_samples=16]

Exit codes: 0 best model registered (or exported), 2 bad config/data (or the search exists: pass --resume),
1 the search failed. After a driver crash, submit the same job with --resume: finished trials are kept and
unfinished ones continue from their checkpoints.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rayml.config import TuneJobConfig, load_config
from rayml.errors import RaymlError, UserError
from rayml.tune import tune


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see jobs/configs/tune.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override: section.field=value")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted search of the same name")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(TuneJobConfig, args.config, args.overrides)
        result = tune(cfg, resume=args.resume)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RaymlError as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    best = result.best
    print(f"search {result.name}: best trial {best.trial_id} {result.metric}={best.best_metric:.5g} params={best.params}")
    v = result.model_version
    print(f"registered {v.name} version {v.version}" if v else f"best model exported to {result.model_dir} (not registered)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
