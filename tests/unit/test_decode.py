"""The lean decode loop (models.decode): it samples exactly from softmax(logits / temperature) of the
policy the learner trains, and its reference rows score each token as the learner's reference pass.

Independent references: the learner's full forward (response_stats) with the adapter on and off,
and for the draw itself hand-computed intervals and a chi-square test against the probabilities."""

from __future__ import annotations

import pytest
import torch
from test_sampling import perturbed_policy  # tests/unit is on sys.path under pytest

from rlhf_ray.models.decode import LeanDecoder, decode_with_reference, inverse_cdf_draw, sample_lean, unsupported
from rlhf_ray.models.forward import response_stats
from rlhf_ray.models.generate import encode_prompts, make_rollout
from rlhf_ray.models.policy import load_tokenizer, reference_mode

PROMPTS = ["This movie was", "Honestly the plot of this film", "I"]  # lengths differ: left padding
TEMPERATURE = 0.7
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def policy(tiny_lm):
    """LoRA on every projection: each fused matmul's split and each LoRA delta is exercised."""
    return perturbed_policy(tiny_lm, targets=ALL_PROJECTIONS), load_tokenizer(tiny_lm)


def _learner(model, rollout, reference: bool) -> torch.Tensor:
    args = (model, rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1])
    with torch.no_grad(), reference_mode(model) if reference else torch.enable_grad():
        return response_stats(*args, temperature=TEMPERATURE).logprobs


def test_inverse_cdf_draw_by_hand():
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75]] * 5)
    u = torch.tensor([0.0, 0.2499, 0.25, 0.9999, 0.5])
    # intervals: token 1 [0, 0.25), token 3 [0.25, 1); zero-probability tokens span nothing
    assert inverse_cdf_draw(probs, u).tolist() == [1, 1, 3, 3, 3]
    # unnormalized weights are the same distribution
    assert inverse_cdf_draw(probs * 7.0, u).tolist() == [1, 1, 3, 3, 3]


def test_inverse_cdf_draw_follows_the_probabilities():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.05, 0.4, 0.0, 0.3, 0.25])
    n = 40_000
    tokens = inverse_cdf_draw(p.expand(n, -1), torch.rand(n, generator=g))
    counts = torch.bincount(tokens, minlength=5).double()
    assert counts[2] == 0
    expected = p.double() * n
    keep = expected > 0
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    assert chi2 < 18.5, chi2  # chi-square, 3 degrees of freedom: p = 0.0003


def test_lean_loop_scores_like_the_learner_with_and_without_the_adapter(policy):
    model, tokenizer = policy
    assert unsupported(model) is None
    expanded, enc = encode_prompts(tokenizer, PROMPTS, 2, "cpu")
    torch.manual_seed(5)
    tokens, ref, own = decode_with_reference(
        LeanDecoder(model),
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=8,
        temperature=TEMPERATURE,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
    )
    rollout = make_rollout(tokenizer, expanded, enc, tokens, 0, 2, TEMPERATURE, ref)
    mask = rollout.response_mask.float()
    assert mask.sum() > 10
    policy_lp, reference_lp = _learner(model, rollout, False), _learner(model, rollout, True)
    # the loop's own log-probs of what it sampled are the learner's, and so are the reference rows'
    torch.testing.assert_close(own[:, : mask.shape[1]] * mask, policy_lp, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(rollout.ref_logprobs, reference_lp, atol=2e-4, rtol=2e-4)
    assert (policy_lp - reference_lp).abs().max() > 1e-2  # the adapter matters in this test


def test_lora_in_the_top_layer_only_samples_and_learns_like_the_learner(tiny_lm):
    """model.lora_layers=1: layers below carry no LoRA; the lean loop still scores as the learner does, and
    the learner's backward reaches every adapter weight (all in the top layer)."""
    model = perturbed_policy(tiny_lm, targets=ALL_PROJECTIONS, layers=1)
    tokenizer = load_tokenizer(tiny_lm)
    top = model.config.num_hidden_layers - 1
    adapted = {name.split(".layers.")[1].split(".")[0] for name, _ in model.named_parameters() if "lora_A" in name}
    assert adapted == {str(top)} and top > 0
    expanded, enc = encode_prompts(tokenizer, PROMPTS, 1, "cpu")
    torch.manual_seed(5)
    decoder = LeanDecoder(model)
    args = (decoder, enc["input_ids"], enc["attention_mask"])
    tokens, ref, own = decode_with_reference(*args, max_new_tokens=6, temperature=TEMPERATURE, eos=-1, pad=0)
    assert decoder.shared == top  # the layers below run on the policy rows only, copied to the reference rows
    # ... and give what every layer on every row gives
    prepare = decoder.prepare
    decoder.prepare = lambda rows, adapters=None: (prepare(rows, adapters), setattr(decoder, "shared", 0))
    torch.manual_seed(5)
    tokens_all, ref_all, own_all = decode_with_reference(
        *args, max_new_tokens=6, temperature=TEMPERATURE, eos=-1, pad=0
    )
    assert decoder.shared == 0 and torch.equal(tokens, tokens_all)
    torch.testing.assert_close((ref, own), (ref_all, own_all), atol=1e-5, rtol=1e-5)
    rollout = make_rollout(tokenizer, expanded, enc, tokens, 0, 1, TEMPERATURE, ref)
    mask = rollout.response_mask.float()
    policy_lp, reference_lp = _learner(model, rollout, False), _learner(model, rollout, True)
    torch.testing.assert_close(own[:, : mask.shape[1]] * mask, policy_lp, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(rollout.ref_logprobs, reference_lp, atol=2e-4, rtol=2e-4)
    assert (policy_lp - reference_lp).abs().max() > 1e-2
    policy_lp.sum().backward()
    lora = [p for name, p in model.named_parameters() if "lora_" in name]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)


def test_a_decoder_built_once_follows_the_adapter_loaded_into_the_model(tiny_lm):
    """The generator keeps one LeanDecoder for the run: a new adapter (a weight sync) must be used."""
    model, tokenizer = perturbed_policy(tiny_lm), load_tokenizer(tiny_lm)
    decoder = LeanDecoder(model)
    expanded, enc = encode_prompts(tokenizer, PROMPTS, 1, "cpu")
    with torch.no_grad():  # the adapter changes in place, as import_adapter loads a synced one
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(-2.0)
    torch.manual_seed(0)
    args = (decoder, enc["input_ids"], enc["attention_mask"])
    tokens, ref, own = decode_with_reference(*args, max_new_tokens=6, temperature=TEMPERATURE, eos=-1, pad=0)
    rollout = make_rollout(tokenizer, expanded, enc, tokens, 0, 1, TEMPERATURE, ref)
    torch.testing.assert_close(own * rollout.response_mask, _learner(model, rollout, False), atol=2e-4, rtol=2e-4)


def test_lean_samples_are_seeded_and_stop_at_eos(policy):
    model, tokenizer = policy
    kw = dict(max_new_tokens=12, temperature=TEMPERATURE, group_size=3, seed=11)
    decoder = LeanDecoder(model)
    a, b = sample_lean(decoder, tokenizer, PROMPTS, **kw), sample_lean(LeanDecoder(model), tokenizer, PROMPTS, **kw)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.ref_logprobs, b.ref_logprobs)
    other = sample_lean(decoder, tokenizer, PROMPTS, **{**kw, "seed": 12})
    assert not torch.equal(a.response_ids, other.response_ids)
    # the same draws with a token of row 0 (its 4th) standing for EOS: each row is cut after its first one
    _, enc = encode_prompts(tokenizer, PROMPTS, 3, "cpu")
    pad = tokenizer.pad_token_id

    def run(eos):
        torch.manual_seed(11)
        args = (LeanDecoder(model), enc["input_ids"], enc["attention_mask"])
        return decode_with_reference(*args, max_new_tokens=12, temperature=TEMPERATURE, eos=eos, pad=pad)

    free, free_ref, _ = run(eos=-1)
    eos = int(free[0, 3])
    cut, cut_ref, _ = run(eos=eos)
    for row in range(len(free)):
        hits = (free[row] == eos).nonzero().flatten()
        end = int(hits[0]) + 1 if len(hits) else free.shape[1]
        assert torch.equal(cut[row, :end], free[row, :end]) and torch.equal(cut_ref[row, :end], free_ref[row, :end])
        assert bool((cut[row, end:] == pad).all())
    assert cut.shape[1] <= free.shape[1]


