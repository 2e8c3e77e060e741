"""`ray job submit -- python jobs/merge.py [--config FILE] [--run-dir DIR] [key=value ...]`: the
`rlhf-ray merge` stage as a Ray job entrypoint (exits with the CLI's code)."""

import sys

from rlhf_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["merge", *sys.argv[1:]]))
