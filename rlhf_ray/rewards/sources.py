"""Reward sources (reward.sources) built on a scorer node, and their combination.

The combined reward of a sample is the sum of weight x value over the sources that returned a
value for it; a source returning None contributes nothing (no renormalisation over the others).
A sample no source returned a value for gets reward 0 and applied=False: the learner keeps it out
of the loss and the driver counts it in reward/none_frac."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_ray.batch import Scores
from rlhf_ray.config.schema import Config, RewardSourceConfig
from rlhf_ray.errors import ConfigError, UserError
from rlhf_ray.models.assets import materialize, resolve_model
from rlhf_ray.rewards.base import RewardBatch, RewardSourceError, to_values
from rlhf_ray.rewards.classifier import RewardModel
from rlhf_ray.rewards.functions import FunctionRef, FunctionSource, function_ref, load_function
from rlhf_ray.rewards.http_client import HttpSource
from rlhf_ray.store.artifacts import ModelRef


@dataclass(frozen=True)
class SourceSpec:
    """What a scorer needs to build one source (crosses to the scorer in its constructor args)."""

    name: str
    kind: str  # classifier | model | function | http
    weight: float = 1.0
    key: str = "reward"  # the config key that configured it, for messages
    model: ModelRef | None = None  # classifier/model: a name every node resolves, or a published directory
    function: FunctionRef | None = None
    url: str | None = None
    timeout_s: float = 60.0
    retries: int = 3


def source_specs(cfg: Config, models: dict[int, ModelRef]) -> list[SourceSpec]:
    """reward.source_list() as specs: `models` maps an entry's index to its model reference (classifier
    and model kinds); a function file's text is read here, on the driver."""
    specs = []
    for i, src in enumerate(cfg.reward.source_list()):
        key = f"reward.sources[{i}]" if cfg.reward.sources else "reward"
        specs.append(spec_of(src, key, models.get(i)))
    return specs


def spec_of(src: RewardSourceConfig, key: str, model: ModelRef | None = None) -> SourceSpec:
    function = function_ref(f"{key}.function", src.function) if src.kind == "function" else None
    return SourceSpec(
        src.resolved_name(), src.kind, src.weight, key, model, function, src.url, src.timeout_s, src.retries
    )


def judge_specs(cfg: Config) -> list[SourceSpec]:
    """eval.judges as specs for scoring in this process: a classifier or model judge's model resolved to a
    local directory (or a hub id) here."""
    specs = []
    for i, judge in enumerate(cfg.eval.judges):
        model = resolve_model(judge.model, cfg.cache_dir()) if judge.model is not None else None
        specs.append(spec_of(judge, f"eval.judges[{i}]", model))
    return specs


def classifier_spec(model: ModelRef) -> SourceSpec:
    """The default: one sentiment classifier, weight 1 (what every run did before reward.sources)."""
    return SourceSpec("classifier", "classifier", 1.0, "reward.model", model)


class ModelSource:
    """classifier (reward.score of the classifier's logits) and model (its single output) kinds."""

    def __init__(self, spec: SourceSpec, cfg: Config, device: str):
        r = cfg.reward
        path = materialize(spec.model, cfg.cache_dir())  # on this node: no shared disk assumed
        self.input = r.input
        self.model = RewardModel(
            path, score=r.score, quant=r.quant, device=device, batch_size=r.batch_size, max_length=r.max_length
        )
        labels = self.model.model.config.num_labels
        if spec.kind == "model" and labels != 1:
            raise UserError(
                f"reward source {spec.name!r} ({spec.key}.model): {path} has {labels} labels, a kind model "
                "source needs a scalar reward model (num_labels 1); use kind classifier for a classifier"
            )

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        if self.input == "response":
            return self.model.score(batch.completion_texts)
        return self.model.score([p + c for p, c in zip(batch.texts, batch.completion_texts)])


class EnvSource:
    """env: the environment's episode reward of each multi-turn sample (None where it gave none)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        if batch.env_rewards is None:
            raise RewardSourceError(
                f"reward source {self.name!r} (kind env) got single-turn samples: it needs env.factory, env.tools "
                "or env.kind=openenv"
            )
        return to_values(self.name, batch.env_rewards, batch)


def build_source(spec: SourceSpec, cfg: Config, device: str):
    if spec.kind in ("classifier", "model"):
        return ModelSource(spec, cfg, device)
    if spec.kind == "function":
        return FunctionSource(spec.name, spec.function, Path(cfg.cache_dir()))
    if spec.kind == "http":
        return HttpSource(spec.name, spec.url, spec.timeout_s, spec.retries)
    if spec.kind == "env":
        return EnvSource(spec.name)
    raise ValueError(f"unknown reward source kind {spec.kind!r}")  # config validation refuses it first


def combine(per_source: dict[str, torch.Tensor], weights: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) rewards and applied from (B,) values with NaN = not applied: sum of weight x value over the
    sources that applied; 0 where none did. One source of weight 1 gives its values unchanged."""
    first = next(iter(per_source.values()))
    rewards = torch.zeros_like(first)
    applied = torch.zeros(first.shape, dtype=torch.bool)
    for name, values in per_source.items():
        got = ~torch.isnan(values)
        rewards = torch.where(got, rewards + weights[name] * torch.nan_to_num(values), rewards)
        applied |= got
    return rewards, applied


class RewardSources:
    """Every configured source, built once per scorer; score() runs them all on one batch."""

    def __init__(self, specs: list[SourceSpec], cfg: Config, device: str = "cpu"):
        self.specs = specs
        self.sources = {spec.name: build_source(spec, cfg, device) for spec in specs}
        self.weights = {spec.name: spec.weight for spec in specs}

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    def values(self, batch: RewardBatch) -> dict[str, torch.Tensor]:
        """Each source's (B,) values, NaN where it returned None (eval's judges: never combined)."""
        return {name: source(batch).float() for name, source in self.sources.items()}

    def score(self, batch: RewardBatch) -> Scores:
        per_source = self.values(batch)
        rewards, applied = combine(per_source, self.weights)
        return Scores(rewards, applied, per_source)


def check_sources(cfg: Config) -> None:
    """Up front, on the driver (no Ray, no weights): each function source's file or module imports
    and names a callable; each local model source is a sequence classifier with one output."""
    _check_entries(cfg, cfg.reward.sources, "reward.sources")


def check_judges(cfg: Config) -> None:
    """eval.judges as check_sources checks reward.sources (run by `eval` before any model loads)."""
    _check_entries(cfg, cfg.eval.judges, "eval.judges")


def _check_entries(cfg: Config, entries: list[RewardSourceConfig], prefix: str) -> None:
    from transformers import AutoConfig

    for i, src in enumerate(entries):
        key = f"{prefix}[{i}]"
        if src.kind == "function":
            load_function(function_ref(f"{key}.function", src.function), Path(cfg.cache_dir()))
        if src.kind == "model" and src.model is not None:  # None: the pairwise reward stage's output
            path = resolve_model(src.model, cfg.cache_dir())
            if (Path(path) / "config.json").is_file():  # a hub id is checked when a scorer loads it
                labels = AutoConfig.from_pretrained(path).num_labels
                if labels != 1:
                    raise ConfigError(
                        f"{key}.model",
                        f"{path} has {labels} labels; kind model needs a scalar reward model (num_labels 1)",
                        "use kind classifier for a classifier",
                    )
