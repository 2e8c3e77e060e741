"""Learner role: experience (old/ref log-probs, values, KL-shaped rewards, advantages) and PPO epochs.

All math comes from rlhf_ray.algo; this class only moves tensors through the model and optimizer."""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_ray import algo
from rlhf_ray.actors.common import init_process, load_policy, role_device
from rlhf_ray.batch import AdapterPayload, Rollout
from rlhf_ray.config import Config
from rlhf_ray.models.adapter import export_adapter, import_adapter, save_adapter
from rlhf_ray.models.forward import response_stats
from rlhf_ray.models.policy import ValueHead, load_tokenizer, ppo_numerics, reference_mode


class StaleRolloutError(RuntimeError):
    """Rollouts sampled with an adapter other than the learner's current one."""


@dataclass
class Experience:
    rollout: Rollout
    old_logprobs: torch.Tensor  # (B, R)
    ref_logprobs: torch.Tensor  # (B, R)
    old_values: torch.Tensor | None  # (B, R); None without a critic
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor | None  # (B, R)
    kl: torch.Tensor  # (B, R) per-token KL estimate (masked)


def make_kl_controller(cfg: Config):
    a = cfg.algo
    if a.kl_controller == "adaptive":
        return algo.AdaptiveKLController(a.kl_coef, a.kl_target, a.kl_horizon)
    return algo.FixedKLController(a.kl_coef)


