"""Learner role: experience (old/ref log-probs, values, KL-shaped rewards, advantages) and PPO epochs.

All math comes from rlhf_ray.algo; this class only moves tensors through the model and optimizer."""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import torch

from rlhf_ray import algo
from rlhf_ray.actors.common import init_process, load_policy
from rlhf_ray.actors.dp import DataParallel, join, token_share
from rlhf_ray.actors.history import AdapterHistory
from rlhf_ray.batch import STOP_REASONS, AdapterPayload, Episode, Experience, Rollout, Scores
from rlhf_ray.config.schema import Config
from rlhf_ray.errors import NonFiniteError
from rlhf_ray.models.adapter import export_adapter, import_adapter, save_adapter
from rlhf_ray.models.assets import materialize
from rlhf_ray.models.dequant import dequant_enabled, dequantized_int8
from rlhf_ray.models.forward import ResponseStats, response_stats, trunk_depth, trunk_hidden
from rlhf_ray.models.policy import (
    ValueHead,
    adapter_parameters,
    load_tokenizer,
    ppo_numerics,
    reference_mode,
    role_device,
)
from rlhf_ray.store import seeds
from rlhf_ray.store.artifacts import ModelRef
from rlhf_ray.store.provenance import model_card
from rlhf_ray.store.refs import portable_ref


def make_kl_controller(cfg: Config):
    """The controller of the coefficient algo.kl_control names (kl_coef or kl_loss_coef)."""
    a = cfg.algo
    if a.kl_control == "loss":  # the configured kl_loss_coef is the least pull: the controller only adds to it
        if a.kl_controller == "adaptive":
            return algo.AdaptiveKLController(a.kl_loss_coef, a.kl_target, a.kl_horizon, floor=a.kl_loss_coef)
        return algo.FixedKLController(a.kl_loss_coef)
    if a.kl_controller == "adaptive":
        return algo.AdaptiveKLController(a.kl_coef, a.kl_target, a.kl_horizon)
    return algo.FixedKLController(a.kl_coef)


def kl_coefs(cfg: Config, controlled: float) -> tuple[float, float]:
    """(the reward penalty's kl_coef, the loss term's kl_loss_coef) this iteration: the controlled one's
    current value, the other as configured."""
    if cfg.algo.kl_control == "loss":
        return cfg.algo.kl_coef, controlled
    return controlled, cfg.algo.kl_loss_coef


