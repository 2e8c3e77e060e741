"""Environments for one generator: what the driver ships (EnvSpec: file texts, names), what a
generator builds from it (EnvRunner: the factory, tools, chat rendering) and one call that turns a
shard of prompts into multi-turn rollouts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlhf_ray.batch import Prompt, Rollout
from rlhf_ray.config.schema import Config
from rlhf_ray.envs import episodes
from rlhf_ray.envs.chat import TurnRenderer
from rlhf_ray.envs.openenv import load_glue, openenv_factory
from rlhf_ray.envs.protocol import check_factory
from rlhf_ray.envs.tools import Tool, ToolBox, ToolEnv, describe, make_tool
from rlhf_ray.errors import UserError
from rlhf_ray.rewards.functions import FunctionRef, function_ref, load_function


@dataclass(frozen=True)
class EnvSpec:
    """What a generator needs to build the run's environments (crosses to it in its constructor args):
    a factory or tool given as a file travels as its text, as reward functions do."""

    kind: str  # python | openenv
    factory: FunctionRef | None = None
    tools: tuple[FunctionRef, ...] = ()
    url: str | None = None
    glue: FunctionRef | None = None  # openenv: the module with action()/observation(), as a FunctionRef


def env_spec(cfg: Config) -> EnvSpec | None:
    """Driver side: None for single-turn runs; reads the files (ConfigError if one does not exist)."""
    e = cfg.env
    if not e.enabled():
        return None
    factory = function_ref("env.factory", e.factory) if e.factory else None
    tools = tuple(function_ref(f"env.tools[{i}]", spec) for i, spec in enumerate(e.tools))
    glue = function_ref("env.glue", f"{e.glue}:glue") if e.glue else None  # the module; the name is unused
    return EnvSpec(e.kind, factory, tools, e.url, glue)


class EnvRunner:
    """The run's environment factory, tools and chat rendering, built once per generator."""

    def __init__(self, spec: EnvSpec, cfg: Config, tokenizer):
        cache = Path(cfg.cache_dir())
        self.cfg, self.tokenizer = cfg, tokenizer
        self.tools: list[Tool] = [make_tool(load_function(ref, cache), ref.key) for ref in spec.tools]
        self.make_env = self._factory(spec, cache)
        self.renderer = TurnRenderer(tokenizer, [t.fn for t in self.tools])
        self.name = spec.factory.spec if spec.factory else (spec.url or "env.tools")
        e, g = cfg.env, cfg.generate
        self.limits = episodes.Limits(e.max_turns, e.max_tokens, e.max_observation_tokens, e.step_timeout_s,
                                      g.max_new_tokens)  # fmt: skip

    def _factory(self, spec: EnvSpec, cache: Path) -> Callable:
        inner: Callable | None = None
        if spec.kind == "openenv":
            glue = load_glue(spec.glue, cache) if spec.glue is not None else None
            inner = openenv_factory(spec.url, glue, self.cfg.env.step_timeout_s)
        elif spec.factory is not None:
            inner = load_function(spec.factory, cache)
            check_factory(inner, "env.factory")
        if not self.tools:
            return inner
        box = ToolBox(self.tools)
        return lambda: ToolEnv(box, inner() if inner is not None else None)

    def messages(self, prompt: Prompt | str) -> list[dict]:
        """A prompt as the episode's first messages; with tools in the text protocol, a system message
        that describes them first (joined to the prompt's own system message if it has one)."""
        raw = prompt.raw if isinstance(prompt, Prompt) and prompt.raw is not None else getattr(prompt, "text", prompt)
        messages = [{"role": "user", "content": raw}] if isinstance(raw, str) else [dict(m) for m in raw]
        if self.tools and not self.renderer.native_tools:
            text = describe(self.tools)
            if messages and messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + text}
            else:
                messages.insert(0, {"role": "system", "content": text})
        return messages

    def run(
        self,
        prompts: list[Prompt] | list[str],
        group: int,
        seeds: list[int],
        sample_turn: episodes.SampleTurn,
        *,
        policy_version: int,
        temperature: float,
        with_ref: bool,
    ) -> Rollout:
        """`group` episodes per prompt (rows of one prompt contiguous), each prompt's from one seed:
        the members of a group start from the same state. Raises UserError if every episode failed."""
        expanded = [p for p in prompts for _ in range(group)]
        rows = [dict(p.columns) if isinstance(p, Prompt) else {} for p in expanded]
        states = episodes.start(
            self.make_env,
            [self.messages(p) for p in expanded],
            rows,
            [seeds[i // group] for i in range(len(expanded))],
            self.renderer,
            self.limits,
        )
        episodes.play(states, self.renderer, sample_turn, self.limits, self.tokenizer.eos_token_id)
        done = episodes.finish(states, self.limits.step_timeout_s)
        failed = [e for e in done if e.stop in ("env_error", "timeout")]
        if failed and len(failed) == len(done):
            raise UserError(
                f"every episode of the batch failed in the environment {self.name}: {failed[0].error} "
                "(fix the environment, or check that its server is up)"
            )
        return episodes.to_rollout(
            states, done, self.tokenizer, policy_version=policy_version, group_size=group,
            temperature=temperature, with_ref=with_ref,
        )  # fmt: skip
