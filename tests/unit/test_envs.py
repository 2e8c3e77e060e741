"""Multi-turn episodes: the ids stored are the ids sampled, observations are masked out, limits end
episodes with their stop reasons, and chat templates are checked before a run starts."""

from __future__ import annotations

import time

import pytest
import torch

from rlhf_ray.batch import Prompt
from rlhf_ray.config.schema import Config
from rlhf_ray.envs import episodes
from rlhf_ray.envs.chat import TurnRenderer
from rlhf_ray.envs.runner import EnvRunner, EnvSpec
from rlhf_ray.envs.tools import ToolBox, make_tool, parse_calls
from rlhf_ray.errors import ConfigError, UserError
from rlhf_ray.models.policy import load_tokenizer
from rlhf_ray.rewards.functions import FunctionRef


@pytest.fixture(scope="module")
def tok(smollm2):
    return load_tokenizer(smollm2)


class Echo:
    """Says which turn it is; done when the policy writes 'stop'; reward 1 per turn."""

    def reset(self, seed=None, start="go"):
        self.seed, self.n = seed, 0
        return f"{start} {seed}"

    def step(self, action):
        self.n += 1
        return f"turn {self.n}", 1.0, "stop" in action


def runner_for(tok, factory=None, tools=(), **env) -> EnvRunner:
    cfg = Config()
    for k, v in {"max_turns": 3, "max_tokens": 200, "step_timeout_s": 2.0, **env}.items():
        setattr(cfg.env, k, v)
    runner = EnvRunner.__new__(EnvRunner)  # the factory given as an object (no file to ship in a unit test)
    spec = EnvSpec("python", tools=tuple(FunctionRef(f"env.tools[{i}]", "", "t") for i in range(len(tools))))
    runner.cfg, runner.tokenizer, runner.name = cfg, tok, "test"
    runner.tools = [make_tool(fn, f"env.tools[{i}]") for i, fn in enumerate(tools)]
    runner.make_env = runner._factory(spec, cfg.cache_dir()) if tools and factory is None else factory
    if tools and factory is not None:
        from rlhf_ray.envs.tools import ToolEnv

        box = ToolBox(runner.tools)
        runner.make_env = lambda: ToolEnv(box, factory())
    runner.renderer = TurnRenderer(tok, [t.fn for t in runner.tools])
    e = cfg.env
    runner.limits = episodes.Limits(e.max_turns, e.max_tokens, e.max_observation_tokens, e.step_timeout_s, 32)
    return runner


def scripted(turns: list[list[list[int]]]):
    """A policy stub: turn t gives row i the ids turns[t][i] (whatever their text), ref log-prob -(id)."""
    calls = []

    def sample_turn(contexts, max_new, turn):
        calls.append([list(c) for c in contexts])
        acts = [list(turns[turn][i % len(turns[turn])])[:max_new] for i in range(len(contexts))]
        return acts, [[-float(t) for t in a] for a in acts]

    return sample_turn, calls


