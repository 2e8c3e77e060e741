"""What a run directory says about how it was made: run_info.json (command line, package versions,
machine, git commit, the models each reference resolved to) and console.log (everything the run
printed, written while the terminal still shows it)."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import traceback
from pathlib import Path

from rlhf_ray.store.checkpoint import atomic_write
from rlhf_ray.store.refs import is_asset_name, portable_ref

RUN_INFO = "run_info.json"
CONSOLE_LOG = "console.log"
PACKAGES = ("rlhf_ray", "torch", "transformers", "peft", "bitsandbytes", "ray", "datasets", "pyarrow")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict:
    info = {"hostname": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count()}
    with contextlib.suppress(ValueError, OSError, AttributeError):
        info["ram_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    import torch

    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def git_commit() -> str:
    """The commit of the checkout rlhf_ray is imported from (+ "-dirty" with local changes), or
    "unknown" for an installed package."""
    source = Path(__file__).resolve().parent
    try:
        run = dict(cwd=source, capture_output=True, text=True, timeout=10, check=True)
        top = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], **run).stdout.strip())
        if not (top / "rlhf_ray" / "__init__.py").exists():
            return "unknown"  # some other repository that happens to contain site-packages
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def collect(args: list[str]) -> dict:
    """Everything known before the stage starts. `args`: what the CLI parsed (sys.argv for a job
    entrypoint differs: jobs/ppo.py prepends the subcommand)."""
    return {
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": {
            "argv": sys.argv,
            "args": args,
            "cwd": os.getcwd(),
            "rlhf_ray": str(Path(__file__).resolve().parent),
        },
        "environment": {k: os.environ[k] for k in ("RLHF_RAY_CACHE", "RAY_ADDRESS", "RAY_JOB_ID") if k in os.environ},
        "versions": versions(),
        "machine": machine(),
        "git_commit": git_commit(),
    }


def write_run_info(run_dir: Path, info: dict) -> None:
    """A resumed run keeps the earlier invocations' records under "previous"."""
    path = run_dir / RUN_INFO
    if path.exists():
        old = json.loads(path.read_text())
        info = {**info, "previous": [*old.pop("previous", []), old]}
    atomic_write(path, json.dumps(info, indent=2).encode())


def model_reference(configured: str | None, resolved: str) -> dict:
    """How a model reference resolved; a content-addressed stage output also names its stage
    directory, the hash in that name and the stage's summary (e.g. held-out accuracy)."""
    ref = {"configured": configured, "resolved": resolved}
    stage_dir = Path(resolved).parent
    if Path(resolved).is_dir() and (stage_dir / "DONE.json").exists():  # not for a hub id
        summary = json.loads((stage_dir / "DONE.json").read_text())
        ref.update(stage_dir=str(stage_dir), stage_hash=stage_dir.name.rpartition("-")[2], stage_summary=summary)
    return ref


def record_models(run_dir: Path, models: dict[str, dict]) -> None:
    """Add the resolved model references to run_info.json (created if the CLI did not write one)."""
    path = run_dir / RUN_INFO
    info = json.loads(path.read_text()) if path.exists() else collect(sys.argv[1:])
    info["models"] = {**info.get("models", {}), **models}
    atomic_write(path, json.dumps(info, indent=2).encode())


class _Tee:
    """A text stream that writes to the terminal stream and to the console log. In the file, a
    line redrawn with carriage returns (progress bars) keeps only its final state."""

    def __init__(self, stream, log: "ConsoleLog"):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.feed(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ... of the terminal stream
        return getattr(self.stream, name)


class ConsoleLog(contextlib.AbstractContextManager):
    """Tee sys.stdout, sys.stderr and logging handlers that write to them into `path` (appending:
    a resumed run adds to the same log). Ray prints actor output through sys.stdout/stderr of the
    driver, so it lands here too, also under `ray job submit`."""

    def __init__(self, path: Path):
        self.path, self.pending = path, ""

    def feed(self, text: str) -> None:
        if self.file.closed:  # a thread (Ray's log printer) that picked up the tee just before __exit__
            return
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            redraws = [part for part in line.split("\r") if part.strip()]
            self.file.write((redraws[-1] if redraws else "") + "\n")

    def __enter__(self) -> "ConsoleLog":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a", buffering=1)
        self.saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, self), _Tee(sys.stderr, self)
        tees = dict(zip(self.saved, (sys.stdout, sys.stderr)))
        self.handlers = [(h, h.stream) for h in _stream_handlers() if h.stream in tees]
        for handler, stream in self.handlers:
            handler.setStream(tees[stream])
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for handler, stream in self.handlers:
            handler.setStream(stream)
        sys.stdout, sys.stderr = self.saved
        if self.pending:
            self.feed("\n")
        if exc_type is not None and not issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            self.file.write("".join(traceback.format_exception(exc_type, exc, tb)))  # the terminal gets it next
        self.file.close()


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [
        logging.getLogger(),
        *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)),
    ]
    return [
        h
        for lg in loggers
        for h in lg.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


# Config sections that define what an adapter of each stage is.
CARD_SECTIONS = {"ppo": ("model", "data", "generate", "reward", "algo", "ppo"), "sft": ("model", "sft")}


def model_card(cfg, stage: str, figures: dict) -> str:
    """README.md of an exported adapter: its base (as the user named it), how to load it, the
    recipe (the config sections that shaped it) and its final figures."""
    import yaml

    base = portable_ref(cfg.model.policy)
    elsewhere = (
        f"`{base}` is an rlhf_ray embedded asset: `load_adapter_model` converts or builds it in the "
        "local cache (`RLHF_RAY_CACHE`) on first use."
        if is_asset_name(base)
        else f'Plain peft works too: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), '
        '"THIS_DIR")`.'
    )
    d = cfg.to_dict()
    recipe = yaml.safe_dump(
        {"run": {"seed": d["run"]["seed"]}, **{s: d[s] for s in CARD_SECTIONS[stage]}}, sort_keys=False
    )
    rows = (
        "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in figures.items())
        or "| (none recorded) | |"
    )
    return f"""---
base_model: {base}
library_name: peft
tags: [rlhf_ray, lora, {stage}]
---
# LoRA adapter ({stage}) for `{base}`

Trained with rlhf_ray's `{stage}` stage (rlhf_ray {versions()["rlhf_ray"]}, commit {git_commit()}).
The base model is frozen (loaded `{cfg.model.quant}`); this directory holds the LoRA adapter
(`adapter_model.safetensors`, `adapter_config.json`) and the tokenizer.

## Load it

```python
from transformers import AutoTokenizer
from rlhf_ray.models.adapter import load_adapter_model

model = load_adapter_model("THIS_DIR")  # finds `{base}` by name, on any machine
tokenizer = AutoTokenizer.from_pretrained("THIS_DIR")
```

{elsewhere}

## Final figures

| metric | value |
|---|---|
{rows}

## Recipe

```yaml
{recipe}```
"""
