"""Turns as tokens: the first prompt rendered by the chat template, then each observation as the
template's delta for the new messages, appended after the policy's ids exactly as sampled.

A template must be prefix-preserving: rendering a conversation with one more turn only appends
text. One that rewrites earlier turns (e.g. drops `<think>` blocks of past assistant messages) would
make the ids the policy saw differ from what a re-render gives; such a template is refused at start.

After an action, the template closes the assistant message (SmolLM2: `<|im_end|>\\n`). A turn that
ended with EOS already holds the closing's first token, as sampled; the rest of the closing and the
new messages' header and text are the observation's tokens (never trained on). A turn cut at its
token limit gets the whole closing as observation tokens."""

from __future__ import annotations

import inspect

from rlhf_ray.errors import UserError

PROBE = "Q7xZ"  # content no template rewrites, to find where a message's content sits


class TurnRenderer:
    def __init__(self, tokenizer, tools: list | None = None):
        """tools: the tool functions, passed to the template where it renders tools natively."""
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "the policy")
            raise UserError(
                f"environments need a chat model: the tokenizer of {name} has no chat template "
                "(use e.g. model.policy=smollm2-135m-instruct)"
            )
        self.tokenizer = tokenizer
        self.native_tools = bool(tools) and self._renders_tools(tools)
        self.tools = tools if self.native_tools else None
        self.tool_role = "tool" if self._renders_role("tool") else "user"
        self._check_prefix_preserving()
        rendered = self.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": PROBE}])
        self.closing = rendered[rendered.rindex(PROBE) + len(PROBE) :]  # what follows an assistant's content
        self.eos_text = tokenizer.decode([tokenizer.eos_token_id]) if tokenizer.eos_token_id is not None else ""

    def render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        kwargs = {"tools": self.tools} if self.tools else {}
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False, **kwargs
        )

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The episode's first context: the prompt messages and the first observation, then the
        assistant header (a rendered template holds its own special tokens: none are added)."""
        return self.encode(self.render(messages, generation_prompt=True))

    def observation_ids(self, history: list[dict], ended_with_eos: bool, new: list[dict]) -> list[int]:
        """The tokens between the policy's last action (the final message of `history`) and its next
        turn: the rest of the assistant message's closing, then `new` rendered, then the header."""
        before = self.render(history)
        after = self.render(history + [self._as_role(m) for m in new], generation_prompt=True)
        if not after.startswith(before):  # checked at start on a probe; a message can still break it
            raise UserError("the chat template rewrote earlier turns of an episode: it is not prefix-preserving")
        closing = self.closing
        if ended_with_eos and self.eos_text and closing.startswith(self.eos_text):
            closing = closing[len(self.eos_text) :]  # the sampled EOS is that token
        return self.encode(closing + after[len(before) :])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _as_role(self, message: dict) -> dict:
        role = message.get("role", "user")
        return {**message, "role": self.tool_role if role == "tool" else role}

    def _renders_role(self, role: str) -> bool:
        try:
            text = self.render([{"role": "user", "content": "hi"}, {"role": role, "content": PROBE}])
        except Exception:  # noqa: BLE001 - a template that raises on a role does not render it
            return False
        return PROBE in text

    def _renders_tools(self, tools: list) -> bool:
        """Whether the template itself describes tools (its text changes when given some)."""
        messages = [{"role": "user", "content": "hi"}]
        plain = self.tokenizer.apply_chat_template(messages, tokenize=False)
        try:
            with_tools = self.tokenizer.apply_chat_template(messages, tokenize=False, tools=tools)
        except Exception:  # noqa: BLE001 - transformers could not describe a tool: use the text protocol
            return False
        return with_tools != plain and any(inspect.isfunction(t) for t in tools)

    def _check_prefix_preserving(self) -> None:
        turns = [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "<think>b</think>c"},
            {"role": "user", "content": "d"},
            {"role": "assistant", "content": "e"},
        ]
        pairs = [  # (a conversation, the same with one more turn)
            (self.render(turns[:2]), self.render(turns[:3], generation_prompt=True)),
            (self.render(turns[:3], generation_prompt=True), self.render(turns)),
        ]
        for shorter, longer in pairs:
            if not longer.startswith(shorter):
                name = getattr(self.tokenizer, "name_or_path", "the policy")
                raise UserError(
                    f"the chat template of {name} rewrites earlier turns when a turn is added (not "
                    "prefix-preserving): the tokens the policy saw could not be kept; use a template that only appends"
                )
