"""Large-model *shapes* with random weights, built directly in quantized form (no download).

`gpt-neox-20b-shape` has GPT-NeoX-20B's configuration (44 layers, hidden 6144, 64 heads,
intermediate 24576, vocab 50432); `gpt-neox-20b-shape-4l` is the same at 4 layers (CPU
measurements), `tiny-neox-shape` the same builder at toy width (unit tests), and
`smollm2-135m-shape` SmolLM2-135M's Llama configuration (GPU throughput without its checkpoint). The asset
directory holds only config.json, a byte-level tokenizer and a `shape.json` marker; the weights
are made where the model is loaded: the module tree is
created on the meta device, then each decoder layer's Linear becomes a bitsandbytes
Linear8bitLt / Linear4bit quantized from random fp16 data one layer at a time, so peak memory
while building is the quantized size plus one layer, never the fp16 model. Embeddings, norms and
the LM head stay unquantized in `dense_dtype(device)` (bf16 on a GPU, fp32 on a CPU), as the
memory planner assumes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from rlhf_ray.errors import UserError
from rlhf_ray.store.checkpoint import publish_once, temp_dir
from rlhf_ray.store.refs import parse_shape_name

MARKER = "shape.json"
# GPT-NeoX-20B (Black et al. 2022), config.json of EleutherAI/gpt-neox-20b.
SHAPES = {
    "gpt-neox-20b-shape": dict(
        hidden_size=6144,
        num_hidden_layers=44,
        num_attention_heads=64,
        intermediate_size=24576,
        vocab_size=50432,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        use_parallel_residual=True,
        layer_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    # SmolLM2-135M's configuration (a Llama: grouped-query attention, tied embeddings): the model
    # `make run` trains, as a shape for GPU machines that cannot hold its 98 MB embedded checkpoint.
    "smollm2-135m-shape": dict(
        model_type="llama",
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        intermediate_size=1536,
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
    # The same layout in miniature: unit tests and the CPU run of jobs/gpu_check.py.
    "tiny-neox-shape": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        vocab_size=512,
        max_position_embeddings=512,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        use_parallel_residual=True,
        layer_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
}
WEIGHT_STD = 0.02  # GPT-NeoX initializer_range: keeps random activations in a sane range


def dense_dtype(device: str) -> torch.dtype:
    """The unquantized tensors and the matmul compute dtype: bf16 on a GPU (as a real 20B checkpoint
    would be served); fp32 on a CPU, where bf16 matmuls are emulated on most chips (a 2-layer
    20B-shaped NF4 update took 788 s in bf16 on the AVX2 development machine)."""
    return torch.bfloat16 if device == "cuda" else torch.float32


def byte_tokenizer():
    """256 byte tokens + <pad> + <eos>, no merges: needs no training data (a GPU host may have none).

    Ids past the tokenizer (the model's vocab is 50432) decode to nothing, which is fine for random weights."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab.update({"<pad>": len(vocab), "<eos>": len(vocab) + 1})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", model_max_length=2048)


def shape_config(shape: str, layers: int, tokenizer=None):
    from transformers import AutoConfig

    tokenizer = tokenizer or byte_tokenizer()
    ids = dict(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id
    )
    fields = {"model_type": "gpt_neox", **SHAPES[shape], "num_hidden_layers": layers}
    return AutoConfig.for_model(fields.pop("model_type"), **fields, **ids)


def write_shape_dir(ref: str, target: Path) -> Path:
    """The asset directory: config + tokenizer + marker (a few hundred KB; no weights)."""

    shape, layers = parse_shape_name(ref)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target.parent, ".tmp-")  # the user's umask, as every file we write
    tokenizer = byte_tokenizer()
    shape_config(shape, layers, tokenizer).save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / MARKER).write_text(json.dumps({"shape": shape, "layers": layers, "seed": 0}))
    publish_once(tmp, target)
    return target


def is_shape_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def _quantized_linear(linear: nn.Linear, quant: str, device: str, gen: torch.Generator):
    """A bitsandbytes layer quantized from random fp16 weights made on `device` (only this layer's fp16 lives)."""
    dtype = dense_dtype(device)
    import bitsandbytes as bnb

    n_in, n_out, has_bias = linear.in_features, linear.out_features, linear.bias is not None
    w = torch.randn(n_out, n_in, generator=gen, device=device, dtype=torch.float16).mul_(WEIGHT_STD)
    if quant == "8bit":
        layer = bnb.nn.Linear8bitLt(n_in, n_out, bias=has_bias, has_fp16_weights=False, threshold=6.0, device="meta")
        layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)._quantize(device)
    else:
        layer = bnb.nn.Linear4bit(
            n_in, n_out, bias=has_bias, compute_dtype=dtype, quant_type="nf4", compress_statistics=True, device="meta"
        )
        layer.weight = bnb.nn.Params4bit(
            w, requires_grad=False, quant_type="nf4", compress_statistics=True, module=layer
        )._quantize(device)
    if has_bias:
        layer.bias = nn.Parameter(torch.zeros(n_out, device=device, dtype=dtype), requires_grad=False)
    return layer


def _materialize(module: nn.Module, device: str, gen: torch.Generator) -> None:
    """Real tensors (dense_dtype) for the parameters still on meta (embeddings, norms, head)."""
    dtype = dense_dtype(device)
    for name, p in list(module.named_parameters(recurse=False)):
        if not p.is_meta:
            continue
        if isinstance(module, nn.LayerNorm):
            data = torch.ones if name == "weight" else torch.zeros
            value = data(p.shape, device=device, dtype=dtype)
        elif name == "bias":
            value = torch.zeros(p.shape, device=device, dtype=dtype)
        else:
            value = torch.randn(p.shape, generator=gen, device=device, dtype=dtype).mul_(WEIGHT_STD)
        setattr(module, name, nn.Parameter(value, requires_grad=False))


def build_quantized(path: str | Path, quant: str, device: str, on_layer=None):
    """A GPT-NeoX-shaped causal LM from the asset directory, quantized ('8bit' | '4bit') while built.

    on_layer(i, model) is called after decoder layer i is materialized (progress / memory probes)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if quant not in ("8bit", "4bit"):
        raise UserError(f"model.quant={quant}: shape models are built quantized; use 8bit or 4bit")
    config = AutoConfig.from_pretrained(str(path))
    seed = json.loads((Path(path) / MARKER).read_text())["seed"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dense_dtype(device))
    body = getattr(model, model.base_model_prefix)
    gen = torch.Generator(device=device).manual_seed(seed)
    for i, layer in enumerate(body.layers):
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, _quantized_linear(child, quant, device, gen))
        for sub in layer.modules():
            _materialize(sub, device, gen)
        if on_layer is not None:
            on_layer(i, model)
    _materialize(model.get_input_embeddings(), device, gen)
    if config.tie_word_embeddings:  # one matrix for both ends, as the real model stores it
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    for sub in model.modules():
        _materialize(sub, device, gen)
    # Buffers made under the meta device (rotary inverse frequencies) are computed again for real.
    body.rotary_emb = type(body.rotary_emb)(config).to(device)
    model.is_loaded_in_8bit, model.is_loaded_in_4bit = quant == "8bit", quant == "4bit"  # what peft dispatches on
    return model.eval()
