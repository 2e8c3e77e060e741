"""`python -m rlhf_ray ...`: the `rlhf-ray` console script (how Ray job entrypoints often run it)."""

import sys

from rlhf_ray.cli import main

sys.exit(main())
