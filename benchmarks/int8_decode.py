"""What int8 arithmetic for the frozen base would buy the sampler on this CPU, and what it would cost
in log-probs (issue 31: `make run` on a 2-core AVX2-only machine is bound by fp32 matmuls).

The main job's sampling step (SmolLM2-135M 8-bit, LoRA in the top 15 layers, 64 prompts of the
default's stream, 20 new tokens at T=0.7, policy and reference rows) through the lean loop, with the
base's projections computed three ways:
- fp32: today's loop (bitsandbytes' int8 weights dequantized once, MKL sgemm);
- int8: fbgemm's dynamic int8 linear over the same int8 weights, bitsandbytes' row scales as per-channel
  scales (no weight error added), the activations quantized per call (one scale per tensor);
- int8+head: the LM head too, quantized per row here (its own weight error);
- per-row-sim: fp32 arithmetic on activations rounded to int8 with one scale per token: the error an
  int8 GEMM with per-token scales would have (its time is not an int8 kernel's).
The adapter gets small seeded random factors, so policy and reference differ as after some training.
Each variant's log-probs of its own samples are compared with the learner's exact ones
(`response_stats`, fp32, the adapter on for the policy rows and off for the reference rows): the error
a sampler in int8 would put into PPO's old log-probs (if the learner did not recompute them) and into
the reference's (which the learner takes from the sampler).

    .venv/bin/python benchmarks/int8_decode.py --repeats 3"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rlhf_ray.actors.common import load_policy
from rlhf_ray.config.load import load_config
from rlhf_ray.data.prompts import prompt_stream
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.models.decode import LeanDecoder, Projections, _split, decode_with_reference
from rlhf_ray.models.dequant import dequantized_int8, int8_state
from rlhf_ray.models.forward import response_stats
from rlhf_ray.models.generate import encode_prompts, make_rollout
from rlhf_ray.models.policy import load_tokenizer, ppo_numerics


class Int8Projections(Projections):
    """The same projections with the base matmul in fbgemm's dynamic int8 linear."""

    def __init__(self, modules: list):
        super().__init__(modules)
        states = [int8_state(_split(m)[0]) for m in modules]
        cb = torch.cat([st.CB.data for st in states])
        scale = torch.cat([st.SCB.float() for st in states]).double() / 127.0
        q = torch._make_per_channel_quantized_tensor(cb, scale, torch.zeros_like(scale, dtype=torch.long), 0)
        self.packed8 = torch.ops.quantized.linear_prepack(q, None)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x.contiguous(), self.packed8, True)


class PerRowProjections(Projections):
    """Accuracy only (fp32 speed): activations rounded to int8 with one scale per row (token), the
    weights bitsandbytes' int8: what an int8 GEMM with per-token activation scales would compute."""

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127.0
        return super().matmul(torch.round(x / scale) * scale)


class Int8Decoder(LeanDecoder):
    """A LeanDecoder whose projections (and, with `head`, LM head) run in int8."""

    def __init__(self, model, head: bool, kind: type = Int8Projections):
        super().__init__(model)
        int8 = kind
        self.layers = [
            (n1, int8(qkv.modules), int8(o.modules), n2, int8(gu.modules), int8(d.modules))
            for n1, qkv, o, n2, gu, d in self.layers
        ]
        self.head8 = None
        if head:
            w = self.head.detach()
            scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127.0).double()
            q = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
            self.head8 = torch.ops.quantized.linear_prepack(q, None)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head8 is None:
            return super().logits(hidden)
        return torch.ops.quantized.linear_dynamic(hidden.contiguous(), self.head8, True)


def exact_logprobs(model, rollout, adapter: bool) -> torch.Tensor:
    ids = torch.cat([rollout.prompt_ids, rollout.response_ids], dim=1)
    mask = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=1)
    with torch.no_grad(), dequantized_int8(model):
        if adapter:
            stats = response_stats(model, ids, mask, rollout.prompt_ids.shape[1], temperature=rollout.temperature)
        else:
            with model.disable_adapter():
                stats = response_stats(model, ids, mask, rollout.prompt_ids.shape[1], temperature=rollout.temperature)
    return stats.logprobs


def errors(approx: torch.Tensor, exact: torch.Tensor, mask: torch.Tensor) -> dict:
    diff = (approx - exact) * mask
    per_row = diff.sum(dim=1).abs()
    return {
        "token_mean_abs": round(float(diff.abs().sum() / mask.sum()), 5),
        "token_max_abs": round(float(diff.abs().max()), 4),
        "row_sum_mean_abs": round(float(per_row.mean()), 4),
        "row_sum_max_abs": round(float(per_row.max()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config("configs/default.yaml")
    torch.set_num_threads(cfg.cluster.torch_threads or torch.get_num_threads())
    path = resolve_model(cfg.model.policy, cfg.cache_dir())
    model = ppo_numerics(load_policy(cfg, path, "cpu"))
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    tokenizer = load_tokenizer(path)
    prompts = [p.text for p in prompt_stream(cfg, tokenizer, "train").next(cfg.ppo.batch_size)]
    expanded, enc = encode_prompts(tokenizer, prompts, 1, "cpu")
    g = cfg.generate
    common = {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature}
    common |= {"eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    decoders = {
        "fp32": LeanDecoder(model),
        "int8": Int8Decoder(model, False),
        "int8+head": Int8Decoder(model, True),
        "per-row-sim": Int8Decoder(model, False, PerRowProjections),
    }
    report = {}
    for name, decoder in decoders.items():
        times = []
        for _ in range(args.repeats):
            torch.manual_seed(1)
            start = time.perf_counter()
            tokens, ref, lps = decode_with_reference(decoder, enc["input_ids"], enc["attention_mask"], **common)
            times.append(time.perf_counter() - start)
        rollout = make_rollout(tokenizer, expanded, enc, tokens, 0, 1, g.temperature, ref)
        mask = rollout.response_mask.float()
        report[name] = {
            "sample_s": round(min(times), 2),
            "tokens": int(mask.sum()),
            "reference": errors(rollout.ref_logprobs, exact_logprobs(model, rollout, False), mask),
            "policy": errors(lps[:, : mask.shape[1]], exact_logprobs(model, rollout, True), mask),
        }
        print(json.dumps({name: report[name]}), flush=True)
    base = report["fp32"]["sample_s"]
    print(json.dumps({"speedup_vs_fp32": {k: round(base / v["sample_s"], 2) for k, v in report.items()}}))


if __name__ == "__main__":
    main()
