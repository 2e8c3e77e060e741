"""Prompts as users give them (a string, or a list of {"role", "content"} messages) and what the
policy reads: the tokenizer's chat template applied where `data.chat_template` says so.

data.chat_template: auto -> a message list is rendered with the template, a string is used as is;
true -> a string is also wrapped as one user message and rendered; false -> never rendered, and a
message list is refused (joining its contents would drop the roles the policy was tuned on)."""

from __future__ import annotations

from typing import Any, Literal

from rlhf_ray.errors import UserError

ChatMode = Literal["auto", True, False]
ROLES = ("system", "user", "assistant", "tool")


def normalize(value: Any, where: str) -> str | list[dict[str, Any]]:
    """The prompt of one row as a string or a list of messages; anything else is a UserError.
    `where` names the row for the message (e.g. "row 12 of data.jsonl, column 'prompt'")."""
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)) or not value:
        kind = "an empty list" if isinstance(value, (list, tuple)) else f"{type(value).__name__} {value!r}"[:80]
        raise UserError(f'{where} holds {kind}: a prompt must be a string or a list of {{"role", "content"}} messages')
    messages = []
    for i, message in enumerate(value):
        ok = (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        )
        if not ok:
            raise UserError(
                f"{where}: message {i} is {message!r}"[:200] + ': each message must be {"role": str, "content": str}'
            )
        # Arrow gives every message the union of all rows' message keys; a missing one comes back None
        messages.append({k: v for k, v in message.items() if v is not None})
    return messages


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def check_mode(mode: ChatMode, tokenizer, any_messages: bool, source: str) -> None:
    """Refuse combinations that cannot render, before any prompt is drawn."""
    name = getattr(tokenizer, "name_or_path", "the policy")
    if mode is True and not has_template(tokenizer):
        raise UserError(
            f"data.chat_template=true but the tokenizer of {name} has no chat template: "
            "set data.chat_template=auto (plain prompts) or use a chat model"
        )
    if any_messages and mode is False:
        raise UserError(
            f"{source} holds message-list prompts but data.chat_template=false: "
            "set data.chat_template=auto to render them, or give plain-string prompts"
        )
    if any_messages and not has_template(tokenizer):
        raise UserError(
            f"{source} holds message-list prompts but the tokenizer of {name} has no chat template: "
            "use a chat model (e.g. model.policy=smollm2-135m-instruct) or give plain-string prompts"
        )


def render(prompt: str | list[dict[str, Any]], tokenizer, mode: ChatMode) -> str:
    """The text the policy reads. A rendered template already holds every special token it needs,
    so generation tokenizes it with add_special_tokens=False (models.generate.encode_prompts): no second BOS."""
    if isinstance(prompt, str):
        if mode is not True:
            return prompt
        prompt = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
