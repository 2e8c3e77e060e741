"""A run directory as a new user meets it: provenance, console log, the user's umask, a finished
run left alone by --resume, and an adapter that loads elsewhere by the base name the user gave."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from rlhf_ray.cli import main
from rlhf_ray.store.checkpoint import latest_checkpoint

pytestmark = pytest.mark.usefixtures("ray_session")

SMOKE = "configs/smoke.yaml"


def test_smoke_run_directory_is_self_describing_and_portable(tmp_path, monkeypatch, capsys, tiny_lm):
    run = tmp_path / "run"
    old = os.umask(0o002)  # group-writable, as on shared storage
    try:
        assert main(["ppo", "--config", SMOKE, "--run-dir", str(run)]) == 0
    finally:
        os.umask(old)
    printed = capsys.readouterr()

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
    monkeypatch.setenv("RLHF_RAY_CACHE", str(fresh))
    moved = load_adapter_model(adapter).eval()
    assert (fresh / "models" / "tiny-random-llama-v1" / "config.json").exists()
    here = PeftModel.from_pretrained(load_causal_lm(tiny_lm, "none", "cpu"), str(adapter)).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        got, want = moved(input_ids=ids).logits, here(input_ids=ids).logits
        with here.disable_adapter():
            base = here(input_ids=ids).logits
    assert torch.equal(got, want) and not torch.equal(got, base)  # same base weights, adapter applied
