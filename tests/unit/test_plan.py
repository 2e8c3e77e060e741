"""Memory planner arithmetic (hand-computed bytes on a tiny shape) and its layout choice."""

from __future__ import annotations

import json

import pytest

from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config
from rlhf_ray.errors import UserError
from rlhf_ray.runtime.plan import HEAD_CHUNK_BUFFERS, HOST_RUNTIME, make_plan

# tiny-neox-shape: 2 layers, hidden 64, 4 heads, intermediate 256, vocab 512; non-Linear tensors and
# activations in the dense dtype: fp32 in a host (CPU) plan, bf16 in a GPU plan.
# Per layer the Linears are qkv 64x192, dense 64x64, fc1 64x256, fc2 256x64 = 49152 weights, out rows 576.
# Unquantized: embed in + out 2 x 512 x 64 = 65536, per layer 2 LayerNorms (256) + biases (576), final LN 128.
DENSE = 4  # bytes; the plans below are host plans
OTHER = 65536 + 2 * (256 + 576) + 128  # 67328 params
INT8_BASE = 2 * (49152 + 4 * 576) + DENSE * OTHER  # int8 weights + an fp32 scale per row
# NF4: n/2 bytes + one uint8 absmax per 64 weights + one fp32 per 256 blocks (ceil), per Linear
NF4_BASE = 2 * ((6144 + 192 + 4) + (2048 + 64 + 4) + 2 * (8192 + 256 + 4)) + DENSE * OTHER
LORA = 2 * 4 * (64 + 192)  # r=4 on query_key_value, both layers


def _cfg(*extra):
    return load_config(
        None,
        [
            "model.policy=tiny-neox-shape",
            "generate.reference_logprobs=false",  # auto doubles the decode rows on a CPU
            "model.lora_r=4",
            "model.quant=8bit",
            "algo.advantage=gae",
            "ppo.batch_size=4",
            "ppo.mini_batch_size=2",
            "generate.max_new_tokens=8",
            "data.prompt_max_tokens=8",
            "model.logprob_chunk=4",
            "reward.model=tiny-random-bert",
            *extra,
        ],
    )


def test_bytes_per_role_match_hand_arithmetic():
    roles = make_plan(_cfg()).layouts["separate"].roles
    gen, learner = roles["generator"], roles["learner"]
    assert gen.base == learner.base == INT8_BASE == 372224
    assert gen.lora == 4 * LORA and learner.lora == 16 * LORA  # fp32 weights; + grads + two AdamW moments
    assert learner.value_head == 16 * 65  # Linear(64, 1)
    seq = 8 + 8
    assert gen.kv_cache == 2 * 2 * 4 * seq * 64 * DENSE + 2 * 4 * 512 * 4  # K and V, 2 layers, 4 rows + fp32 logits
    doubled = make_plan(_cfg("generate.reference_logprobs=true")).layouts["separate"].roles["generator"]
    assert doubled.kv_cache == 2 * gen.kv_cache  # the adapter-off reference rows decode alongside
    assert learner.lm_head_chunk == HEAD_CHUNK_BUFFERS * 2 * 4 * 512 * 4  # micro 2 rows x chunk 4 x vocab, fp32
    per_layer = 2 * seq * (10 * 64 + 3 * 256 + 4 * seq) * DENSE  # tokens x (10h + 3I + heads x seq)
    assert learner.activations == 2 * per_layer
    assert gen.overhead == HOST_RUNTIME
    # CPU int8, model.dequant_cache auto: one fp32 copy of every quantized Linear (qkv, dense, fc1, fc2
    # in 2 layers) for a generate or learn call; off (or 4-bit): the largest one (fc1), per matmul
    cache = 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64) * 4
    assert gen.dequant == learner.dequant == cache
    for extra in ("model.dequant_cache=off", "model.quant=4bit"):
        assert make_plan(_cfg(extra)).layouts["separate"].roles["learner"].dequant == 64 * 256 * DENSE, extra
    assert make_plan(_cfg(), gpu_memory_gb=24).layouts["fused"].roles["policy"].dequant == 64 * 256 * 2  # int8 kernels
    assert learner.total == (
        INT8_BASE + 16 * LORA + 16 * 65 + cache + HOST_RUNTIME + 2 * per_layer + learner.lm_head_chunk
    )
    assert make_plan(_cfg("model.quant=4bit")).layouts["fused"].roles["policy"].base == NF4_BASE == 320032
    # on a GPU the shape's dense tensors are bf16
    assert make_plan(_cfg(), gpu_memory_gb=24).layouts["fused"].roles["policy"].base == INT8_BASE - 2 * OTHER


def test_checkpointing_keeps_layer_inputs_plus_one_layer():
    seq, tokens = 16, 2 * 16
    per_layer = tokens * (10 * 64 + 3 * 256 + 4 * seq) * DENSE
    acts = make_plan(_cfg("model.gradient_checkpointing=true")).layouts["fused"].roles["policy"].activations
    assert acts == 2 * tokens * 64 * DENSE + per_layer