class Learner:
    def __init__(self, cfg: Config, policy_path: str, shared=None):
        """shared: a SharedPolicy (fused layout) to train instead of loading a base of our own."""
        init_process(cfg)
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
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=cfg.ppo.lr)
        self.kl_ctl = make_kl_controller(cfg)
        self.version = 0

    # ------------------------------------------------------------------ weight sync + checkpoint
    def adapter(self) -> AdapterPayload:
        return export_adapter(self.model, self.version, self.value_head)

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
        files = {"policy.safetensors": payload.data, "optimizer.pt": buf.getvalue(),
                 "learner_state.json": json.dumps(state).encode()}
        with tempfile.TemporaryDirectory() as tmp:  # peft layout too, for users: PeftModel.from_pretrained(ckpt/adapter)
            save_adapter(self.model, tmp)
            files.update({f"adapter/{p.name}": p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()})
        return files

    def restore(self, files: dict[str, bytes]) -> int:
        state = json.loads(files["learner_state.json"])
        import_adapter(self.model, AdapterPayload(state["version"], state["adapter_sha256"], files["policy.safetensors"]),
                       self.value_head)
        self.optimizer.load_state_dict(torch.load(io.BytesIO(files["optimizer.pt"]), weights_only=True))
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.version = state["version"]
        return self.version

    # ------------------------------------------------------------------ PPO iteration
    def learn(self, rollouts: list[Rollout], scores: list[torch.Tensor], iteration: int) -> tuple[dict, AdapterPayload]:
        batch = Rollout.concat(rollouts, self.tokenizer.pad_token_id)
        if batch.policy_version != self.version:
            raise StaleRolloutError(f"rollouts sampled with adapter v{batch.policy_version}, learner is at v{self.version}")
        torch.manual_seed(self.cfg.run.seed * 7_919 + iteration)  # minibatch order + dropout, reproducible on resume
        kl_coef = self.kl_ctl.value
        scores_t = torch.cat(scores).float()  # (B,)
        exp = self.make_experience(batch, scores_t, kl_coef)
        stats = self.update(exp)
        mask = batch.response_mask.float()
        kl_seq = (exp.kl * mask).sum(1).mean()  # summed over tokens, mean over samples
        self.kl_ctl.update(float(kl_seq), len(batch))
        self.version += 1
        payload = self.adapter()
        metrics = {
            "reward/mean": float(scores_t.mean()),
            "reward/std": float(scores_t.std()) if len(scores_t) > 1 else 0.0,
            "kl/mean": float(kl_seq),
            "kl/coef": kl_coef,
            "advantages/mean": float(algo.masked_mean(exp.advantages, mask)),
            "response/length_mean": float(mask.sum(1).mean()),
            "policy/version": self.version,
            "policy/adapter_sha256": payload.sha256,
            "sync/bytes": payload.nbytes,
            **stats,
        }
        return metrics, payload

    @torch.no_grad()
    def make_experience(self, batch: Rollout, scores: torch.Tensor, kl_coef: float) -> Experience:
        old, ref, values = [], [], []
        for rows in torch.arange(len(batch)).split(self.cfg.ppo.mini_batch_size):
            part = batch.select(rows)
            stats = self._forward(part, with_values=self.critic)
            old.append(stats.logprobs)
            values.append(stats.values)
            with reference_mode(self.model):  # the reference policy: same weights, adapter off
                ref.append(self._forward(part, with_values=False).logprobs)
        old_lp, ref_lp = torch.cat(old), torch.cat(ref)
        mask = batch.response_mask.to(self.device)
        a = self.cfg.algo
        if self.critic:
            old_values = torch.cat(values)
            rewards, kl = algo.shape_rewards(scores.to(self.device), old_lp, ref_lp, mask, kl_coef, a.kl_kind)
            adv, returns = algo.compute_gae(rewards, old_values, mask, a.gamma, a.gae_lambda)
            if self.cfg.ppo.whiten_advantages:
                adv = algo.masked_whiten(adv, mask)
            return Experience(batch, old_lp, ref_lp, old_values, adv, returns, kl)
        kl = algo.kl_penalty(old_lp, ref_lp, a.kl_kind) * mask
        seq_reward = scores.to(self.device) - kl_coef * kl.sum(1)  # KL folded into the sequence reward
        adv = algo.group_advantages(seq_reward, batch.group_size, a.advantage)[:, None] * mask
        return Experience(batch, old_lp, ref_lp, None, adv, None, kl)

    def _forward(self, part: Rollout, with_values: bool, with_entropy: bool = False):
        return response_stats(
            self.model, part.input_ids.to(self.device), part.attention_mask.to(self.device),
            part.prompt_ids.shape[1], chunk=self.cfg.model.logprob_chunk,
            value_head=self.value_head if with_values else None, with_entropy=with_entropy,
            entropy_grad=self.cfg.ppo.ent_coef > 0,  # a metric only at coefficient 0: no (B, C, V) graph
        )

    def update(self, exp: Experience) -> dict:
        """ppo.epochs passes over shuffled minibatches; grad accumulation over micro-batches."""
        p = self.cfg.ppo
        n = len(exp.rollout)
        micro = p.mini_batch_size // p.grad_accum
        totals: dict[str, float] = {}
        steps = 0
        trainable = [q for g in self.optimizer.param_groups for q in g["params"]]
        for _ in range(p.epochs):
            for mb in torch.randperm(n).split(p.mini_batch_size):
                self.optimizer.zero_grad(set_to_none=True)
                for rows in mb.split(micro):
                    for key, value in self._micro_step(exp, rows, p.grad_accum).items():
                        totals[key] = totals.get(key, 0.0) + value
                    steps += 1
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, p.max_grad_norm)
                totals["policy/grad_norm"] = totals.get("policy/grad_norm", 0.0) + float(grad_norm) * p.grad_accum
                self.optimizer.step()
        return {k: v / steps for k, v in totals.items()}

    def _micro_step(self, exp: Experience, rows: torch.Tensor, grad_accum: int) -> dict[str, float]:
        p = self.cfg.ppo
        part = exp.rollout.select(rows)
        mask = part.response_mask.to(self.device)
        out = self._forward(part, with_values=self.critic, with_entropy=True)
        pg_loss, pg_stats = algo.policy_loss(out.logprobs, exp.old_logprobs[rows], exp.advantages[rows], mask, p.clip_range)
        entropy = algo.masked_mean(out.entropy, mask)
        loss = pg_loss - p.ent_coef * entropy
        stats = {"policy/loss": float(pg_loss.detach()), "policy/clipfrac": float(pg_stats["clipfrac"]),
                 "policy/approx_kl": float(pg_stats["approx_kl"]), "entropy/mean": float(entropy.detach())}
        if self.critic:
            v_loss, v_stats = algo.value_loss(out.values, exp.old_values[rows], exp.returns[rows], mask, p.clip_range_value)
            loss = loss + p.vf_coef * v_loss
            stats.update({"value/loss": float(v_loss.detach()), "value/clipfrac": float(v_stats["clipfrac"])})
        (loss / grad_accum).backward()
        return stats
