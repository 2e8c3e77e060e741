"""`ray job submit -- python jobs/reward.py [--config FILE] [--run-dir DIR] [key=value ...]`: the
`rlhf-ray reward` stage as a Ray job entrypoint (exits with the CLI's code)."""

import sys

from rlhf_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["reward", *sys.argv[1:]]))