def test_fused_counts_one_base():
    plan = make_plan(_cfg())
    sep, fused = plan.layouts["separate"], plan.layouts["fused"]
    assert sep.total - fused.total == sep.roles["generator"].total  # the generator's copy is what fused saves


def test_20b_shape_picks_fused_on_24gb_and_refuses_on_12gb():
    cfg = load_config("configs/gpt_neox_20b_24gb.yaml")
    plan = make_plan(cfg, gpu_memory_gb=24)
    assert not plan.layouts["separate"].fits and plan.layouts["fused"].fits and plan.chosen == "fused"
    assert make_plan(cfg, gpu_memory_gb=80).chosen == "separate"
    with pytest.raises(UserError, match=r"biggest consumer: policy base .*model.quant=4bit"):
        make_plan(cfg, gpu_memory_gb=12)


def test_plan_command_prints_both_layouts_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--config", "configs/gpt_neox_20b_24gb.yaml", "--gpu-memory-gb", "24", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[separate]" in text and "[fused]" in text and "chosen layout: fused" in text
    plan = json.loads(out.read_text())
    assert plan["chosen_layout"] == "fused" and set(plan["layouts"]) == {"separate", "fused"}
    assert plan["layouts"]["fused"]["roles"]["policy"]["base"] > 19 * 2**30  # int8 20B + 16-bit embeddings
    assert main(["plan", "--config", "configs/gpt_neox_20b_24gb.yaml", "--gpu-memory-gb", "10", "--out", str(out)]) == 2
    assert "model.quant=4bit" in capsys.readouterr().err


def test_ppo_refuses_a_plan_that_cannot_fit_before_any_actor(tmp_path, capsys, monkeypatch):
    import rlhf_ray.runtime.plan as plan

    monkeypatch.setattr(plan, "device_budget", lambda cfg, gb: (False, 2**30))  # a 1 GiB host
    run = tmp_path / "run"
    assert main(["ppo", "--config", "configs/smoke.yaml", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "biggest consumer" in err and "change" in err
    assert not (run / "placement.json").exists()  # refused before Ray placed anything


def test_nf4_20b_separate_would_leave_no_headroom_so_auto_fuses():
    cfg = load_config("configs/gpt_neox_20b_24gb.yaml", ["model.quant=4bit"])
    plan = make_plan(cfg, gpu_memory_gb=24)
    assert plan.layouts["separate"].total < 24 * 2**30 and not plan.layouts["separate"].fits
    assert plan.chosen == "fused"


def test_fused_layout_places_one_policy_process_and_refuses_two_generators():
    from rlhf_ray.errors import ConfigError
    from rlhf_ray.runtime.layout import role_layout

    cfg = load_config(
        "configs/smoke.yaml", ["cluster.layout=fused", "cluster.generator_gpus=0.3", "cluster.learner_gpus=0.4"]
    )
    layout = role_layout(cfg)
    assert layout.fused and not layout.generators
    assert [s.name for s in layout.bundles] == ["policy-0", "reward-0"] and layout.learners[
        0
    ].num_gpus == pytest.approx(0.7)
    assert layout.bundle_of("reward-0") == 1
    separate = role_layout(cfg, "separate")
    assert [s.name for s in separate.actors] == ["generator-0", "reward-0", "learner-0"]
    assert [s.name for s in separate.bundles] == [s.name for s in separate.actors]
    with pytest.raises(ConfigError, match="cluster.layout"):
        load_config("configs/smoke.yaml", ["cluster.layout=fused", "cluster.num_generators=2"])


def test_unreadable_model_config_is_one_line(tmp_path, capsys):
    assert main(["plan", "model.policy=no-such-org/no-such-model", "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.policy=no-such-org/no-such-model" in err


def test_lora_layers_counts_the_adapter_of_the_top_layers_only(cache_dir, capsys, tmp_path):
    """model.lora_layers: the plan's LoRA is the top layers' share (SmolLM2: 30 layers, q/v projections of
    576 -> 576 and 576 -> 192 at rank 16); a count beyond the policy's layers is refused in one line."""
    from rlhf_ray.models.assets import resolve_model
    from rlhf_ray.runtime.plan import model_shape, read_config

    config = read_config(resolve_model("smollm2-135m-instruct", cache_dir), "model.policy")
    per_layer = 16 * ((576 + 576) + (576 + 192))
    assert model_shape(config, 16, None).lora_params == 30 * per_layer
    assert model_shape(config, 16, None, lora_layers=15).lora_params == 15 * per_layer
    assert main(["plan", "--out", str(tmp_path / "p.json"), "model.lora_layers=31"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.lora_layers=31" in err[0] and "30 decoder layers" in err[0]
    assert main(["plan", "--out", str(tmp_path / "p.json"), "model.lora_layers=0"]) == 2
    assert "model.lora_layers" in capsys.readouterr().err