def test_stored_ids_are_the_sampled_ids_over_two_turns(tok):
    eos = tok.eos_token_id
    # non-canonical: "hello" spelled as single characters, which the tokenizer would never produce
    odd = [tok.convert_tokens_to_ids(c) for c in "hello"]
    assert tok("hello", add_special_tokens=False)["input_ids"] != odd
    turn0 = [odd + [eos], odd[:3]]
    turn1 = [tok.encode("stop", add_special_tokens=False) + [eos], odd[::-1] + [eos]]
    sample_turn, calls = scripted([turn0, turn1])
    runner = runner_for(tok, Echo, max_turns=2)
    rollout = runner.run([Prompt("hi"), Prompt("yo")], 1, [5, 6], sample_turn,
                         policy_version=3, temperature=0.7, with_ref=True)  # fmt: skip
    for i in range(2):
        n = int(rollout.response_mask[i].sum())
        ids = rollout.response_ids[i, :n].tolist()
        act = rollout.action_mask[i, :n].bool()
        sampled = [t for t, a in zip(ids, act.tolist()) if a]
        assert sampled == turn0[i] + turn1[i]  # exactly the sampled ids, in order, none re-encoded
        assert ids[: len(turn0[i])] == turn0[i]
        # the second turn's context was the first context + turn 0 + the observation, as stored
        assert (
            calls[1][i]
            == rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist()
            + ids[: len(calls[1][i]) - int(rollout.prompt_mask[i].sum())]
        )  # noqa: E501
        ref = rollout.ref_logprobs[i, :n]
        assert torch.equal(ref[act], -torch.tensor(sampled, dtype=torch.float32))
        assert (ref[~act] == 0).all()
        assert rollout.response_ids.shape == rollout.action_mask.shape == rollout.ref_logprobs.shape
    ep = rollout.episodes
    assert [e.stop for e in ep] == ["done", "max_turns"]
    assert [e.turns for e in ep] == [2, 2] and [e.reward for e in ep] == [2.0, 2.0]
    assert ep[0].messages[1] == {"role": "user", "content": "turn 1"}
    assert int(rollout.loss_mask.sum()) == sum(len(a) + len(b) for a, b in zip(turn0, turn1))


def test_observation_tokens_are_the_templates_delta(tok):
    eos = tok.eos_token_id
    sample_turn, _ = scripted([[tok.encode("ok", add_special_tokens=False) + [eos]], [[eos]]])
    rollout = runner_for(tok, Echo, max_turns=2).run([Prompt("hi")], 1, [1], sample_turn,
                                                     policy_version=0, temperature=1.0, with_ref=False)  # fmt: skip
    n = int(rollout.response_mask[0].sum())
    text = tok.decode(torch.cat([rollout.prompt_ids[0][rollout.prompt_mask[0].bool()], rollout.response_ids[0, :n]]))
    messages = [{"role": "user", "content": "hi"}, {"role": "user", "content": "go 1"},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "turn 1"},
                {"role": "assistant", "content": ""}]  # fmt: skip
    # the text the template renders, up to its closing newline after the episode's last EOS
    assert text + "\n" == tok.apply_chat_template(messages, tokenize=False)
    assert rollout.ref_logprobs is None


def test_limits_and_stop_reasons(tok):
    eos = tok.eos_token_id
    word = tok.encode(" word", add_special_tokens=False)

    class Never(Echo):
        def step(self, action):
            return "x", None, False

    class Huge(Echo):
        def step(self, action):
            return "big " * 500, 0.0, False

    class Slow(Echo):
        def step(self, action):
            time.sleep(30)

    class Broken(Echo):
        def step(self, action):
            raise RuntimeError("boom")

    forever = scripted([[word * 3 + [eos]]] * 10)[0]
    out = runner_for(tok, Never, max_turns=4).run([Prompt("a")], 1, [0], forever, policy_version=0,
                                                  temperature=1.0, with_ref=False)  # fmt: skip
    assert out.episodes[0].stop == "max_turns" and out.episodes[0].turns == 4
    out = runner_for(tok, Never, max_turns=50, max_tokens=30).run([Prompt("a")], 1, [0], forever, policy_version=0,
                                                                  temperature=1.0, with_ref=False)  # fmt: skip
    assert out.episodes[0].stop == "max_tokens" and int(out.response_mask.sum()) <= 30
    out = runner_for(tok, Huge, max_turns=2, max_observation_tokens=8).run(
        [Prompt("a")], 1, [0], forever, policy_version=0, temperature=1.0, with_ref=True)  # fmt: skip
    n = int(out.response_mask[0].sum())
    observed = n - int(out.action_mask[0].sum())
    assert observed < 20 and out.episodes[0].messages[1]["content"].count("big") <= 8
    assert out.action_mask.shape == out.response_ids.shape == out.ref_logprobs.shape
    t0 = time.monotonic()
    slow = iter([Slow, Never])
    runner = runner_for(tok, lambda: next(slow)(), step_timeout_s=0.5, max_turns=2)
    out = runner.run([Prompt("a"), Prompt("b")], 1, [0, 1], forever, policy_version=0, temperature=1.0, with_ref=False)
    assert [e.stop for e in out.episodes] == ["timeout", "max_turns"] and time.monotonic() - t0 < 5
    mixed = iter([Broken, Never])
    runner = runner_for(tok, lambda: next(mixed)(), max_turns=2)
    out = runner.run([Prompt("a"), Prompt("b")], 1, [0, 1], forever, policy_version=0, temperature=1.0, with_ref=False)
    assert out.episodes[0].stop == "env_error" and "boom" in out.episodes[0].error
    assert out.episodes[1].stop == "max_turns"
    with pytest.raises(UserError, match="every episode of the batch failed"):
        runner_for(tok, Broken).run([Prompt("a")], 1, [0], forever, policy_version=0, temperature=1.0, with_ref=False)


