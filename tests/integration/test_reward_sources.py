"""Reward sources on real Ray scorer actors: one actor with a function that reads the dataset's
columns, weighted sources and a flaky local HTTP judge; an HTTP source against `rlhf-ray
serve-reward` (a subprocess on 127.0.0.1); and one PPO run with a function source next to the
classifier. Each source kind's own rules (retries, errors, combination) are unit tests."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from rlhf_ray.actors.remote import RewardScorerActor
from rlhf_ray.batch import Rollout
from rlhf_ray.cli import main
from rlhf_ray.config.load import load_config
from rlhf_ray.config.sources import RewardSourceConfig
from rlhf_ray.errors import user_message
from rlhf_ray.rewards.base import RewardBatch, RewardSourceError
from rlhf_ray.rewards.classifier import RewardModel
from rlhf_ray.rewards.sources import RewardSources, spec_of
from rlhf_ray.runtime.metrics import read_metrics
from rlhf_ray.stages.ppo import reward_sources

pytestmark = pytest.mark.usefixtures("ray_session")

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "configs" / "smoke.yaml")
FUNCTIONS = '''
def answer_in_completion(prompts, completions, answer, **columns):
    """The length of the last chat message where the completion holds the row's answer, else None."""
    return [float(len(p[-1]["content"])) if a in c else None for p, c, a in zip(prompts, completions, answer)]


def shouting(prompts, completions, **columns):
    return [float(sum(ch.isupper() for ch in c)) for c in completions]
