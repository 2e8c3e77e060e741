"""The config's range and cross-field checks: cheap (no model or Ray is touched), and each failure
is one ConfigError naming the key to change."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from urllib.parse import urlsplit

from rlhf_ray.config.help import one_of
from rlhf_ray.config.schema import PROBABILITY_SCORES, Config
from rlhf_ray.errors import ConfigError
from rlhf_ray.store.refs import NGRAM_BACKBONE, is_asset_name, looks_like_path

POSITIVE = (
    "model.lora_r",
    "model.lora_alpha",
    "model.logprob_chunk",
    "generate.max_new_tokens",
    "env.max_turns",
    "env.max_tokens",
    "env.max_observation_tokens",
    "env.step_timeout_s",
    "generate.temperature",
    "reward.batch_size",
    "reward.max_length",
    "reward.epochs",
    "reward.lr",
    "reward.train_batch_size",
    "reward.train_max_length",
    "algo.group_size",
    "algo.kl_target",
    "algo.kl_horizon",
    "ppo.iterations",
    "ppo.batch_size",
    "ppo.mini_batch_size",
    "ppo.grad_accum",
    "ppo.epochs",
    "ppo.lr",
    "ppo.clip_range",
    "ppo.clip_range_value",
    "ppo.max_grad_norm",
    "ppo.checkpoint_every",
    "ppo.samples_every",
    "cluster.num_generators",
    "cluster.num_scorers",
    "cluster.num_learners",
    "cluster.call_timeout_s",
    "cluster.placement_timeout_s",
    "cluster.start_timeout_s",
    "sft.max_length",
    "sft.batch_size",
    "sft.grad_accum",
    "sft.lr",
    "sft.max_steps",
    "sft.train_docs",
    "sft.eval_blocks",
    "data.max_prompt_tokens",
    "eval.num_prompts",
    "eval.batch_size",
    "bench.repeats",
)
NON_NEGATIVE = (
    "model.lora_dropout",
    "ppo.micro_batch_tokens",
    "generate.top_k",
    "algo.kl_coef",
    "algo.kl_loss_coef",
    "ppo.vf_coef",
    "ppo.ent_coef",
    "ppo.max_policy_lag",
    "ppo.keep_checkpoints",
    "cluster.torch_threads",
    "cluster.actor_cpus",
    "cluster.max_role_restarts",
)
UNIT_INTERVAL = ("algo.gamma", "algo.gae_lambda", "generate.top_p")
GPU_FRACTIONS = ("cluster.generator_gpus", "cluster.scorer_gpus", "cluster.learner_gpus", "sft.gpus")
MODEL_REFS = (
    "model.policy",
    "reward.backbone",
    "reward.model",
    "reward.dataset",
    "merge.adapter",
    "data.dataset",
    "sft.dataset",
    "eval.dataset",
)


def validate(cfg: Config, given: tuple[set[str], ...] = ()) -> None:
    """`given`: the dotted keys the user set, most recent source first (to blame the right key)."""
    _check_ranges(cfg)
    _check_cross_fields(cfg, given)
    _validate_batches(cfg, given)
    _validate_layout(cfg)
    _validate_sampling_and_logging(cfg)
    _validate_data(cfg)
    _validate_reward_objective(cfg)
    _validate_reward_sources(cfg)
    _validate_env(cfg)
    _validate_judges(cfg)
    for key in MODEL_REFS:
        value = value_of(cfg, key)
        if value is not None and not (key == "reward.backbone" and value == NGRAM_BACKBONE):
            check_model_ref(key, value)


def value_of(cfg: Config, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def check_model_ref(key: str, ref: str) -> None:
    """A model/dataset reference that looks like a local path must exist."""
    if is_asset_name(ref) or Path(ref).expanduser().exists():
        return
    _check(not looks_like_path(ref), key, f"path {ref} does not exist")


def _check_ranges(cfg: Config) -> None:
    for key in POSITIVE:
        _check(value_of(cfg, key) > 0, key, f"must be > 0; got {value_of(cfg, key)}")
    layers = cfg.model.lora_layers
    _check(layers is None or layers > 0, "model.lora_layers", f"must be > 0 (or null: every layer); got {layers}")
    for key in NON_NEGATIVE:
        _check(value_of(cfg, key) >= 0, key, f"must be >= 0; got {value_of(cfg, key)}")
    for key in UNIT_INTERVAL:
        _check(0 <= value_of(cfg, key) <= 1, key, f"must be in [0, 1]; got {value_of(cfg, key)}")
    for key in GPU_FRACTIONS:  # 0 means CPU; otherwise a share of one GPU
        _check(
            0 <= value_of(cfg, key) <= 1,
            key,
            f"GPU fraction must be in (0, 1] (or 0 for CPU); got {value_of(cfg, key)}",
        )
    _check(cfg.model.lora_dropout < 1, "model.lora_dropout", "must be < 1")
    _check(
        1 <= cfg.data.prompt_min_tokens <= cfg.data.prompt_max_tokens,
        "data.prompt_min_tokens",
        f"must be >= 1 and <= data.prompt_max_tokens ({cfg.data.prompt_max_tokens})",
    )
    valid_stages = ("sft", "merge", "reward", "ppo")
    for i, stage in enumerate(cfg.pipeline.stages):
        _check(
            stage in valid_stages, f"pipeline.stages[{i}]", f"must be one of {', '.join(valid_stages)}; got {stage!r}"
        )
    for i, mode in enumerate(cfg.bench.quant_modes):
        _check(
            mode in ("none", "8bit", "4bit"),
            f"bench.quant_modes[{i}]",
            f"must be one of none, 8bit, 4bit; got {mode!r}",
        )


def _check_cross_fields(cfg: Config, given: tuple[set[str], ...]) -> None:
    p = cfg.ppo
    _check_divisible(("ppo.mini_batch_size", p.mini_batch_size), ("ppo.grad_accum", p.grad_accum), given)
    if cfg.algo.advantage in ("grpo", "rloo"):
        _check(
            cfg.algo.group_size >= 2,
            "algo.group_size",
            f"{cfg.algo.advantage} needs at least 2 samples per prompt; got {cfg.algo.group_size}",
        )
    _check_divisible(
        ("ppo.batch_size", p.batch_size),
        ("cluster.num_generators", cfg.cluster.num_generators),
        given,
        ": each generator samples an equal shard",
    )
    _check(
        not (cfg.algo.kl_control == "loss" and cfg.algo.kl_loss_coef == 0),
        "algo.kl_control",
        "loss steers algo.kl_loss_coef, which is 0 (off): set algo.kl_loss_coef > 0 (the least pull, e.g. 0.02) "
        "or algo.kl_control=reward",
    )
    _check_data_parallel(cfg)


def _check_data_parallel(cfg: Config) -> None:
    """Data-parallel learners split every micro-batch into equal shards."""
    micro, n = cfg.ppo.mini_batch_size // cfg.ppo.grad_accum, cfg.cluster.num_learners
    p = cfg.ppo
    # token-budget micro-batches hold varying row counts: they cannot be split into equal rank shards
    _check(
        not p.micro_batch_tokens or n == 1,
        "ppo.micro_batch_tokens",
        "forms micro-batches of varying row counts, which data-parallel learners cannot share equally: "
        "set it to 0 or cluster.num_learners=1",
    )
    _check(
        not p.micro_batch_tokens or p.grad_accum == 1,
        "ppo.grad_accum",
        "is replaced by ppo.micro_batch_tokens (micro-batches by token count): leave it at 1",
    )
    _check(
        micro % n == 0,
        "cluster.num_learners",
        f"each learner takes an equal share of every micro-batch: ppo.mini_batch_size / ppo.grad_accum ({micro}) "
        f"must be divisible by cluster.num_learners ({n})",
    )


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
    raise ConfigError(
        blamed,
        f"{whole_key} ({w}) must be divisible by {part_key} ({p}){why}",
        f"set {whole_key} to a multiple of {p} ({one_of(list(map(str, multiples)))}) "
        f"or {part_key} to a divisor of {w} ({', '.join(map(str, divisors[:8]))})",
    )


def _validate_batches(cfg: Config, given: tuple[set[str], ...] = ()) -> None:
    """ppo.mini_batch_size counts samples (rollout rows), the unit the learner splits and steps on."""
    p = cfg.ppo
    samples = p.batch_size * cfg.samples_per_prompt()
    if samples == p.batch_size:  # gae: one sample per prompt; blame the key the user set
        _check_divisible(("ppo.batch_size", p.batch_size), ("ppo.mini_batch_size", p.mini_batch_size), given)
    _check(
        samples % p.mini_batch_size == 0,
        "ppo.mini_batch_size",
        f"the samples per iteration (ppo.batch_size x samples per prompt = {samples}) must be divisible by "
        f"ppo.mini_batch_size ({p.mini_batch_size})",
    )
    _check(
        not p.overlap or p.max_policy_lag >= 1,
        "ppo.max_policy_lag",
        "ppo.overlap samples one adapter version behind the learner: needs ppo.max_policy_lag >= 1",
    )


def _validate_layout(cfg: Config) -> None:
    c = cfg.cluster
    _check(
        c.layout != "fused" or (c.num_generators == 1 and c.num_learners == 1),
        "cluster.layout",
        "fused hosts one generator and one learner in one process: set cluster.num_generators=1 and "
        "cluster.num_learners=1 (or layout=separate)",
    )
    # A placement bundle needs some resource: a role with neither CPUs nor a GPU share cannot be placed.
    for key in ("generator_gpus", "scorer_gpus", "learner_gpus"):
        _check(
            c.actor_cpus > 0 or getattr(c, key) > 0,
            "cluster.actor_cpus",
            f"must be > 0 when cluster.{key} is 0 (a CPU-only actor needs some CPU); got {c.actor_cpus}",
        )
    _validate_gpu_use(cfg)
    if c.storage is not None:
        _check_storage(c.storage)


# Parsing these with pyarrow.fs connects (S3 looks up the bucket's region, HDFS loads a JVM): they are
# reached when the first directory is published, before any actor starts.
REMOTE_STORAGE = ("s3", "gs", "gcs", "hdfs", "viewfs")


def _check_storage(uri: str) -> None:
    key, parts = "cluster.storage", urlsplit(uri)
    if parts.scheme in REMOTE_STORAGE:
        _check(bool(parts.netloc), key, f"{uri!r} names no bucket or host")
        return
    # pyarrow expands ~ itself, on each node to that node's home
    _check(bool(parts.scheme) or uri.startswith("/"), key, f"{uri!r} must be an absolute path or a URI")
    from pyarrow import fs

    try:
        fs.FileSystem.from_uri(uri)
    except ValueError as exc:  # pyarrow's ArrowInvalid: not a URI it can parse, or a relative path
        raise ConfigError(
            key,
            f"{uri!r} is not a storage URI ({exc}): use s3://, gs://, hdfs://, file:///abs/path or an absolute path",
        ) from None


def _validate_gpu_use(cfg: Config) -> None:
    c = cfg.cluster
    # Ray may pack two learners of <= 0.5 GPU each on one card; NCCL refuses two ranks on one device.
    _check(
        c.num_learners == 1 or not 0 < c.learner_gpus <= 0.5,
        "cluster.learner_gpus",
        f"{c.num_learners} data-parallel learners of {c.learner_gpus:g} GPU each could share one card, which "
        "NCCL refuses: set cluster.learner_gpus above 0.5 (one card each) or cluster.num_learners=1",
    )
    # LLM.int8 picks outlier columns over the whole batch and cached decoding runs other kernels than
    # a full forward: the generator's reference log-probs match the learner's within 2e-4 on a CPU,
    # but have not been measured on a GPU (docs/gpu.md). Until then they stay off there.
    _check(
        cfg.generate.reference_logprobs is not True or max(c.generator_gpus, c.learner_gpus) == 0,
        "generate.reference_logprobs",
        "is not yet measured on a GPU (the generator's and the learner's log-probs may differ there): "
        "set it to false, or keep cluster.generator_gpus and cluster.learner_gpus at 0",
    )
    _check(
        cfg.generate.decoder != "lean" or cfg.reference_logprobs_on(),
        "generate.decoder",
        "lean decodes with the reference rows, which generate.reference_logprobs turns off here: "
        "set generate.reference_logprobs=true or generate.decoder=auto",
    )


def _validate_sampling_and_logging(cfg: Config) -> None:
    # PPO's log-probs (ratios, KL) are those of softmax(logits / temperature). top-k/top-p truncate
    # the sampler to a set that moves with every update, so a token sampled from it can have
    # probability 0 under the next policy (ratio 0, KL inf): refused rather than silently wrong.
    for key, value, neutral in (("generate.top_k", cfg.generate.top_k, 0), ("generate.top_p", cfg.generate.top_p, 1.0)):
        _check(
            value == neutral,
            key,
            f"truncated sampling is not supported (PPO log-probs use temperature only); "
            f"use {neutral} and tune generate.temperature",
        )
    # Metric sinks are optional extras: configured but not installed is an error up front, never a crash mid-run.
    for key, package in (("tensorboard", "tensorboard"), ("wandb_project", "wandb"), ("mlflow_experiment", "mlflow")):
        if getattr(cfg.logging, key):
            _check(
                importlib.util.find_spec(package) is not None,
                f"logging.{key}",
                f"needs the '{package}' package, which is not installed (pip install {package}, or unset it)",
            )


# The keys each kind of reward source reads (besides kind, name and weight); any other one set is a mistake.
SOURCE_TARGETS = {"classifier": ("model",), "model": ("model",), "function": ("function",), "http": ("url",), "env": ()}


def _validate_env(cfg: Config) -> None:
    """Whether the factory and tools import (and have docstrings) is checked by the ppo stage (envs.runner)."""
    e = cfg.env
    if e.factory is not None:
        _check_function_spec("env.factory", e.factory)
    for i, spec in enumerate(e.tools):
        _check_function_spec(f"env.tools[{i}]", spec)
    if e.kind == "openenv":
        _check(
            e.url is not None, "env.url", "env.kind=openenv needs the server's URL; set it (e.g. http://127.0.0.1:8000)"
        )
        _check(e.factory is None, "env.factory", "env.kind=openenv takes its environment from env.url; remove it")
    else:
        for key in ("url", "glue"):
            _check(getattr(e, key) is None, f"env.{key}", "is read only with env.kind=openenv; remove it or set that")
    _check(
        not e.enabled() or cfg.generate.max_new_tokens < e.max_tokens,
        "env.max_tokens",
        f"an episode's budget ({e.max_tokens}) must exceed one turn's generate.max_new_tokens "
        f"({cfg.generate.max_new_tokens}) to leave room for an observation and a second turn",
    )


def _validate_reward_sources(cfg: Config) -> None:
    """Each entry names what it needs and nothing another kind reads; names are unique; weights finite.
    Whether a function file/name exists is checked by the ppo stage (rlhf_ray.rewards.sources.check_sources)."""
    for i, src in enumerate(cfg.reward.sources):
        _check(
            src.threshold is None,
            f"reward.sources[{i}].threshold",
            "is read only by eval.judges (a judge's positive cut); remove it",
        )
    _validate_entries(cfg, cfg.reward.sources, "reward.sources", judge=False)


def _validate_judges(cfg: Config) -> None:
    """eval.judges: the same entries as reward.sources, each scored on its own (no weight) against its own
    model; the function files/names are checked by `eval` (rlhf_ray.rewards.sources.check_judges)."""
    for i, judge in enumerate(cfg.eval.judges):
        key = f"eval.judges[{i}]"
        _check(
            judge.weight == 1.0,
            f"{key}.weight",
            "a judge is reported on its own, never combined or trained against; remove it",
        )
        _check(
            judge.threshold is None or math.isfinite(judge.threshold),
            f"{key}.threshold",
            f"must be a finite number (or null for the default); got {judge.threshold}",
        )
    _validate_entries(cfg, cfg.eval.judges, "eval.judges", judge=True)


def _validate_entries(cfg: Config, entries: list, prefix: str, judge: bool) -> None:
    seen: dict[str, str] = {}
    for i, src in enumerate(entries):
        key = f"{prefix}[{i}]"
        _check(math.isfinite(src.weight), f"{key}.weight", f"must be a finite number; got {src.weight}")
        needed = SOURCE_TARGETS[src.kind]
        for target in ("model", "function", "url"):
            if target in needed:
                continue
            _check(
                getattr(src, target) is None,
                f"{key}.{target}",
                f"is not read by kind {src.kind} (only by {one_of(_kinds_reading(target))}); remove it",
            )
        # The kind the reward stage trains (classifier, or model under objective=pairwise) may leave `model`
        # unset: reward.model, else the reward stage's output. A judge always names its own.
        if needed and (judge or src.kind != _trained_kind(cfg)):
            problem = f"kind {src.kind} needs it; set it"
            if judge and src.kind in ("classifier", "model"):
                problem = "a judge needs its own model (the training reward is no independent judge); set it"
            elif src.kind == "classifier":
                problem = "kind classifier needs it under reward.objective=pairwise (its output is a scalar model: "
                problem += "use kind model), or set it"
            _check(getattr(src, needed[0]) is not None, f"{key}.{needed[0]}", problem)
        if src.model is not None:
            check_model_ref(f"{key}.model", src.model)
        if src.kind == "function":
            _check_function_spec(f"{key}.function", src.function)
        if src.kind == "http":
            _check_url(f"{key}.url", src.url)
        _check(
            src.kind != "env" or cfg.env.enabled(),
            f"{key}.kind",
            "env reads the environment's episode reward, but no environment is set: set env.factory, env.tools "
            "or env.kind=openenv",
        )
        _check(src.timeout_s > 0, f"{key}.timeout_s", f"must be > 0; got {src.timeout_s}")
        _check(src.retries >= 0, f"{key}.retries", f"must be >= 0; got {src.retries}")
        _check(src.name is None or src.name.strip() != "", f"{key}.name", "must not be empty (or null for a default)")
        name = src.resolved_name()
        if name in seen:
            what = "judge" if judge else "reward source"
            raise ConfigError(
                f"{key}.name",
                f"duplicate {what} name {name!r} (also {seen[name]})",
                f"give each {what} a distinct `name`",
            )
        seen[name] = key


def _trained_kind(cfg: Config) -> str:
    return "model" if cfg.reward.objective == "pairwise" else "classifier"


def _validate_reward_objective(cfg: Config) -> None:
    """Training sizes (None = the objective's default) and a dataset of the objective's shape."""
    r = cfg.reward
    for key in ("train_size", "eval_size", "train_window", "train_layers"):
        value = getattr(r, key)
        _check(value is None or value > 0, f"reward.{key}", f"must be > 0 (or null for the default); got {value}")
    _check(
        not (r.backbone == NGRAM_BACKBONE and r.objective == "pairwise"),
        "reward.backbone",
        "ngrams is a sentiment classifier (0/1 labels): use reward.objective=classifier, or an encoder "
        "backbone (minilm-l6) for a pairwise reward model",
    )
    _check(
        not r.ngram_ensemble or (r.objective == "classifier" and r.backbone != NGRAM_BACKBONE),
        "reward.ngram_ensemble",
        "averages an encoder classifier with the n-gram model: use it with reward.objective=classifier and an "
        "encoder backbone (minilm-l6), or set it to false",
    )
    _check(
        r.train_window is None or r.objective == "classifier",
        "reward.train_window",
        "windows of reviews are for the sentiment classifier: set it to null for reward.objective=pairwise",
    )
    _check(
        r.train_layers is None or (r.method == "full" and r.backbone != NGRAM_BACKBONE),
        "reward.train_layers",
        "picks the encoder layers that train under reward.method=full: set it to null for method=lora "
        "(the LoRA already trains a few weights) or backbone=ngrams",
    )
    embedded = {"classifier": "imdb", "pairwise": "imdb-pairs"}  # each objective's embedded set
    for objective, other in (("pairwise", "imdb"), ("classifier", "imdb-pairs")):
        _check(
            not (r.objective == objective and r.dataset == other),
            "reward.dataset",
            f"{other} does not fit reward.objective={objective}: use {embedded[objective]} (the default) "
            f"or a file of {'prompt/chosen/rejected' if objective == 'pairwise' else 'text/label'} rows",
        )
    # The default source under pairwise is the scalar model: its one output is the reward, no probability.
    _check(
        not (r.objective == "pairwise" and not r.sources and r.score in PROBABILITY_SCORES),
        "reward.score",
        f"{r.score} needs a 2-label classifier; reward.objective=pairwise trains a scalar model: use logit_margin",
    )


def _kinds_reading(target: str) -> list[str]:
    return [kind for kind, keys in SOURCE_TARGETS.items() if target in keys]


def _check_function_spec(key: str, spec: str) -> None:
    where, _, name = spec.rpartition(":")
    _check(
        bool(where) and name.isidentifier(),
        key,
        f"must look like path/to/file.py:function or package.module:function; got {spec!r}",
    )


def _check_url(key: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError as exc:
        raise ConfigError(key, f"URL {url!r} does not parse: {exc}") from None
    _check(
        parts.scheme in ("http", "https") and bool(parts.hostname),
        key,
        f"must be an http(s) URL such as http://127.0.0.1:8000/score; got {url!r}",
    )


def _validate_data(cfg: Config) -> None:
    """The prompt columns and chat mode; whether the dataset has those columns is checked when it is read
    (runtime.preflight, before any actor starts)."""
    d = cfg.data
    # 1 == True and 0 == False pass the Literal check: only the booleans and "auto" mean something here
    _check(
        d.chat_template == "auto" or isinstance(d.chat_template, bool),
        "data.chat_template",
        f"must be auto, true or false; got {d.chat_template!r}",
    )
    for key in ("data.prompt_field", "data.text_field", "sft.text_field"):
        _check(bool(value_of(cfg, key).strip()), key, "must name a column; got an empty string")
