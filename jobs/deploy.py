"""Ray job entrypoint: deploy (or update in place) the rayml Serve application a config describes.

    ray job submit --working-dir . -- python jobs/deploy.py --config jobs/configs/serve.yaml [--set serve.port=8001]

Exit codes: 0 deployed and running, 2 bad config or unknown model/version, 1 Serve could not run it (the message
holds every replica constructor error). The application keeps serving after the job ends.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rayml.config import ServeJobConfig, load_config
from rayml.errors import RaymlError, UserError
from rayml.serve import deploy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see jobs/configs/serve.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override: section.field=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(ServeJobConfig, args.config, args.overrides)
        state = deploy(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RaymlError as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    for d in state.deployments:
        print(f"{d.name}: {d.status} ({d.replicas.get('RUNNING', 0)}/{d.target_replicas} replicas)")
    print(f"serving at {state.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