'''
COMPLETIONS = ["the answer is 42", "NO IDEA", "maybe 7?", "It is 42 I think"]


def rollout() -> Rollout:
    """Four samples as a generator with a chat dataset hands them on: raw prompts and an extra column."""
    B = len(COMPLETIONS)
    messages = [[{"role": "user", "content": f"question {'?' * i}"}] for i in range(B)]
    return Rollout(
        torch.ones(B, 2, dtype=torch.long),
        torch.ones(B, 2, dtype=torch.long),
        torch.ones(B, 3, dtype=torch.long),
        torch.ones(B, 3, dtype=torch.long),
        [f"<user>question {'?' * i}</user>" for i in range(B)],  # what the policy read (template applied)
        COMPLETIONS,
        policy_version=0,
        raw_prompts=messages,
        columns={"answer": ["42", "42", "8", "42"]},
    )


@pytest.fixture
def functions(tmp_path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(FUNCTIONS)
    return path


def scorer(specs):
    cfg = load_config(SMOKE)
    return RewardScorerActor.options(num_cpus=0.25).remote(cfg, specs)


def score(specs, sample: Rollout | None = None):
    import ray

    actor = scorer(specs)
    try:
        return ray.get(actor.score.remote(sample or rollout()))
    finally:
        ray.kill(actor)


def test_one_scorer_actor_runs_function_classifier_and_http_sources(functions, tiny_classifier, flaky):
    """One actor, four sources: a function reading the raw chat prompts and a dataset column, the
    classifier and a function with weights, an HTTP judge that answers 503 twice before its 200 (retried)
    and then 422 (not retried: one line that names the source, through Ray)."""
    import ray

    def imported(_actor) -> list[str]:  # run in the actor's process (a nested function travels by value)
        import sys

        return [m for m in ("peft", "bitsandbytes") if m in sys.modules]

    server, url = flaky(503, 503, 200, 422)
    specs = [
        spec_of(RewardSourceConfig(kind="function", function=f"{functions}:answer_in_completion"), "a"),
        spec_of(RewardSourceConfig(kind="classifier", weight=0.5), "b", model=tiny_classifier),
        spec_of(RewardSourceConfig(kind="function", function=f"{functions}:shouting", weight=-2.0), "c"),
        spec_of(RewardSourceConfig(kind="http", url=url, name="judge", retries=3), "d"),
    ]
    functions.unlink()  # the actor gets the file's text in its constructor args, never the path
    actor = scorer(specs)
    try:
        scores = ray.get(actor.score.remote(rollout()))
        assert server.calls == 3
        with pytest.raises(RewardSourceError) as exc:
            ray.get(actor.score.remote(rollout()))
        assert server.calls == 4
        # the scorer's process never loads the policy roles' packages (a third of a process start)
        assert ray.get(actor.__ray_call__.remote(imported)) == []
    finally:
        ray.kill(actor)
    line = user_message(exc.value)
    assert line.startswith("reward source 'judge': ") and "answered HTTP 422 (status 422)" in line
    assert "\n" not in line

    answer = scores.per_source["fn:answer_in_completion"]
    # rows 0 and 3 hold their answer: len("question ") + row index question marks; rows 1, 2 do not
    assert answer[0] == 9.0 and answer[3] == 12.0 and answer.isnan()[1:3].all()
    # the classifier reads prompt + response, the prompt as the policy read it (reward.input default)
    sample = rollout()
    expected_cls = RewardModel(tiny_classifier).score([p + c for p, c in zip(sample.prompts, COMPLETIONS)])
    torch.testing.assert_close(scores.per_source["classifier"], expected_cls)
    assert scores.per_source["fn:shouting"].tolist() == [0.0, 6.0, 0.0, 2.0]
    assert scores.per_source["judge"].nan_to_num(-9).tolist() == [1.5, -9.0, -1.0, 0.0]
    # the weighted sum over the sources that applied (a None contributes nothing)
    expected = (
        answer.nan_to_num(0)
        + 0.5 * expected_cls
        - 2.0 * torch.tensor([0.0, 6.0, 0.0, 2.0])
        + torch.tensor([1.5, 0.0, -1.0, 0.0])
    )
    torch.testing.assert_close(scores.rewards, expected)
    assert scores.applied.all()


@pytest.fixture
def served(tmp_path, functions, tiny_classifier):
    """`rlhf-ray serve-reward` in a subprocess on a free port: the classifier and a function."""
    config = {
        "reward": {
            "model": tiny_classifier,
            "sources": [{"kind": "classifier"}, {"kind": "function", "function": f"{functions}:shouting"}],
        }
    }
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "rlhf_ray.cli", "serve-reward", "--config", str(path), "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # the URL line, once the models are loaded
        assert "serving reward sources classifier, fn:shouting at http://127.0.0.1:" in line, proc.stderr.read()
        yield line.split(" at ")[1].strip(), path
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_http_source_against_serve_reward(served):
    url, config = served
    scores = score([spec_of(RewardSourceConfig(kind="http", url=url), "s")])
    # the service's two sources scored in this process: its combined reward, to float32
    cfg = load_config(config)
    local = RewardSources(reward_sources(cfg, publish=False)[0], cfg)
    sample = rollout()
    # the service reads the raw chat prompts (it has no chat template): their text is the messages' content
    batch = RewardBatch(sample.raw_prompts, COMPLETIONS, sample.columns)
    name = f"http:{url.split('//')[1].strip('/')}"
    torch.testing.assert_close(scores.per_source[name], local.score(batch).rewards)


class _Flaky(BaseHTTPRequestHandler):
    """Answers with the next status of its script (the last one repeats); 200 carries rewards."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.calls += 1
        status = self.server.script[min(self.server.calls, len(self.server.script)) - 1]
        body = json.dumps({"rewards": [1.5, None, -1.0, 0.0]} if status == 200 else {"error": f"status {status}"})
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky():
    def start(*script: int) -> tuple[ThreadingHTTPServer, str]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
        server.script, server.calls = script, 0
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/score"

    servers: list = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_ppo_with_a_function_source_next_to_the_classifier(tmp_path, functions):
    config = yaml.safe_load(open(SMOKE))
    config["reward"]["sources"] = [
        {"kind": "classifier"},
        {"kind": "function", "function": f"{functions}:shouting", "weight": 0.25, "name": "loud"},
    ]
    path, run = tmp_path / "config.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config))
    assert main(["ppo", "--config", str(path), "--run-dir", str(run)]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    for row in rows:
        assert {"reward/classifier/mean", "reward/loud/mean"} <= set(row) and row["reward/none_frac"] == 0.0
    table = pq.read_table(run / "samples" / "iter-000002.parquet").to_pydict()
    assert len(table["score/loud"]) == len(table["response"])
    loud = [float(sum(ch.isupper() for ch in r)) for r in table["response"]]
    assert table["score/loud"] == loud  # the function saw the same responses the table holds
    expected = [c + 0.25 * s for c, s in zip(table["score/classifier"], loud)]
    assert table["score"] == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert rows[-1]["reward/mean"] == pytest.approx(sum(table["score"]) / len(table["score"]), rel=1e-5)
