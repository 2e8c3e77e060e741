"""Issue 10 on the real local Ray: `rlhf-ray bench` on the smoke config, and overlapped rollouts
(lag recorded and bounded, the same metrics as an on-policy run)."""

from __future__ import annotations

import json

import pytest

from rlhf_ray.cli import main
from rlhf_ray.runtime.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("ray_session")

SMOKE = "configs/smoke.yaml"


def test_bench_on_the_smoke_config(tmp_path, capsys):
    run = tmp_path / "bench"
    assert (
        main(["bench", "--config", SMOKE, "--run-dir", str(run), "bench.repeats=1", "bench.quant_modes=none,8bit"]) == 0
    )
    table = capsys.readouterr().out
    for section in ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)", "Ray / in-process", "bare model.generate"):
        assert section in table, section
    report = json.loads((run / "bench.json").read_text())
    assert report["date"] and report["machine"]["cpus"] > 0 and report["versions"]["torch"]
    d = report["results"]["distributed"]
    assert len(d["ray_iterations"]) == len(d["inprocess_iterations"]) == 1  # repeats after the warm-up
    assert d["headline"]["ray_over_inprocess"] > 0 and d["headline"]["samples_per_s"] > 0
    assert d["headline"]["reference_logprobs"] is True and d["headline"]["dequant_cache"] is True  # CPU: auto on
    assert d["headline"]["decoder"] == "lean"  # an 8-bit Llama on a CPU
    floors = d["floors"]
    assert floors["rates"]["copy_bytes_per_s"] > 1e8 and floors["rates"]["matmul_flops_per_s"] > 1e8
    for phase in ("decode", "learner"):  # nothing runs faster than the machine allows
        assert floors[phase]["floor_s"] > 0 and floors[phase]["ratio"] > 1, (phase, floors[phase])
    # the in-process role and the actor: same model, decoder, batch and seed, so the same tokens (bare
    # generate draws from transformers' random stream, the lean loop from its own)
    g = d["generation"]
    assert g["actor"]["tokens"] == g["role"]["tokens"] > 0 and g["bare"]["tokens"] > 0
    s = d["sync"]
    # only the adapter travels: its tensors plus a small safetensors header, a sliver of the base model
    assert s["adapter_tensor_bytes"] <= s["bytes_per_iteration"] < s["adapter_tensor_bytes"] + 16_384
    assert s["bytes_per_iteration"] < s["base_model_bytes"]
    assert set(report["results"]["quant"]) == {"none", "8bit"}
    assert report["results"]["quant"]["8bit"]["memory_bytes"] < report["results"]["quant"]["none"]["memory_bytes"]
    phases = d["phases"]["seconds"]
    assert {"generate", "score", "old+ref log-probs", "update", "sync"} <= set(phases)


def test_overlapped_rollouts_lag_one_version_within_the_bound(tmp_path):
    on = tmp_path / "overlap"
    assert main(["ppo", "--config", SMOKE, "--run-dir", str(on), "ppo.iterations=3", "ppo.overlap=true"]) == 0
    rows = read_metrics(on / "metrics.jsonl")
    # complete metrics: the first row is an on-policy iteration's (nothing sampled ahead yet), the
    # overlapped ones carry the same keys
    assert [set(r) for r in rows] == [set(rows[0])] * 3
    assert {"reward/mean", "kl/mean", "policy/loss", "value/loss", "time/generate_s", "sync/bytes"} <= set(rows[0])
    # batch k+1 is sampled while the learner trains on k: from the second batch on, one version behind
    assert [r["policy/sampled_version"] for r in rows] == [0, 0, 1]
    assert [r["policy/lag"] for r in rows] == [0, 1, 1]
    assert [r["policy/version"] for r in rows] == [1, 2, 3]
    # resuming an overlapped run restarts the prompt stream where the learner stopped, not past the batch sampled ahead
    # (the checkpoint after iteration 2 is taken while batch 3 is already drawn and sampling)
    state = json.loads((on / "checkpoints" / "iter-000002" / "driver_state.json").read_text())
    assert state["prompts"]["cursor"] == 2 * 4


def test_workers_get_the_drivers_priority_and_real_thread_counts():
    """Ray's defaults (nice 15, OMP_NUM_THREADS=1 for a 0.5-CPU actor) made actors slower than the roles
    in-process; the local Ray started by rlhf_ray.runtime.placement.connect overrides both. Its workers run
    our setup hook: a role or stage set-up in one freezes the imports (rlhf_ray.process.freeze_startup)."""
    import gc
    import os

    import ray

    from rlhf_ray.process import freeze_startup

    @ray.remote(num_cpus=0.5)
    def worker_view():
        freeze_startup()  # what init_process / prepare_worker call; once per worker (an earlier task's counts)
        threads = os.environ.get("OMP_NUM_THREADS"), os.environ.get("MKL_NUM_THREADS")
        return os.getpriority(os.PRIO_PROCESS, 0), *threads, gc.get_freeze_count()

    nice, omp, mkl, frozen = ray.get(worker_view.remote())
    assert nice == os.getpriority(os.PRIO_PROCESS, 0)
    assert omp == mkl == str(os.cpu_count())
    assert frozen > 0
