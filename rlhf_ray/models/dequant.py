"""Int8 weights dequantized once instead of once per call (CPU, train-mode numerics).

On a CPU, bitsandbytes' train-mode int8 matmul (`MatMul8bitFp`) dequantizes the whole weight on
every call: `CB.to(dtype) * (SCB / 127)` and then `linear`. A decode step calls every layer once, so
a 24-token response dequantizes every weight 24 times, and that, not the matmul, is most of a decode
step (the decode floor in `rlhf-ray bench`). The base weights are frozen for the whole run, so the
dequantized matrix is the same in every call of every phase.

`dequantized_int8(model)` computes each layer's matrix on its first call inside the block, with the
very expressions bitsandbytes uses, and answers later calls with `linear(x, W, bias)`: the same
function bit for bit (tests/unit/test_dequant.py compares samples and log-probs), at the memory cost of
one fp32 copy of the int8 weights. The copy stays with the layer for later blocks (a role's peak
holds it anyway, and a fresh 0.4 GB each call cost SmolLM2's learner 0.3-0.9 s of page faults per
iteration); it is recomputed if the layer's int8 weights are ever replaced. Gradients reach the input as before
(the weight never needs one). Outside the block, or on a GPU (int8 kernels, no per-call dequant),
nothing changes."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F


def int8_layers(model: torch.nn.Module) -> list:
    """bitsandbytes Linear8bitLt modules of `model` that run bitsandbytes' CPU train-mode path."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # a GPU box without bitsandbytes loads no int8 layers at all
        return []
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt) and m.weight.device.type == "cpu"]


def dequantized_bytes(model: torch.nn.Module) -> int:
    """Memory the block holds: one fp32 copy of every int8 weight."""
    return sum(m.weight.numel() * 4 for m in int8_layers(model))


def dequant_enabled(setting: str, model: torch.nn.Module) -> bool:
    """model.dequant_cache resolved for this model on this machine: `auto` when one fp32 copy of its
    CPU int8 weights fits in a quarter of the machine's memory."""
    if setting == "off" or not int8_layers(model):
        return False
    return setting == "on" or cache_fits(dequantized_bytes(model))


def cache_fits(nbytes: int) -> bool:
    """`auto`'s rule: the fp32 copy takes at most a quarter of the machine's memory."""
    return nbytes <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


@contextlib.contextmanager
def dequantized_int8(model: torch.nn.Module, enabled: bool = True):
    """Inside: each CPU int8 layer in train mode dequantizes its weight once, then reuses it."""
    layers = int8_layers(model) if enabled else []
    for layer in layers:  # an instance attribute shadows the class's forward until deleted
        layer.forward = _cached_forward(layer, type(layer).forward.__get__(layer))
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward


def int8_state(layer):
    """The layer's bitsandbytes state, its int8 weights moved into it first as Linear8bitLt.forward does
    on first use (they start on `weight.CB`)."""
    if layer.weight.CB is not None:
        layer.init_8bit_state()
    return layer.state


CACHE = "_rlhf_ray_dequantized"  # the layer attribute holding {dtype: (int8 tensor it came from, fp32 weight)}


def _cached_forward(layer, original):
    cache: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = layer.__dict__.setdefault(CACHE, {})

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not layer.training:  # eval mode quantizes activations too: keep bitsandbytes' path
            return original(x)
        state = int8_state(layer)
        if state.CB is None or state.has_fp16_weights:
            return original(x)
        if layer.bias is not None and layer.bias.dtype != x.dtype:
            layer.bias.data = layer.bias.data.to(x.dtype)
        source, weight = cache.get(x.dtype, (None, None))
        if source is not state.CB:  # first use, or int8 weights replaced since
            # bitsandbytes MatMul8bitFp.forward's expression, evaluated once
            weight = state.CB.data.to(x.dtype).mul_(state.SCB.unsqueeze(1).mul(1.0 / 127.0))
            cache[x.dtype] = (state.CB, weight)
        return F.linear(x, weight, layer.bias)

    return forward
