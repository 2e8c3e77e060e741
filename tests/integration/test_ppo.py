"""PPO end to end on a real local Ray cluster (shared per test session) with tiny quantized models,
and the run directory it leaves as a new user meets it."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import load as st_load

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.store.checkpoint import latest_checkpoint

pytestmark = pytest.mark.usefixtures("ray_session")

SMOKE = "configs/smoke.yaml"
REQUIRED = [
    "iteration",
    "reward/mean",
    "reward/std",
    "kl/mean",
    "kl/coef",
    "kl/loss_coef",
    "policy/loss",
    "policy/clipfrac",
    "policy/approx_kl",
    "entropy/mean",
    "response/length_mean",
    "policy/version",
    "time/generate_s",
    "time/score_s",
    "time/learn_s",
    "time/sync_s",
    "time/iteration_s",
    "sync/bytes",
]


def _lora_b(checkpoint_dir) -> dict[str, torch.Tensor]:
    state = st_load((checkpoint_dir / "policy.safetensors").read_bytes())
    return {k: v for k, v in state.items() if "lora_B" in k}


def test_gae_smoke_end_to_end_in_a_self_describing_run_directory_then_resume(tmp_path, monkeypatch, capsys, tiny_lm):
    """The smoke run as a new user meets it: metrics, a trained adapter, placement and samples; provenance,
    console log and the user's umask; a finished run left alone by --resume, then extended by it; an
    adapter that loads elsewhere by the base name the user gave."""
    run = tmp_path / "gae"
    old = os.umask(0o002)  # group-writable, as on shared storage
    try:
        assert main(["ppo", "--config", SMOKE, "--run-dir", str(run)]) == 0
    finally:
        os.umask(old)
    printed = capsys.readouterr()
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [1, 2]
    for key in REQUIRED + ["value/loss"]:
        assert all(key in r for r in rows), key
    assert [r["policy/version"] for r in rows] == [1, 2]  # advances every iteration
    assert [r["policy/sampled_version"] for r in rows] == [0, 1]  # each rollout used the latest adapter
    assert all(0 < r["sync/bytes"] < 1_000_000 for r in rows)  # only the adapter travels

    # The adapter trained: LoRA B starts at zero and is non-zero after PPO, and differs per iteration.
    first, second = _lora_b(run / "checkpoints" / "iter-000001"), _lora_b(run / "checkpoints" / "iter-000002")
    assert all(v.abs().sum() > 0 for v in second.values())
    assert any(not torch.equal(first[k], second[k]) for k in first)

    placement = json.loads((run / "placement.json").read_text())
    assert [p["actor"] for p in placement] == ["generator-0", "reward-0", "learner-0"]
    assert all(p["node_id"] for p in placement)
    samples = sorted((run / "samples").glob("*.parquet"))
    assert samples, "a Parquet table of samples is written"
    import pyarrow.parquet as pq

    assert set(pq.read_table(samples[-1]).column_names) >= {"prompt", "response", "score"}

    # Every file and directory of the run follows the umask (no 0600/0700 temp files renamed in).
    modes = {str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*")}
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o775 if (run / p).is_dir() else 0o664)}
    assert not wrong and "DONE.json" in modes and "placement.json" in modes

    info = json.loads((run / "run_info.json").read_text())
    assert info["command"]["args"] == ["ppo", "--config", SMOKE, "--run-dir", str(run)]
    assert {"torch", "transformers", "peft", "bitsandbytes", "ray", "rlhf_ray"} <= set(info["versions"])
    assert info["machine"]["cpus"] >= 1 and info["git_commit"]
    reward = info["models"]["reward"]
    assert reward["configured"] == "tiny-random-bert" and reward["resolved"].endswith("tiny-random-bert-v1")
    assert info["models"]["policy"]["resolved"] == tiny_lm

    log = (run / "console.log").read_text()
    assert "ppo 2/2" in log and json.loads(log.strip().splitlines()[-1])["run_dir"] == str(run)
    assert "Token authentication is enabled" not in printed.err + log

    adapter = latest_checkpoint(run) / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-random-llama"
    assert (adapter / "tokenizer.json").exists()
    card = (adapter / "README.md").read_text()
    assert "base_model: tiny-random-llama" in card and "| reward/mean |" in card and "advantage: gae" in card

    # --resume of the complete run: one line, exit 0, DONE.json untouched.
    done = (run / "DONE.json").read_bytes(), (run / "DONE.json").stat().st_mtime_ns
    assert main(["ppo", "--resume", str(run)]) == 0
    assert "is complete (2 of 2 iterations)" in capsys.readouterr().err
    assert ((run / "DONE.json").read_bytes(), (run / "DONE.json").stat().st_mtime_ns) == done

    # Another machine: an empty cache. The base is found (built) by the name in adapter_config.json.
    from peft import PeftModel

    from rlhf_ray.models.adapter import load_adapter_model
    from rlhf_ray.models.policy import load_causal_lm

    fresh = tmp_path / "fresh-cache"
    with monkeypatch.context() as env:
        env.setenv("RLHF_RAY_CACHE", str(fresh))
        moved = load_adapter_model(adapter).eval()
    assert (fresh / "models" / "tiny-random-llama-v1" / "config.json").exists()
    here = PeftModel.from_pretrained(load_causal_lm(tiny_lm, "none", "cpu"), str(adapter)).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        got, want = moved(input_ids=ids).logits, here(input_ids=ids).logits
        with here.disable_adapter():
            base = here(input_ids=ids).logits
    assert torch.equal(got, want) and not torch.equal(got, base)  # same base weights, adapter applied

    # --resume of the run with more iterations: from the latest checkpoint (iteration 2) to 3.
    assert latest_checkpoint(run).name == "iter-000002"
    assert main(["ppo", "--resume", str(run), "ppo.iterations=3"]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert rows[-1]["policy/version"] == 3 and rows[-1]["policy/sampled_version"] == 2
    assert latest_checkpoint(run).name == "iter-000003"


def test_grpo_with_two_generators_and_scorers(tmp_path):
    run = tmp_path / "grpo"
    overrides = [
        "algo.advantage=grpo",
        "algo.group_size=2",
        "cluster.num_generators=2",
        "cluster.num_scorers=2",
        "algo.kl_controller=adaptive",
    ]
    assert main(["ppo", "--config", SMOKE, "--run-dir", str(run), *overrides]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    for key in REQUIRED:
        assert all(key in r for r in rows), key
    assert all("value/loss" not in r for r in rows)  # critic-free: no value head
    assert [r["policy/version"] for r in rows] == [1, 2]
    state = st_load((run / "checkpoints" / "iter-000002" / "policy.safetensors").read_bytes())
    assert not any(k.startswith("value_head.") for k in state)
    names = [p["actor"] for p in json.loads((run / "placement.json").read_text())]
    assert names == ["generator-0", "generator-1", "reward-0", "reward-1", "learner-0"]
    # 4 prompts x 2 samples each, split over two generator shards and joined by the learner
    assert rows[0]["response/length_mean"] > 0


def test_resume_without_checkpoint_and_impossible_gpus_are_user_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["ppo", "--resume", str(tmp_path / "empty"), "--config", SMOKE]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # The 24 GB single-GPU layout on this CPU-only cluster: refused up front, nothing trained.
    assert main(["ppo", "--config", "configs/single_gpu_24gb.yaml", "--run-dir", str(tmp_path / "gpu")]) == 2
    err = capsys.readouterr().err
    assert "GPUs" in err and len(err.strip().splitlines()) == 1


def test_nan_reward_stops_the_run_with_one_clear_line(tmp_path, tiny_classifier, capsys):
    """A real broken reward model (NaN head weights) scoring inside a Ray actor."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    broken = tmp_path / "broken-classifier"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_classifier).save_pretrained(broken)
    capsys.readouterr()  # drop the loading bars printed above
    code = main(["ppo", "--config", SMOKE, "--run-dir", str(tmp_path / "run"), f"reward.model={broken}"])
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("rlhf-ray: error:")]
    assert code == 2 and len(errors) == 1 and "non-finite scores" in errors[0] and "Traceback" not in err
