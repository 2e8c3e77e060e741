"""Reading what a PPO run left behind: its config, its newest checkpoint, the trained adapter.

Used by `rlhf-ray eval`, `generate` and `report`, which take a run directory or a checkpoint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rlhf_ray.actors.common import init_process, load_policy
from rlhf_ray.batch import AdapterPayload
from rlhf_ray.config.load import load_config
from rlhf_ray.config.schema import Config
from rlhf_ray.errors import UserError
from rlhf_ray.models.adapter import import_adapter
from rlhf_ray.models.assets import resolve_model
from rlhf_ray.models.policy import load_tokenizer, ppo_numerics
from rlhf_ray.store.checkpoint import MANIFEST, files_problem, read_dir, read_latest


@dataclass
class TrainedAdapter:
    """Where a trained adapter lives and how to read it."""

    path: Path  # policy.safetensors (LoRA + value head, this project's format) or a peft adapter dir
    run_dir: Path | None  # the run it came from (holds config.yaml), when known
    sha256: str | None  # expected content hash, when the checkpoint recorded one
    data: bytes | None = None  # the adapter file, read when it was found (a live run may prune it later)

    def payload(self):
        """An AdapterPayload import_adapter accepts (verified against the recorded hash, if any)."""

        data = self.data
        if data is None:
            file = self.path if self.path.is_file() else self.path / "adapter_model.safetensors"
            data = file.read_bytes()
        return AdapterPayload(version=-1, sha256=self.sha256 or hashlib.sha256(data).hexdigest(), data=data)


def find_adapter(path: str | Path) -> TrainedAdapter:
    """A run dir (its newest intact checkpoint), a checkpoint dir, or a peft adapter dir.

    A checkpoint is read into memory here, checked against its manifest: `eval`, `generate` and
    `report` may read a run that is still writing, whose older checkpoints it prunes
    (ppo.keep_checkpoints); one pruned under the reader is passed over for the newest intact one."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such run, checkpoint or adapter directory")
    if (path / "checkpoints").is_dir():
        found = read_latest(path)
        if found is None:
            raise UserError(f"{path} has no complete checkpoint yet (checkpoints/LATEST is missing)")
        return _from_checkpoint(*found)
    if (path / "policy.safetensors").is_file():
        if (path / MANIFEST).is_file():  # a checkpoint: read whole and checked, as from its run dir
            try:
                files = read_dir(path)
            except (FileNotFoundError, NotADirectoryError):
                files = {}  # pruned while it was read
            if files_problem(files.get) is None:
                return _from_checkpoint(path, files)
            raise UserError(
                f"{path} is incomplete or was removed while it was read (a live run prunes old checkpoints): "
                f"pass its run directory, {path.parent.parent}, to take the newest intact one"
            )
        state = path / "learner_state.json"
        sha = json.loads(state.read_text()).get("adapter_sha256") if state.is_file() else None
        return TrainedAdapter(path / "policy.safetensors", _run_of(path), sha)
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").is_file() and (candidate / "adapter_model.safetensors").is_file():
            return TrainedAdapter(candidate, _run_of(candidate), None)
    raise UserError(f"{path} holds no adapter: pass a run directory, a checkpoints/iter-N directory or a peft adapter")


def _from_checkpoint(path: Path, files: dict[str, bytes]) -> TrainedAdapter:
    sha = json.loads(files["learner_state.json"]).get("adapter_sha256")
    return TrainedAdapter(path / "policy.safetensors", _run_of(path), sha, data=files["policy.safetensors"])


def _run_of(path: Path) -> Path | None:
    for parent in [path, *path.parents][:4]:
        if (parent / "config.yaml").is_file():
            return parent
    return None


def run_config(run_dir: Path | None, config: str | None, overrides: list[str]) -> Config:
    """--config if given, else the run's saved config.yaml, else the defaults; overrides on top."""
    if config is None and run_dir is not None and (run_dir / "config.yaml").is_file():
        config = str(run_dir / "config.yaml")
    return load_config(config, overrides)


def load_trained_policy(cfg: Config, adapter: TrainedAdapter | None, device: str = "cpu"):
    """(policy, tokenizer): the run's base + LoRA in PPO numerics, with the trained adapter loaded.

    Without an adapter the fresh LoRA has B = 0, so the model is the base policy itself."""
    import torch

    init_process(cfg)
    policy_path = resolve_model(cfg.model.policy, cfg.cache_dir())
    torch.manual_seed(cfg.run.seed)
    model = ppo_numerics(load_policy(cfg, policy_path, device, gradient_checkpointing=False))
    if adapter is not None:
        import_adapter(model, adapter.payload())
    model.requires_grad_(False)
    return model, load_tokenizer(policy_path)