def test_group_members_start_from_the_same_state(tok):
    eos = tok.eos_token_id
    sample_turn, _ = scripted([[[eos]] * 6])
    out = runner_for(tok, Echo, max_turns=1).run([Prompt("a"), Prompt("b")], 3, [11, 22], sample_turn,
                                                 policy_version=0, temperature=1.0, with_ref=False)  # fmt: skip
    firsts = [e for e in out.prompts]
    assert firsts[0] == firsts[1] == firsts[2] and "go 11" in firsts[0]
    assert firsts[3] == firsts[4] == firsts[5] and "go 22" in firsts[3]
    assert out.group_size == 3


def test_a_template_that_rewrites_earlier_turns_is_refused(tok):
    class Rewriting:
        name_or_path = "rewriter"
        eos_token_id = tok.eos_token_id
        chat_template = "x"

        def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False, **kw):
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
            body = "".join(
                f"<{m['role']}>{m['content'] if i == last or m['role'] != 'assistant' else ''}"
                for i, m in enumerate(messages)
            )  # drops the content of every assistant turn but the last, as <think>-stripping templates do
            return body + ("<assistant>" if add_generation_prompt else "")

    with pytest.raises(UserError, match="not prefix-preserving"):
        TurnRenderer(Rewriting())


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as 12 * 34.

    Args:
        expression: the expression
    """
    return str(eval(expression, {"__builtins__": {}}))


def test_tools_parse_run_and_fail_as_observations():
    box = ToolBox([make_tool(calculator, "env.tools[0]")])
    msgs, n = box.answer('<tool_call>calculator("12 * 34")</tool_call> and <tool_call>{"name": "calculator", '
                         '"arguments": {"expression": "2+2"}}</tool_call>')  # fmt: skip
    assert n == 2 and [m["content"] for m in msgs] == ["408", "4"] and msgs[0]["role"] == "tool"
    assert box.answer("the answer is 408") is None
    assert "unknown tool 'calc'" in box.answer("<tool_call>calc(1)</tool_call>")[0][0]["content"]
    assert "could not read" in box.answer("<tool_call>calculator(12 *</tool_call>")[0][0]["content"]
    assert "ZeroDivisionError" in box.answer('<tool_call>calculator("1/0")</tool_call>')[0][0]["content"]
    assert parse_calls("<tool_call>calculator(expression='1+1')") == [
        ("calculator", {"__args__": [], "expression": "1+1"}, None)
    ]  # noqa: E501


def test_tools_need_docstrings_and_typed_arguments():
    def bare(x: int) -> int:
        return x

    def untyped(x):
        """Doc."""

    with pytest.raises(ConfigError, match="no docstring"):
        make_tool(bare, "env.tools[0]")
    with pytest.raises(ConfigError, match="no type hint"):
        make_tool(untyped, "env.tools[1]")


def test_text_protocol_for_smollm2_and_native_tools_where_the_template_renders_them(tok):
    runner = runner_for(tok, tools=[calculator])
    assert not runner.renderer.native_tools  # SmolLM2's template renders no tools: our text protocol
    first = runner.messages(Prompt("What is 3 * 4?"))
    assert first[0]["role"] == "system" and "calculator(expression: str)" in first[0]["content"]
    eos = tok.eos_token_id
    call = tok.encode('<tool_call>calculator("3 * 4")</tool_call>', add_special_tokens=False) + [eos]
    answer = tok.encode("12", add_special_tokens=False) + [eos]
    sample_turn, _ = scripted([[call], [answer]])
    out = runner.run([Prompt("What is 3 * 4?")], 1, [0], sample_turn, policy_version=0, temperature=1.0,
                     with_ref=False)  # fmt: skip
    ep = out.episodes[0]
    assert ep.stop == "done" and ep.tool_calls == 1 and ep.messages[1] == {"role": "tool", "content": "12"}

    class Native:  # a template that describes tools itself, as Qwen's or Hermes' do
        name_or_path, eos_token_id, chat_template = "native", tok.eos_token_id, "x"

        def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False, tools=None, **kw):
            head = f"<tools>{[t.__name__ for t in tools]}</tools>" if tools else ""
            body = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
            return head + body + ("<assistant>" if add_generation_prompt else "")

        def decode(self, ids):
            return "</s>"

    native = TurnRenderer(Native(), [calculator])
    assert native.native_tools and native.render([{"role": "user", "content": "q"}]).startswith("<tools>")


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["env.kind=openenv"], "env.url"),
        (["env.url=http://127.0.0.1:1"], "env.url"),
        (["env.factory=nofunction"], "env.factory"),
        (["env.tools=[x.py:f]", "env.max_tokens=8", "generate.max_new_tokens=8"], "env.max_tokens"),
        (["env.tools=[x.py:f]", "env.max_turns=0"], "env.max_turns"),
        (["reward.sources=[{kind: env}]"], "reward.sources[0].kind"),
    ],
)
def test_bad_env_keys_are_one_line_errors(overrides, key):
    from rlhf_ray.config.load import load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.key == key and "\n" not in str(err.value)


def test_guess_number_feedback_and_partial_credit_by_hand():
    from rlhf_ray.envs.tasks import GuessNumber

    env = GuessNumber()
    assert env.reset(seed=5, target=11) is None
    assert env.step("8") == ("Higher.", None, False)  # possible (1..16) -> range 9..16
    assert env.step("I say 20") == ("Lower.", None, False)  # outside 9..16 -> range 9..16
    assert env.step("no idea")[0] == "Reply with one number from 1 to 16."  # a turn without a guess
    assert env.step("12") == ("Lower.", None, False)  # possible -> range 9..11
    assert env.get_reward() == 0.5 * 2 / 4
    assert env.step("11") == ("Correct!", None, True)
    assert env.get_reward() == 1.0
    fresh = GuessNumber()
    fresh.reset(seed=21)  # no target column: the seed picks it, so a GRPO group (one seed) shares it
    assert fresh.target == 21 % 16 + 1 and fresh.get_reward() == 0.0


def test_guess_dataset_rows_worked_game_and_refusals():
    from rlhf_ray.data import guess
    from rlhf_ray.errors import UserError

    rows = guess.table("guess:max=8,n=40,shots=1").to_pylist()
    assert len(rows) == 40 and all(1 <= r["target"] <= 8 and r["max"] == 8 for r in rows)
    worked = [m["content"] for m in rows[0]["prompt"][:-1]]
    # halving towards 6 (3/4 of 8): 4 -> Higher. -> 6 -> Correct!
    assert worked[1:] == ["4", "Higher.", "6", "Correct!"]
    assert rows[1]["prompt"][-1]["content"] == guess.RULES.format(game=2, max=8)
    assert rows == guess.table("guess:max=8,n=40,shots=1").to_pylist()  # seeded: the same games
    for bad in ("guess:max=1", "guess:shots=2", "guess:top=8", "guess:n=x"):
        with pytest.raises(UserError, match="dataset 'guess:"):
            guess.table(bad)