class Learner:
    def __init__(self, cfg: Config, policy: ModelRef, shared=None, adapter_name: str | None = None):
        """shared: a SharedPolicy (fused layout) to train instead of loading a base of our own;
        adapter_name: the one named adapter of several on the shared model that this learner trains
        (a sweep's run; its optimizer is built from that adapter's parameter names), None for the
        model's only adapter (its trainable parameters)."""
        init_process(cfg)
        policy_path = materialize(policy, cfg.cache_dir())  # on this node: no shared disk assumed
        self.cfg = cfg
        self.critic = cfg.algo.advantage == "gae"  # grpo/rloo: no value head is ever built
        if shared is not None:
            self.device, self.tokenizer, self.model = shared.device, shared.tokenizer, shared.model
        else:
            self.device = role_device(cfg.cluster.learner_gpus)
            self.tokenizer = load_tokenizer(policy_path)
            torch.manual_seed(cfg.run.seed)  # same fresh LoRA init for the same seed
            self.model = ppo_numerics(load_policy(cfg, policy_path, self.device))
        self.value_head = ValueHead(self.model.config.hidden_size).to(self.device) if self.critic else None
        self.adapter_name = adapter_name or "default"
        if adapter_name is None:
            params = [p for p in self.model.parameters() if p.requires_grad]
        else:  # never requires_grad: peft's set_adapter flips it for the adapters it deactivates
            params = adapter_parameters(self.model, adapter_name)
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=cfg.ppo.lr)
        self.kl_ctl = make_kl_controller(cfg)
        self.kl_loss_coef = cfg.algo.kl_loss_coef  # this iteration's (algo.kl_control=loss moves it)
        self.version = 0
        self.last_metrics: dict = {}  # the latest iteration's figures, for the adapter's model card
        # Adapters that lagging (overlapped) rollouts may have been sampled with; empty when on-policy.
        self.history = AdapterHistory(cfg.ppo.max_policy_lag if cfg.ppo.overlap else 0, self.adapter_name)
        self.dp = DataParallel()  # a single learner until join_group
        self.dequant = dequant_enabled(cfg.model.dequant_cache, self.model)
        # LoRA in the top layers only (model.lora_layers): the layers below run once per row and iteration
        self.trunk_depth = trunk_depth(self.model, self.adapter_name)
        self.trunk: TrunkCache | None = None  # this iteration's

    def join_group(self, host: str, port: int, rank: int, world: int) -> int:
        """Become rank `rank` of `world` data-parallel learners (rank 0 listens on host:port)."""
        self.use_group(join(host, port, rank, world, self.device))
        return rank

    def use_group(self, dp: DataParallel) -> None:
        """Train in the data-parallel group `dp` joined, starting from rank 0's weights."""
        self.dp = dp
        self.dp.broadcast([q for g in self.optimizer.param_groups for q in g["params"]])

    # ------------------------------------------------------------------ weight sync + checkpoint
    def adapter(self) -> AdapterPayload:
        return export_adapter(self.model, self.version, self.value_head, self.adapter_name)

    def publish(self) -> tuple[AdapterPayload, dict]:
        """The current adapter and a small receipt (version, hash, size) the driver can read."""
        payload = self.adapter()
        return payload, {"version": payload.version, "sha256": payload.sha256, "nbytes": payload.nbytes}

    def checkpoint(self) -> dict[str, bytes]:
        """Everything needed to resume this role, as files (the driver writes them atomically)."""
        buf = io.BytesIO()
        torch.save(self.optimizer.state_dict(), buf)
        payload = self.adapter()
        state = {"version": self.version, "kl_controller": self.kl_ctl.state_dict(), "adapter_sha256": payload.sha256}
        files = {
            "policy.safetensors": payload.data,
            "optimizer.pt": buf.getvalue(),
            "learner_state.json": json.dumps(state).encode(),
        }
        with (
            tempfile.TemporaryDirectory() as tmp
        ):  # peft layout too, for users: PeftModel.from_pretrained(ckpt/adapter)
            save_adapter(
                self.model,
                tmp,
                base=portable_ref(self.cfg.model.policy),
                tokenizer=self.tokenizer,
                card=model_card(self.cfg, "ppo", self.last_metrics),
                adapter_name=self.adapter_name,
            )
            files.update({f"adapter/{p.name}": p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()})
        return files

    def restore(self, files: dict[str, bytes]) -> int:
        state = json.loads(files["learner_state.json"])
        import_adapter(
            self.model,
            AdapterPayload(state["version"], state["adapter_sha256"], files["policy.safetensors"]),
            self.value_head,
            self.adapter_name,
        )
        self.optimizer.load_state_dict(torch.load(io.BytesIO(files["optimizer.pt"]), weights_only=True))
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.version = state["version"]
        return self.version

    # ------------------------------------------------------------------ PPO iteration
    def learn(
        self, rollouts: list[Rollout], scores: list[Scores | torch.Tensor], iteration: int
    ) -> tuple[dict, AdapterPayload]:
        with dequantized_int8(self.model, self.dequant):  # the base is frozen: each int8 weight dequantized once
            return self._learn(rollouts, scores, iteration)

    def _learn(
        self, rollouts: list[Rollout], scores: list[Scores | torch.Tensor], iteration: int
    ) -> tuple[dict, AdapterPayload]:
        batch = Rollout.concat(rollouts, self.tokenizer.pad_token_id)
        lag = self.history.check(batch.policy_version, self.version)
        torch.manual_seed(seeds.learner_step(self.cfg.run.seed, iteration))
        kl_coef, self.kl_loss_coef = kl_coefs(self.cfg, self.kl_ctl.value)
        # Scores from the reward scorers; a bare (B,) tensor (tests, benchmarks) is rewards that all applied
        shards = [s if isinstance(s, Scores) else Scores(s, torch.ones(len(s), dtype=torch.bool)) for s in scores]
        scores_t = torch.cat([s.rewards for s in shards]).float()  # (B,)
        _require_finite("reward", scores_t, iteration)
        lengths = batch.loss_mask.sum(1).float()  # (B,) policy tokens as sampled, before unscored rows leave the loss
        applied = torch.cat([s.applied for s in shards])  # (B,) False: no reward source applied to the sample
        if not applied.all():  # such samples stay out of the loss: no response token of theirs counts
            batch.response_mask = batch.response_mask * applied[:, None].to(batch.response_mask.dtype)
        # one row order per epoch; the first also picks the rows make_experience forwards with grad
        orders = [torch.randperm(len(batch)) for _ in range(self.cfg.ppo.epochs)]
        first_rows = self._first_rows(batch, orders, lag)
        t0 = time.perf_counter()
        self.trunk = TrunkCache(self.model, self.trunk_depth, batch, self.device) if self.trunk_depth else None
        # old log-probs (and values) from the adapter that sampled the batch: the PPO ratio's denominator
        with self.history.policy_at(self.model, self.value_head, batch.policy_version, self.version):
            exp, first_pass = self.make_experience(batch, scores_t, kl_coef, first_rows)
        t1 = time.perf_counter()
        self.history.record(self.version, self.model, self.value_head)
        stats = self.update(exp, orders, first_pass)
        self.trunk = None
        kl_seq = algo.sequence_kl(exp.kl, exp.mask)
        self.kl_ctl.update(float(kl_seq), len(batch))
        self.version += 1
        payload = self.adapter()
        metrics = {
            "reward/mean": float(scores_t.mean()),
            "reward/std": float(scores_t.std()) if len(scores_t) > 1 else 0.0,
            "kl/mean": float(kl_seq),
            "kl/coef": kl_coef,
            "kl/loss_coef": self.kl_loss_coef,
            "advantages/mean": float(algo.masked_mean(exp.advantages, exp.mask)),
            "response/length_mean": float(lengths.mean()),
            "policy/version": self.version,
            "policy/adapter_sha256": payload.sha256,
            "sync/bytes": payload.nbytes,
            "policy/lag": lag,
            "time/experience_s": t1 - t0,
            "time/update_s": time.perf_counter() - t1,
            **stats,
            **episode_metrics(batch.episodes),
        }
        self.last_metrics = {
            "iteration": iteration,
            **{k: v for k, v in metrics.items() if k != "policy/adapter_sha256"},
        }
        return metrics, payload

    def make_experience(
        self, batch: Rollout, scores: torch.Tensor, kl_coef: float, first_rows: torch.Tensor | None = None
    ) -> tuple[Experience, ResponseStats | None]:
        """Old log-probs + values (adapter as set), reference log-probs (adapter off), advantages.
        `first_rows` are forwarded with grad; that forward is returned for update()'s first micro-step.
        Data-parallel: each rank forwards its share of the rows (zeros elsewhere) and one all-reduce
        fills in the others', so every rank holds the whole batch's experience."""
        shape = batch.response_ids.shape
        old, ref = torch.zeros(shape, device=self.device), torch.zeros(shape, device=self.device)
        values = torch.zeros(shape, device=self.device) if self.critic else None
        rest = torch.ones(len(batch), dtype=torch.bool)
        first_pass = None
        if first_rows is not None:
            mine = self.dp.shard(first_rows)  # exactly the rows of this rank's first micro-step
            first_pass = self._forward(batch, mine, with_values=self.critic, with_entropy=True)
            width = first_pass.logprobs.shape[1]
            old[mine, :width] = first_pass.logprobs.detach()
            if self.critic:
                values[mine, :width] = first_pass.values.detach()
            rest[first_rows] = False
        with torch.no_grad():
            for rows in self._chunks(batch, self.dp.shard(rest.nonzero().flatten())):
                stats = self._forward(batch, rows, with_values=self.critic)
                old[rows, : stats.logprobs.shape[1]] = stats.logprobs
                if self.critic:
                    values[rows, : stats.values.shape[1]] = stats.values
            if batch.ref_logprobs is None:  # else the generator computed them while sampling
                for rows in self._chunks(batch, self.dp.shard(torch.arange(len(batch)))):
                    with reference_mode(self.model):  # the reference policy: same weights, adapter off
                        lp = self._forward(batch, rows, with_values=False).logprobs
                    ref[rows, : lp.shape[1]] = lp
        old = self.dp.combine(old)
        # computed by the generator while sampling (the whole batch, on every rank), or here by shards
        ref = batch.ref_logprobs.to(self.device) if batch.ref_logprobs is not None else self.dp.combine(ref)
        values = self.dp.combine(values) if self.critic else None
        # only the policy's own tokens are scored and credited: observations are context (payloads arrive on the CPU)
        mask = batch.loss_mask.to(self.device)
        a = self.cfg.algo
        with torch.no_grad():
            adv, returns, kl = algo.estimate_advantages(
                scores.to(self.device),
                old,
                ref,
                mask,
                estimator=a.advantage,
                kl_coef=kl_coef,
                kl_kind=a.kl_kind,
                values=values,
                gamma=a.gamma,
                gae_lambda=a.gae_lambda,
                whiten=self.cfg.ppo.whiten_advantages,
                group_size=batch.group_size,
            )
        return Experience(batch, old, ref, values, adv, returns, kl, mask.float()), first_pass

    def _chunks(self, batch: Rollout, rows: torch.Tensor) -> list[torch.Tensor]:
        """Forward passes without grad: by token budget (similar lengths together), else mini-batch rows."""
        budget = self.cfg.ppo.micro_batch_tokens
        if budget:
            return algo.token_budget_batches(rows, batch.lengths, budget) if len(rows) else []
        return [part for part in rows.split(self.cfg.ppo.mini_batch_size) if len(part)]

    def _micro_batches(self, batch: Rollout, mb: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
        """A mini-batch's micro-batches, each with the weight of its loss: its share of the mini-batch's
        response tokens (ppo.micro_batch_tokens: one token-weighted mean over the whole mini-batch),
        else 1 / ppo.grad_accum for equal row counts."""
        p = self.cfg.ppo
        if not p.micro_batch_tokens:
            return [(rows, 1.0 / p.grad_accum) for rows in mb.split(p.mini_batch_size // p.grad_accum)]
        tokens = batch.loss_mask.sum(1).float()
        total = float(tokens[mb].sum().clamp(min=1))
        return [(rows, float(tokens[rows].sum()) / total) for rows in self._chunks(batch, mb)]

    def _part(self, batch: Rollout, rows: torch.Tensor) -> Rollout:
        """The rows a forward computes; by token budget also without the pad columns none of them needs."""
        part = batch.select(rows)
        return part.trimmed() if self.cfg.ppo.micro_batch_tokens else part

    def _first_rows(self, batch: Rollout, orders: list[torch.Tensor], lag: int) -> torch.Tensor | None:
        """On-policy, the first micro-step's rows are scored by the sampling policy itself: that forward
        (with grad) doubles as their old-log-prob pass. Off-policy (lag > 0) there is nothing to share."""
        if lag:
            return None
        return self._micro_batches(batch, orders[0][: self.cfg.ppo.mini_batch_size])[0][0]

    def _forward(self, batch: Rollout, rows: torch.Tensor, with_values: bool, with_entropy: bool = False):
        """Response stats of `rows` of `batch` (their _part), above the trunk where there is one."""
        part = self._part(batch, rows)
        return response_stats(
            self.model,
            part.input_ids.to(self.device),
            part.attention_mask.to(self.device),
            part.prompt_ids.shape[1],
            chunk=self.cfg.model.logprob_chunk,
            value_head=self.value_head if with_values else None,
            with_entropy=with_entropy,
            temperature=part.temperature,  # the distribution the generator sampled from
            entropy_grad=self.cfg.ppo.ent_coef > 0,  # a metric only at coefficient 0: no (B, C, V) graph
            trunk=self.trunk.states(rows, part) if self.trunk is not None else None,
        )

    def update(self, exp: Experience, orders: list[torch.Tensor], first_pass: ResponseStats | None = None) -> dict:
        """One pass per epoch over minibatches in `orders` (a row permutation per epoch); grad accumulation
        over micro-batches. The first micro-step reuses `first_pass`, make_experience's forward of its rows."""
        p = self.cfg.ppo
        totals: dict[str, float] = {}
        steps, grad_norms = 0, 0.0
        trainable = [q for g in self.optimizer.param_groups for q in g["params"]]
        for order in orders:
            for mb in order.split(p.mini_batch_size):
                self.optimizer.zero_grad(set_to_none=True)
                for rows, weight in self._micro_batches(exp.rollout, mb):
                    for key, value in self._micro_step(exp, rows, weight, first_pass).items():
                        totals[key] = totals.get(key, 0.0) + value
                    first_pass = None  # used once: later steps see an updated adapter
                steps += 1
                self.dp.sum_grads(trainable)  # sum of shard gradients == the whole minibatch's gradient
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, p.max_grad_norm)
                # Before step(): a NaN/inf loss or gradient never reaches the adapter (the driver
                # then restores the pre-iteration state and skips the batch or stops, ppo.on_nonfinite).
                _require_finite("loss/gradient", grad_norm, None)
                grad_norms += float(grad_norm)
                self.optimizer.step()
        totals = self.dp.sum_stats(totals, self.device)  # token-weighted shard stats: sums are whole-batch values
        return {**{k: v / steps for k, v in totals.items()}, "policy/grad_norm": grad_norms / steps}

    def _micro_step(
        self, exp: Experience, rows: torch.Tensor, weight: float, whole: ResponseStats | None = None
    ) -> dict[str, float]:
        """Forward + backward of one micro-batch, its loss scaled by `weight`; its stats, scaled alike."""
        p = self.cfg.ppo
        shard = self.dp.shard(rows)
        weight *= token_share(exp.rollout.loss_mask, rows, shard)  # x 1.0 for a single learner
        rows = shard
        # make_experience's forward over exactly these rows, or a fresh one
        out = (
            whole if whole is not None else self._forward(exp.rollout, rows, with_values=self.critic, with_entropy=True)
        )
        width = out.logprobs.shape[1]  # the whole R, or R' of a trimmed micro-batch
        mask = exp.mask[rows, :width]
        pg_loss, pg_stats = algo.policy_loss(
            out.logprobs, exp.old_logprobs[rows, :width], exp.advantages[rows, :width], mask, p.clip_range
        )
        entropy = algo.masked_mean(out.entropy, mask)
        # ent_coef 0: entropy is only a metric; keeping it out of the loss spares its (B, R, vocab) backward
        loss = pg_loss - p.ent_coef * entropy if p.ent_coef else pg_loss
        stats = {
            "policy/loss": float(pg_loss.detach()),
            "policy/clipfrac": float(pg_stats["clipfrac"]),
            "policy/approx_kl": float(pg_stats["approx_kl"]),
            "entropy/mean": float(entropy.detach()),
        }
        if self.kl_loss_coef:
            kl_term = algo.kl_loss(out.logprobs, exp.ref_logprobs[rows, :width], mask)
            loss = loss + self.kl_loss_coef * kl_term
            stats["kl/loss"] = float(kl_term.detach())
        if self.critic:
            v_loss, v_stats = algo.value_loss(
                out.values, exp.old_values[rows, :width], exp.returns[rows, :width], mask, p.clip_range_value
            )
            loss = loss + p.vf_coef * v_loss
            stats.update({"value/loss": float(v_loss.detach()), "value/clipfrac": float(v_stats["clipfrac"])})
        (loss * weight).backward()
        return {key: value * weight for key, value in stats.items()}


class TrunkCache:
    """One iteration's hidden states entering the first layer with LoRA (models.forward.trunk_hidden), kept on
    the CPU. A row's pass through the frozen layers below runs the first time a forward needs it (the old
    log-probs); its reference pass and every epoch's forward reuse it and run only the layers above. Rows
    are stored at the batch's full width; a trimmed part (ppo.micro_batch_tokens) reads its columns."""

    def __init__(self, model, depth: int, batch: Rollout, device: str):
        self.model, self.depth, self.batch, self.device = model, depth, batch, device
        self.hidden: torch.Tensor | None = None
        self.have = torch.zeros(len(batch), dtype=torch.bool)

    def states(self, rows: torch.Tensor, part: Rollout) -> tuple[int, torch.Tensor]:
        """(depth, the states of `rows` for `part`, on the device): what response_stats(trunk=) takes."""
        if len(missing := rows[~self.have[rows]]):
            full = self.batch.select(missing)
            ids, mask = full.input_ids.to(self.device), full.attention_mask.to(self.device)
            h = trunk_hidden(self.model, ids, mask, self.depth).cpu()
            if self.hidden is None:
                self.hidden = h.new_zeros(len(self.batch), *h.shape[1:])
            self.hidden[missing] = h
            self.have[missing] = True
        width = self.batch.prompt_ids.shape[1]
        start, stop = width - part.prompt_ids.shape[1], width + part.response_ids.shape[1]
        return self.depth, self.hidden[rows, start:stop].to(self.device)


def episode_metrics(episodes: list[Episode] | None) -> dict:
    """env/*: how multi-turn episodes went (nothing for single-turn rollouts)."""
    if not episodes:
        return {}
    n = len(episodes)
    out = {
        "env/turns_mean": sum(e.turns for e in episodes) / n,
        "env/tool_calls_mean": sum(e.tool_calls for e in episodes) / n,
        **{f"env/stop/{r}": sum(e.stop == r for e in episodes) / n for r in STOP_REASONS},
    }
    rewarded = [e.reward for e in episodes if e.reward is not None]
    if rewarded:
        out["env/reward_mean"] = sum(rewarded) / len(rewarded)
    return out


def _require_finite(what: str, value: torch.Tensor, iteration: int | None) -> None:
    if not bool(torch.isfinite(value).all()):
        where = f" at iteration {iteration}" if iteration is not None else ""
        raise NonFiniteError(f"non-finite {what}{where}: the batch was not applied to the adapter")
