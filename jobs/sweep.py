"""`ray job submit -- python jobs/sweep.py --config FILE --run-dir DIR --grid 'ppo.lr=[1e-4,3e-4]' [key=value ...]`:
the `rlhf-ray sweep` command (many runs on one quantized base) as a Ray job entrypoint (exits with
the CLI's code; `--resume DIR` continues a sweep)."""

import sys

from rlhf_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
