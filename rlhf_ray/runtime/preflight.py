"""Up-front checks of a PPO run's inputs that need a model config or the data, but no Ray and no
weights: each mistake found here is one line and exit 2 before any actor starts (rather than a
traceback from inside an actor minutes later)."""

from __future__ import annotations

import os
from pathlib import Path

from rlhf_ray.config.schema import PROBABILITY_SCORES, Config
from rlhf_ray.data.prompts import longest_prompt, prompt_set
from rlhf_ray.envs.runner import EnvRunner, env_spec
from rlhf_ray.errors import ConfigError, UserError
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.models.policy import load_tokenizer, target_modules_for, top_layers
from rlhf_ray.runtime.placement import check_fits, role_specs


def check_ppo(cfg: Config) -> None:

    check_local_gpus(cfg)
    policy = resolve_model(cfg.model.policy, cfg.cache_dir())
    if Path(policy, "config.json").is_file():  # a hub id is checked when it is fetched (and its prompts then)
        check_policy(cfg, policy, check_prompts(cfg, policy))
        check_env(cfg, policy)
    if cfg.reward.model is not None:
        reward = resolve_model(cfg.reward.model, cfg.cache_dir())
        if Path(reward, "config.json").is_file():
            check_reward_labels(cfg, reward)


def check_prompts(cfg: Config, policy_path: str) -> tuple[int, str]:
    """Read, validate and render PPO's prompts as the driver will (file reads are cached in this
    process); returns the longest prompt in tokens and the key that bounds it. Raises UserError for a
    missing or malformed prompt column, a chat template the tokenizer lacks, or no prompt within
    data.max_prompt_tokens."""
    tokenizer = load_tokenizer(policy_path)
    prompts = prompt_set(cfg, tokenizer, "train")
    key = "data.prompt_max_tokens" if prompts.raws is None else "data.max_prompt_tokens"  # openings / whole
    return longest_prompt(cfg, prompts, tokenizer), key


def check_env(cfg: Config, policy_path: str) -> None:
    """Multi-turn runs: the factory and tools import and are what they must be, and the policy's chat
    template can carry an episode (prefix-preserving), as a generator will find them."""
    spec = env_spec(cfg)
    if spec is not None:
        EnvRunner(spec, cfg, load_tokenizer(policy_path))


def check_local_gpus(cfg: Config) -> None:
    """A local Ray gets this machine's GPUs and no more: asking for more can never be placed."""
    import ray

    c = cfg.cluster
    if ray.is_initialized():  # already attached (a test session, a job driver): ask the cluster
        check_fits(role_specs(c))
        return
    if c.address or os.environ.get("RAY_ADDRESS"):
        return  # attaching later: the ppo stage's check_fits compares with the cluster's resources
    need = c.num_generators * c.generator_gpus + c.num_scorers * c.scorer_gpus + c.num_learners * c.learner_gpus
    if need <= 0:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if need > have + 1e-9:
        raise UserError(
            f"the roles ask for {need:g} GPUs in all but this machine has {have}: lower cluster.*_gpus "
            "(fractions of one GPU share it), set them to 0 for CPU, or attach to a cluster (cluster.address)"
        )


def check_policy(cfg: Config, path: str, longest_prompt: tuple[int, str]) -> None:
    """longest_prompt: (tokens, the key bounding them), from check_prompts."""
    # The longest prompt plus the response must fit the model's context, and every LoRA target must exist.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    context = getattr(config, "max_position_embeddings", None)
    tokens, key = longest_prompt
    if context is not None and tokens + cfg.response_tokens() > context:
        budget = "env.max_tokens" if cfg.env.enabled() else "generate.max_new_tokens"
        raise ConfigError(
            key,
            f"a prompt of {tokens} tokens plus {budget}={cfg.response_tokens()} exceeds the model's context of "
            f"{context} tokens",
        )
    with torch.device("meta"):  # module names only: no weights are read or allocated
        skeleton = AutoModelForCausalLM.from_config(config)
    top_layers(skeleton, cfg.model.lora_layers)  # model.lora_layers within the policy's layers, in one line
    names = [name for name, _ in skeleton.named_modules()]
    for target in target_modules_for(skeleton, cfg.model.target_modules):
        if not any(name == target or name.endswith("." + target) for name in names):
            raise ConfigError("model.target_modules", f"'{target}' names no module of {config.model_type} model {path}")


def check_reward_labels(cfg: Config, path: str) -> None:
    """reward.score reads the 'positive' label: the classifier's labels must say which one it is."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    labels = [str(v).lower() for v in (config.id2label or {}).values()]
    if cfg.reward.score in PROBABILITY_SCORES and config.num_labels < 2:
        raise ConfigError(
            "reward.score",
            f"{cfg.reward.score} needs a classifier with >= 2 labels; {path} has {config.num_labels}: use logit_margin",
        )
    if config.num_labels > 2 and not any(label.startswith("pos") for label in labels):
        raise ConfigError(
            "reward.model",
            f"{path} has {config.num_labels} labels ({', '.join(labels)}) and none "
            "is named positive: reward.score cannot tell which label to reward",
        )
