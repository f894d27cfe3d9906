"""Ray job entrypoint: continuous training (validate new data -> train or tune -> gate -> register -> roll out or promote).

    ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/pipeline.yaml [--set data.source=...]

Exit codes: 0 the candidate is in production (or left at @canary with pipeline.promote_without_serving=false),
2 bad config or data, 1 a stage failed (training, the gate, the rollout). Production only moves in the last stage.
Re-submitting the same job resumes at the stage that failed (the run's state lives under pipeline.state_dir: use
shared storage, e.g. s3://, on a cluster); --restart runs every stage again.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rayml.config import PipelineJobConfig, load_config
from rayml.errors import RaymlError, UserError
from rayml.pipeline import run_pipeline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see jobs/configs/pipeline.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override: section.field=value")
    parser.add_argument("--restart", action="store_true", help="run every stage again instead of resuming")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(PipelineJobConfig, args.config, args.overrides)
        result = run_pipeline(cfg, restart=args.restart)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RaymlError as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    for s in result.state.stages:
        print(f"{s.name:14} {s.status:8} {s.duration_s or 0:8.1f} s  attempts {s.attempts}")
    print(f"{cfg.model.name} v{result.version}: {result.outcome} (run {result.state.run_id}, state in {result.run_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
