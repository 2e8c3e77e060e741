"""Documentation of the typed config, generated from the dataclasses themselves so it cannot drift:
type and default from each field, the help line from the `# comment` block directly above it in
the source. Also the "did you mean" logic for unknown keys, including names other RLHF tools use.

Works on any tree of dataclasses (it does not import rlhf_ray.config.schema, which imports it)."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import textwrap
import tokenize
import types
import typing
from typing import Any, Literal

# Names other tools use (TRL PPO/GRPO configs, OpenRLHF flags, HF TrainingArguments) -> ours.
# A bare value is a field name looked up in the section the user wrote (or in every section).
ALIASES = {
    "learning_rate": "lr",
    "actor_learning_rate": "ppo.lr",
    "num_train_epochs": "epochs",
    "ppo_epochs": "ppo.epochs",
    "num_ppo_epochs": "ppo.epochs",
    "max_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "rollout_batch_size": "ppo.batch_size",
    "train_batch_size": "mini_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "cliprange": "clip_range",
    "eps_clip": "clip_range",
    "epsilon": "clip_range",
    "cliprange_value": "clip_range_value",
    "value_clip": "clip_range_value",
    "value_loss_coef": "vf_coef",
    "entropy_coef": "ent_coef",
    "init_kl_coef": "algo.kl_coef",
    "beta": "algo.kl_coef",
    "kl_penalty": "algo.kl_kind",
    "kl_estimator": "algo.kl_kind",
    "adap_kl_ctrl": "algo.kl_controller",
    "target": "algo.kl_target",
    "target_kl": "algo.kl_target",
    "horizon": "algo.kl_horizon",
    "lam": "algo.gae_lambda",
    "lambd": "algo.gae_lambda",
    "advantage_estimator": "algo.advantage",
    "num_generations": "algo.group_size",
    "n_samples_per_prompt": "algo.group_size",
    "num_return_sequences": "algo.group_size",
    "response_length": "generate.max_new_tokens",
    "max_completion_length": "generate.max_new_tokens",
    "generate_max_len": "generate.max_new_tokens",
    "total_episodes": "ppo.iterations",
    "num_episodes": "ppo.iterations",
    "max_steps": "ppo.iterations",
    "steps": "ppo.iterations",
    "lora_rank": "model.lora_r",
    "rank": "model.lora_r",
    "load_in_8bit": "model.quant",
    "load_in_4bit": "model.quant",
    "model_name_or_path": "model.policy",
    "pretrain": "model.policy",
    "sft_model_path": "model.policy",
    "reward_model_path": "reward.model",
    "reward_pretrain": "reward.model",
    "reward_model": "reward.model",
    "dataset_name": "data.dataset",
    "prompt_data": "data.dataset",
    "save_steps": "ppo.checkpoint_every",
    "save_freq": "ppo.checkpoint_every",
}


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, e.g. "ppo.lr"
    type: str  # as a user writes values: "int", "gae|grpo|rloo", "str|null"
    default: str  # as a user would write it on the command line
    help: str


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """{field: its help}: the `#` lines directly above the field (joined), else a trailing comment."""
    source = textwrap.dedent(inspect.getsource(cls))
    above: dict[int, str] = {}
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            whole_line = not tok.line[: tok.start[1]].strip()
            (above if whole_line else trailing)[tok.start[0]] = text
    out = {}
    (class_node,) = ast.parse(source).body
    for node in class_node.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines, n = [], node.lineno - 1
            while n in above:
                lines.insert(0, above[n])
                n -= 1
            out[node.target.id] = " ".join(lines) or trailing.get(node.lineno, "")
    return out


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return "|".join("null" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def format_value(value: Any) -> str:
    """A value as it is written in a `key=value` override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(format_value, value))
    if dataclasses.is_dataclass(value):  # a list entry (reward.sources): the keys that differ from the defaults
        fields = dataclasses.fields(value)  # the first one (kind) always: it says what the entry is
        changed = [f for i, f in enumerate(fields) if i == 0 or getattr(value, f.name) != _default(f)]
        return "{" + ", ".join(f"{f.name}: {format_value(getattr(value, f.name))}" for f in changed) + "}"
    return str(value)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def sections(root: type) -> dict[str, tuple[type, str]]:
    """{section name: (its dataclass, its help)} in declaration order."""
    hints, helps = typing.get_type_hints(root), field_comments(root)
    return {f.name: (hints[f.name], helps.get(f.name, "")) for f in dataclasses.fields(root)}


