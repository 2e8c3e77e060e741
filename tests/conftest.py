"""Shared fixtures: one model cache and (for integration tests) one Ray cluster per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Quiet, offline, deterministic defaults for every test process (Ray workers inherit them).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray's raylet warns on every driver's stderr once its disk is 95% full (CI machines share a large,
# busy disk): tests that read a refusal's one line of stderr would read that warning too. 0.99 still
# warns before the disk runs out.
os.environ.setdefault("RAY_local_fs_capacity_threshold", "0.99")

REPO = Path(__file__).resolve().parents[1]


# Integration modules that start no Ray (the GPU pack, the reward stage in subprocesses, OpenEnv's servers):
# `make test` runs them beside the unit tests, the SERIAL ones excepted.
WITHOUT_RAY = frozenset({"test_gpu_check.py", "test_quiet_stage.py", "test_openenv.py"})
# Modules that time something to the second (OpenEnv's step timeouts): `make test` runs them alone, after
# the rest, with the machine to itself.
SERIAL = frozenset({"test_openenv.py"})


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration is `integration`, so `make test-fast` (-m "not integration
    and not slow") is the loop for changes to algo/, config/, data/ and the role classes; all of it
    but WITHOUT_RAY is also `ray`: `make test` runs those a module at a time per pytest-xdist worker
    (each worker its own Ray cluster, a module's fixtures built once), the others test by test; SERIAL
    modules are `serial`: alone, in one process, last."""
    for item in items:
        path = Path(str(item.fspath))
        if "integration" in path.parts:
            item.add_marker(pytest.mark.integration)
            if path.name not in WITHOUT_RAY:
                item.add_marker(pytest.mark.ray)
            if path.name in SERIAL:
                item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The project's model cache (converted SmolLM2, tiny models): shared with `make run`."""
    from rlhf_ray.config.schema import Config

    path = Config().cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_lm(cache_dir) -> str:
    from rlhf_ray.models.assets import resolve_model

    return resolve_model("tiny-random-llama", cache_dir)


@pytest.fixture(scope="session")
def tiny_classifier(cache_dir) -> str:
    from rlhf_ray.models.assets import resolve_model

    return resolve_model("tiny-random-bert", cache_dir)


@pytest.fixture(scope="session")
def smollm2(cache_dir) -> str:
    from rlhf_ray.models.assets import resolve_model

    return resolve_model("smollm2-135m-instruct", cache_dir)


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray cluster for the whole test session; CLI runs in-process attach to it."""
    import ray

    from rlhf_ray.config.schema import ClusterConfig
    from rlhf_ray.runtime.placement import connect

    started = connect(ClusterConfig())
    yield ray
    if started:
        ray.shutdown()


# A ChatML-like template over the tiny model's own tokens: multi-turn tests need a chat model.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_lm(tiny_lm, cache_dir) -> str:
    """tiny-random-llama with a chat template (a copy in the model cache)."""
    import json
    import shutil

    path = cache_dir / "models" / "tiny-random-llama-chat-test"
    if not (path / "tokenizer_config.json").is_file():
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        shutil.copytree(tiny_lm, tmp, dirs_exist_ok=True)
        config = json.loads((tmp / "tokenizer_config.json").read_text())
        (tmp / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TINY_CHAT_TEMPLATE}))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return str(path)


@pytest.fixture(scope="session")
def chat_lm(tiny_lm, smollm2, tmp_path_factory) -> str:
    """The tiny random Llama with SmolLM2's real chat template: chat prompts at tiny-model speed."""
    import shutil

    from rlhf_ray.models.policy import load_tokenizer

    out = tmp_path_factory.mktemp("chat-lm") / "model"
    shutil.copytree(tiny_lm, out)
    tokenizer = load_tokenizer(str(out))
    tokenizer.chat_template = load_tokenizer(smollm2).chat_template
    tokenizer.save_pretrained(out)
    return str(out)
