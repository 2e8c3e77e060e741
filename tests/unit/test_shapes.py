"""Large shapes built directly in quantized form, layer by layer (tiny width here; same builder as 20B)."""

from __future__ import annotations

import pytest
import torch
from memtrack import LiveBytes
from torch import nn

from rlhf_ray.config.load import load_config
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.models.shapes import SHAPES, build_quantized
from rlhf_ray.runtime.plan import make_plan
from rlhf_ray.store.refs import SHAPE_LAYERS, is_asset_name, parse_shape_name


def test_names_and_depth_suffix():
    assert parse_shape_name("gpt-neox-20b-shape") == ("gpt-neox-20b-shape", 44)
    assert parse_shape_name("gpt-neox-20b-shape-3l") == ("gpt-neox-20b-shape", 3)
    assert parse_shape_name("gpt-neox-20b-shape-0l") is None and parse_shape_name("llama-shape") is None
    assert SHAPE_LAYERS == {name: shape["num_hidden_layers"] for name, shape in SHAPES.items()}  # names agree
    assert is_asset_name("gpt-neox-20b-shape-2l")


def test_20b_shape_config_is_gpt_neox_20b(tmp_path):
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(resolve_model("gpt-neox-20b-shape", tmp_path))
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size, c.vocab_size) == (
        44,
        6144,
        64,
        24576,
        50432,
    )


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_built_quantized_one_layer_at_a_time(quant, tmp_path):
    import bitsandbytes as bnb

    path = resolve_model("tiny-neox-shape", tmp_path)
    seen = []

    def on_layer(i, model):  # when layer i is done, the layers after it are still unmaterialized (meta)
        seen.append([any(p.is_meta for p in layer.parameters()) for layer in model.gpt_neox.layers])

    model = build_quantized(path, quant, "cpu", on_layer=on_layer)
    assert seen == [[False, True], [False, False]]
    kind = bnb.nn.Linear8bitLt if quant == "8bit" else bnb.nn.Linear4bit
    linears = [m for m in model.gpt_neox.layers.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, kind) for m in linears)
    assert not any(p.is_meta for p in model.parameters())
    assert model.get_output_embeddings().weight.dtype == torch.float32  # never quantized; bf16 on a GPU
    # The planner's base bytes are what the build holds (int8 + row scales / NF4 + absmax, dense rest).
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    for m in linears:
        if quant == "8bit":
            held += m.weight.SCB.numel() * 4
        else:
            qs = m.weight.quant_state
            held += qs.absmax.numel() + qs.state2.absmax.numel() * 4
    cfg = load_config(None, ["model.policy=tiny-neox-shape", f"model.quant={quant}", "reward.model=tiny-random-bert"])
    assert make_plan(cfg, choose=False).layouts["fused"].roles["policy"].base == held


def LiveHalfBytes() -> LiveBytes:
    """Peak bytes of live fp16 matrices made by any op (the random weights before quantization)."""
    return LiveBytes(lambda t: t.dtype == torch.float16 and t.dim() == 2)


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_build_never_holds_more_than_one_fp16_weight(quant, tmp_path):
    path = resolve_model("tiny-neox-shape", tmp_path)
    with LiveHalfBytes() as mode:
        build_quantized(path, quant, "cpu")
    largest = 64 * 256 * 2  # fc1 / fc2 of tiny-neox-shape in fp16; the whole model's Linears are 8x that
    assert mode.peak == largest