def key_docs(root: type, section: str) -> list[KeyDoc]:
    cls = sections(root)[section][0]
    hints, helps = typing.get_type_hints(cls), field_comments(cls)
    return [
        KeyDoc(f"{section}.{f.name}", type_name(hints[f.name]), format_value(_default(f)), helps.get(f.name, ""))
        for f in dataclasses.fields(cls)
    ]


def all_keys(root: type) -> list[str]:
    return [doc.key for name in sections(root) for doc in key_docs(root, name)]


def explain(root: type, wanted: list[str], current: Any = None, width: int = 100) -> str:
    """Every key of the wanted sections (or single `section.key`s): type, default, help. With
    `current` (a config instance), values that differ from the default are shown too."""
    blocks = []
    for want in wanted:
        section, _, only = want.partition(".")
        lines = [f"{section}: {sections(root)[section][1]}"]
        for doc in key_docs(root, section):
            if only and doc.key != want:
                continue
            now = format_value(getattr(getattr(current, section), doc.key.split(".")[1])) if current else doc.default
            shown = f"  {doc.key}: {doc.type} = {doc.default}" + (f"  (now {now})" if now != doc.default else "")
            lines.append(shown)
            lines.append(textwrap.fill(doc.help, width, initial_indent=" " * 6, subsequent_indent=" " * 6))
            lines += _entry_docs(root, section, doc.key, width)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _entry_docs(root: type, section: str, key: str, width: int) -> list[str]:
    """The keys of each entry of a list of mappings (e.g. reward.sources[].kind), indented under it."""
    tp = typing.get_type_hints(sections(root)[section][0])[key.split(".")[1]]
    item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
    if not dataclasses.is_dataclass(item):
        return []
    hints, helps, out = typing.get_type_hints(item), field_comments(item), []
    for f in dataclasses.fields(item):
        out.append(f"    {key}[].{f.name}: {type_name(hints[f.name])} = {format_value(_default(f))}")
        out.append(textwrap.fill(helps.get(f.name, ""), width, initial_indent=" " * 8, subsequent_indent=" " * 8))
    return out


def suggest(root: type, dotted: str) -> list[str]:
    """Keys a user probably meant by the unknown `dotted` (e.g. `lr`, `ppo.learning_rate`, `ppo.lrr`)."""
    keys = all_keys(root)
    section, _, name = dotted.rpartition(".")
    name = name.replace("-", "_")
    canonical = ALIASES.get(name.lower(), name)
    if f"{section}.{canonical}" in keys:  # another tool's name for a key of this section
        return [f"{section}.{canonical}"]
    # the alias' home, and the same name in other sections (`lr` -> reward.lr, ppo.lr, sft.lr)
    aliased = [canonical] if "." in canonical else [k for k in keys if k.rpartition(".")[2] == canonical]
    exact = [k for k in keys if k.rpartition(".")[2] == name]
    found = [k for k in dict.fromkeys(aliased + exact if section else exact + aliased) if k in keys]
    if found:
        return found
    if section:
        in_section = [k.rpartition(".")[2] for k in keys if k.startswith(section + ".")]
        close = difflib.get_close_matches(name, in_section, n=2, cutoff=0.6)
        if close:
            return [f"{section}.{c}" for c in close]
    leaves = difflib.get_close_matches(name, list({k.rpartition(".")[2] for k in keys}), n=2, cutoff=0.75)
    sect = difflib.get_close_matches(name, list(sections(root)), n=1, cutoff=0.6) if not section else []
    return (sect + [k for k in keys if k.rpartition(".")[2] in leaves])[:4]


def one_of(options: list[str]) -> str:
    """ "a", "a or b", "a, b or c"."""
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