def test_lean_loop_applies_to_8bit_llama_in_train_mode_only(tiny_lm, cache_dir):
    from rlhf_ray.models.assets import resolve_model

    assert "Llama only" in unsupported(perturbed_policy(resolve_model("tiny-random-neox", cache_dir)))
    assert "8-bit" in unsupported(perturbed_policy(tiny_lm, quant="none"))
    assert "8-bit" in unsupported(perturbed_policy(tiny_lm, quant="4bit"))
    evaluating = perturbed_policy(tiny_lm).eval()  # eval mode: bitsandbytes quantizes activations too
    assert "train mode" in unsupported(evaluating)


def test_generator_resolves_the_decoder_and_refuses_a_forced_lean_that_cannot_apply(tiny_lm, cache_dir):
    from rlhf_ray.actors.generator import Generator
    from rlhf_ray.config.load import load_config
    from rlhf_ray.errors import ConfigError
    from rlhf_ray.models.assets import resolve_model

    on = ["generate.reference_logprobs=true"]
    assert Generator(load_config("configs/smoke.yaml", on), tiny_lm).decoder == "lean"  # auto, 8-bit Llama, CPU
    forced_off = load_config("configs/smoke.yaml", [*on, "generate.decoder=transformers"])
    assert Generator(forced_off, tiny_lm).decoder == "transformers"
    neox = load_config("configs/smoke.yaml", [*on, "generate.decoder=lean"])
    with pytest.raises(ConfigError, match="lean does not apply to this policy: a gpt_neox model"):
        Generator(neox, resolve_model("tiny-random-neox", cache_dir))
    with pytest.raises(ConfigError, match="generate.decoder"):
        load_config("configs/smoke.yaml", ["generate.reference_logprobs=false", "generate.decoder=lean"])


def test_a_shared_prompt_is_prefilled_once_and_copied(policy):
    """Rows with one prompt (a group) are computed once: the same hidden states and cache as rows
    computed each for itself, to float rounding."""
    from rlhf_ray.models.decode import _prefill

    model, tokenizer = policy
    decoder = LeanDecoder(model)
    _, enc = encode_prompts(tokenizer, PROMPTS, 1, "cpu")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    decoder.prepare(2 * 4)

    def run(rows):
        kv = (2 * len(rows), decoder.kv_heads, ids.shape[1] + 1, decoder.head_dim)
        cache = [(torch.zeros(kv), torch.zeros(kv)) for _ in decoder.layers]
        return _prefill(decoder, ids[rows], mask[rows], cache), cache

    grouped, grouped_cache = run([0, 0, 1, 1])  # 2 unique prompts for 4 rows
    single, single_cache = run([0, 1, 2, 1])  # nothing shared but row 3 (the same prompt as row 1)
    for g, s in ((0, 0), (2, 1), (4, 4), (6, 5)):  # policy rows, then reference rows
        torch.testing.assert_close(grouped[g], single[s], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grouped_cache[0][0][g], single_cache[0][0][s], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grouped[0], grouped[1])
