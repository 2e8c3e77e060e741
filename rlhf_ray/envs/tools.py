"""Tools: plain Python functions the policy may call during its turn (env.tools).

Each tool needs a docstring and a type hint on every argument: they are what the policy is told.
A call is written in the turn as

    <tool_call>calculator(expression="12 * 34")</tool_call>

a Python call of literal arguments, or Hermes-style JSON {"name": ..., "arguments": {...}} between
the same tags (what chat templates with a native tool format teach their models). Every call in a
turn runs, in order; each result (or its error, as text) comes back as one `tool` message, which is
the next observation. A turn without a call ends the episode: it is the answer. An unknown tool, a
call that does not parse or a tool that raises is an observation the policy can learn from, never a
crash. The text protocol above is what the policy is told unless the tokenizer's chat template
renders tools itself (`tools=` of apply_chat_template), in which case the template describes them."""

from __future__ import annotations

import ast
import inspect
import json
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

from rlhf_ray.envs.protocol import StepResult
from rlhf_ray.errors import ConfigError

CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
MAX_CALLS_PER_TURN = 4  # calls past this in one turn are answered with an error, not run
MAX_RESULT_CHARS = 2000  # a result longer than this is cut (the token cap then applies too)


@dataclass
class Tool:
    name: str
    fn: Callable
    description: str  # the docstring's first paragraph
    signature: str  # name(arg: type, ...)


def make_tool(fn: Callable, key: str) -> Tool:
    """A Tool from a function; ConfigError naming the key when it lacks a docstring or a type hint."""
    name = getattr(fn, "__name__", None)
    if not callable(fn) or not name:
        raise ConfigError(key, f"{fn!r} is not a function", "name a function with a docstring and typed arguments")
    doc = inspect.getdoc(fn)
    if not doc:
        raise ConfigError(key, f"tool {name} has no docstring", "say in a docstring what it does: the policy reads it")
    params = inspect.signature(fn).parameters
    hints = typing.get_type_hints(fn)
    untyped = [p for p in params if p not in hints and params[p].kind not in (params[p].VAR_POSITIONAL,)]
    if untyped:
        raise ConfigError(
            key, f"tool {name}: argument(s) {', '.join(untyped)} have no type hint", "annotate every argument"
        )
    args = ", ".join(f"{p}: {_type_name(hints[p])}" for p in params)
    return Tool(name, fn, doc.split("\n\n")[0].strip(), f"{name}({args})")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def describe(tools: list[Tool]) -> str:
    """The system text that teaches the text protocol (templates without a native tool format): short,
    since every token of it is in every forward pass of every episode."""
    lines = "\n".join(f"- {t.signature}: {t.description}" for t in tools)
    return (
        f"Tools:\n{lines}\nCall one as <tool_call>{tools[0].name}(...)</tool_call>; its result comes back. "
        "A reply without a call is your answer."
    )


def parse_calls(text: str) -> list[tuple[str, dict, str | None]]:
    """The calls written in one turn: (name, keyword arguments, error or None) each, in order."""
    calls = []
    for body in (m.strip() for m in CALL.findall(text)):
        try:
            calls.append((*_parse_one(body), None))
        except ValueError as exc:
            calls.append(("", {}, f"could not read the tool call {body[:80]!r}: {exc}"))
    return calls


def _parse_one(body: str) -> tuple[str, dict]:
    if body.startswith("{"):  # Hermes-style JSON
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON ({exc.msg})") from None
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError('JSON calls look like {"name": "tool", "arguments": {...}}')
        args = data.get("arguments", {})
        if isinstance(args, str):
            args = json.loads(args or "{}")
        return data["name"], dict(args)
    try:
        node = ast.parse(body, mode="eval").body
    except SyntaxError:
        raise ValueError("write name(argument=value, ...)") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError("write name(argument=value, ...)")
    try:
        positional = [ast.literal_eval(a) for a in node.args]
        keywords = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
    except ValueError:
        raise ValueError("arguments must be literals (numbers, strings, lists)") from None
    return node.func.id, {"__args__": positional, **keywords}


class ToolBox:
    """Runs the calls of one turn against the configured tools."""

    def __init__(self, tools: list[Tool]):
        self.tools = {t.name: t for t in tools}

    def answer(self, action: str) -> tuple[list[dict], int] | None:
        """The tool messages answering `action`, and how many calls it made; None: no call (an answer)."""
        calls = parse_calls(action)
        if not calls:
            return None
        messages = []
        for i, (name, args, error) in enumerate(calls):
            if i >= MAX_CALLS_PER_TURN:
                error = f"at most {MAX_CALLS_PER_TURN} tool calls per turn"
            messages.append({"role": "tool", "content": error and f"error: {error}" or self._run(name, args)})
        return messages, len(calls)

    def _run(self, name: str, args: dict) -> str:
        tool = self.tools.get(name)
        if tool is None:
            return f"error: unknown tool {name!r}; tools: {', '.join(self.tools)}"
        positional = args.pop("__args__", [])
        try:
            result = tool.fn(*positional, **args)
        except Exception as exc:  # noqa: BLE001 - the tool's error is the policy's observation
            return f"error: {type(exc).__name__}: {exc}"[:MAX_RESULT_CHARS]
        text = result if isinstance(result, str) else json.dumps(result, default=str)
        return text[:MAX_RESULT_CHARS]


class ToolEnv:
    """A tool environment: tool calls are answered by the tools; a turn without one ends the episode,
    or, with `inner` (env.factory beside env.tools), goes to that environment's step."""

    def __init__(self, box: ToolBox, inner: Any = None):
        self.box, self.inner = box, inner
        self.tool_calls = 0

    def reset(self, **kwargs):
        return None if self.inner is None else self.inner.reset(**kwargs)

    def step(self, action: str):
        answered = self.box.answer(action)
        if answered is not None:
            messages, calls = answered
            self.tool_calls += calls
            return StepResult(messages, None, False)
        if self.inner is None:
            return StepResult([], None, True)
        return self.inner.step(action)

    def get_reward(self):
        get = getattr(self.inner, "get_reward", None)
        return get() if callable(get) else None

    def close(self):
        close = getattr(self.inner, "close", None)  # an OpenEnv session, say
        return close() if callable(close) else None
