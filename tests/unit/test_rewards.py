"""Reward sources in-process: combination, answer checks, function loading and calls, the HTTP
client against real local servers (127.0.0.1), serve-reward's server, per-source metrics."""

from __future__ import annotations

import json
import math
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest
import torch

from rlhf_ray.batch import Scores
from rlhf_ray.config.load import load_config
from rlhf_ray.config.schema import Config, RewardSourceConfig
from rlhf_ray.errors import ConfigError, NonFiniteError, UserError
from rlhf_ray.rewards.base import RewardBatch, RewardSourceError, to_values
from rlhf_ray.rewards.functions import FunctionSource, function_ref, load_function
from rlhf_ray.rewards.http_client import HttpSource
from rlhf_ray.rewards.server import RewardServer
from rlhf_ray.rewards.sources import RewardSources, combine, spec_of
from rlhf_ray.runtime.metrics import reward_metrics, sample_scores, write_samples

NAN = math.nan


def batch(n: int = 3, **columns) -> RewardBatch:
    return RewardBatch([f"prompt {i}" for i in range(n)], [f"completion {i}" for i in range(n)], columns)


# ----------------------------------------------------------------------------- combination


def test_combined_reward_is_the_weighted_sum_over_the_sources_that_applied():
    per = {"a": torch.tensor([1.0, NAN, 2.0, NAN]), "b": torch.tensor([10.0, 20.0, NAN, NAN])}
    rewards, applied = combine(per, {"a": 0.5, "b": -1.0})
    assert rewards.tolist() == [0.5 - 10.0, -20.0, 1.0, 0.0]  # None contributes nothing; none at all -> 0
    assert applied.tolist() == [True, True, True, False]


def test_one_source_of_weight_one_passes_its_values_through_bit_for_bit():
    values = torch.randn(64)
    rewards, applied = combine({"classifier": values}, {"classifier": 1.0})
    assert torch.equal(rewards, values) and bool(applied.all())


def test_answers_are_checked_row_by_row():
    b = batch(3)
    assert torch.equal(to_values("s", [1, None, 2.5], b).isnan(), torch.tensor([False, True, False]))
    with pytest.raises(RewardSourceError, match=r"returned 2 values for 3 completions"):
        to_values("s", [1.0, 2.0], b)
    with pytest.raises(RewardSourceError, match=r"returned 'high' \(str\) for row 1 \(prompt 'prompt 1'"):
        to_values("s", [1.0, "high", 2.0], b)
    with pytest.raises(RewardSourceError, match="not a list"):
        to_values("s", 1.0, b)
    with pytest.raises(NonFiniteError, match=r"reward source 's' returned nan for row 2"):
        to_values("s", [1.0, 2.0, float("nan")], b)


# ----------------------------------------------------------------------------- functions

FUNCTIONS = """
import asyncio

def by_answer(prompts, completions, answer, **columns):
    return [1.0 if a in c else None for c, a in zip(completions, answer)]

async def slow_length(prompts, completions, **columns):
    await asyncio.sleep(0)
    return [float(len(c)) for c in completions]

def breaks_on_two(prompts, completions, **columns):
    return [1 / (c != "completion 2") for c in completions]

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def fn_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(FUNCTIONS)
    return path


def test_a_function_file_travels_as_text_and_gets_the_dataset_columns(fn_file, tmp_path):
    ref = function_ref("reward.sources[0].function", f"{fn_file}:by_answer")
    fn_file.unlink()  # the scorer's node never sees the driver's file: only the shipped text
    source = FunctionSource("fn:by_answer", ref, tmp_path / "node-cache")
    values = source(batch(3, answer=["completion 0", "nope", "2"]))
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2] == 1.0
    assert len(list((tmp_path / "node-cache" / "reward_functions").glob("my_rewards-*.py"))) == 1


def test_an_async_function_is_awaited(fn_file, tmp_path):
    source = FunctionSource("fn:slow_length", function_ref("k", f"{fn_file}:slow_length"), tmp_path)
    assert source(batch(2)).tolist() == [12.0, 12.0]


def test_a_raising_function_is_reported_with_the_first_row_that_breaks_it(fn_file, tmp_path):
    source = FunctionSource("fn:breaks_on_two", function_ref("k", f"{fn_file}:breaks_on_two"), tmp_path)
    with pytest.raises(RewardSourceError) as exc:
        source(batch(3))
    line = str(exc.value)
    assert "reward source 'fn:breaks_on_two'" in line and "ZeroDivisionError" in line
    assert "row 2 (prompt 'prompt 2', completion 'completion 2')" in line and "\n" not in line


def test_a_module_function_is_imported_by_name(tmp_path, monkeypatch):
    (tmp_path / "reward_pkg_for_test.py").write_text(
        "def const(prompts, completions, **kw):\n    return [0.25] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = function_ref("k", "reward_pkg_for_test:const")
    assert ref.source is None and ref.module == "reward_pkg_for_test"
    assert FunctionSource("fn:const", ref, tmp_path)(batch(2)).tolist() == [0.25, 0.25]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("missing.py:fn", "file missing.py does not exist"),
        ("{file}:by_answr", "has no function 'by_answr'; did you mean by_answer?"),
        ("{file}:NOT_A_FUNCTION", "is a int, not a function"),
        ("no_such_module_xyz:fn", "module no_such_module_xyz cannot be imported"),
    ],
)
def test_function_mistakes_are_config_errors_naming_the_key(fn_file, tmp_path, spec, message):
    with pytest.raises(ConfigError) as exc:
        load_function(function_ref("reward.sources[1].function", spec.format(file=fn_file)), tmp_path)
    assert str(exc.value).startswith("config key 'reward.sources[1].function'") and message in str(exc.value)


# ----------------------------------------------------------------------------- HTTP


class _Scripted(BaseHTTPRequestHandler):
    """Answers with the next (status, body) of the server's script, then keeps the last one."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        status, answer = self.server.script[min(len(self.server.requests), len(self.server.script)) - 1]
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    servers = []

    def start(*script):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
        server.script, server.requests = list(script), []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/score"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_http_5xx_is_retried_with_backoff_then_succeeds(scripted):
    server, url = scripted((503, {"error": "warming up"}), (502, {}), (200, {"rewards": [0.5, None]}))
    source = HttpSource("http:svc", url, timeout_s=5, retries=3, backoff_s=0.01)
    values = source(batch(2, answer=["x", "y"]))
    assert values[0] == 0.5 and math.isnan(values[1]) and len(server.requests) == 3
    assert server.requests[0] == {
        "prompts": ["prompt 0", "prompt 1"],
        "completions": ["completion 0", "completion 1"],
        "columns": {"answer": ["x", "y"]},
    }


def test_http_4xx_is_not_retried_and_names_the_source_and_status(scripted):
    server, url = scripted((400, {"error": "prompts missing"}))
    with pytest.raises(RewardSourceError, match=r"'http:svc': .* answered HTTP 400 \(prompts missing\); .*not retried"):
        HttpSource("http:svc", url, timeout_s=5, retries=3, backoff_s=0.01)(batch(1))
    assert len(server.requests) == 1


def test_http_source_that_stays_down_fails_after_its_retries(scripted):
    server, url = scripted((503, {"error": "overloaded"}))
    with pytest.raises(RewardSourceError, match=r"stayed down after 3 tries \(last: HTTP 503 \(overloaded\)\)"):
        HttpSource("http:svc", url, timeout_s=5, retries=2, backoff_s=0.01)(batch(1))
    assert len(server.requests) == 3
    server.shutdown()
    server.server_close()  # nothing listens there any more: a refused connection is retried too
    with pytest.raises(RewardSourceError, match="stayed down after 2 tries .*ConnectionRefusedError"):
        HttpSource("http:svc", url, timeout_s=5, retries=1, backoff_s=0.01)(batch(1))


# ----------------------------------------------------------------------------- serve-reward's server


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_reward_server_scores_combines_and_refuses_bad_requests(fn_file, tmp_path):
    cfg = Config()
    cfg.run.cache_dir = str(tmp_path / "cache")
    specs = [
        spec_of(RewardSourceConfig(kind="function", function=f"{fn_file}:by_answer", weight=2.0), "a"),
        spec_of(RewardSourceConfig(kind="function", function=f"{fn_file}:breaks_on_two", name="fragile"), "b"),
    ]
    server = RewardServer(RewardSources(specs, cfg), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, out = _post(
            server.url, {"prompts": ["p", "q"], "completions": ["yes", "no!"], "columns": {"answer": ["yes", "x"]}}
        )
        assert status == 200
        assert out["per_source"]["fn:by_answer"] == [1.0, None]
        assert out["rewards"] == [2.0 + 1.0, 1.0]  # weight 2 x 1.0 + fragile's 1.0; fragile alone
        status, out = _post(
            server.url, {"prompts": ["p"], "completions": ["completion 2"], "columns": {"answer": ["x"]}}
        )
        assert status == 422 and "ZeroDivisionError" in out["error"]  # the source's own error, not retried
        status, out = _post(server.url, {"prompts": ["p"], "completions": ["a", "b"]})
        assert status == 400 and "1 prompts but 2 completions" in out["error"]
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------- metrics and samples


def _scores(rewards, applied, **per) -> Scores:
    return Scores(torch.tensor(rewards), torch.tensor(applied), {k: torch.tensor(v) for k, v in per.items()})


def test_reward_metrics_are_over_applied_samples_and_per_source(tmp_path):
    shards = [
        _scores([1.0, 0.0], [True, False], a=[1.0, NAN], b=[NAN, NAN]),
        _scores([3.0, 4.0], [True, True], a=[1.0, 2.0], b=[2.0, 2.0]),
    ]
    m = reward_metrics(shards)
    assert m["reward/mean"] == pytest.approx(8 / 3) and m["reward/none_frac"] == 0.25
    assert m["reward/a/mean"] == pytest.approx(4 / 3) and m["reward/b/mean"] == 2.0
    combined, per = sample_scores(shards)
    assert combined == [1.0, None, 3.0, 4.0] and per["b"] == [None, None, 2.0, 2.0]
    path = write_samples(tmp_path, 3, ["p"] * 4, ["r"] * 4, combined, per)
    table = pq.read_table(path).to_pydict()
    assert table["score"] == combined and table["score/a"] == [1.0, None, 1.0, 2.0]


def test_default_metrics_equal_the_learners_over_all_samples():
    """One classifier applies to every sample: reward/mean is exactly what the learner logged before."""
    values = torch.randn(16)
    m = reward_metrics(
        [
            _scores(values[:8].tolist(), [True] * 8, classifier=values[:8].tolist()),
            _scores(values[8:].tolist(), [True] * 8, classifier=values[8:].tolist()),
        ]
    )
    assert m["reward/mean"] == float(values.float().mean()) and m["reward/std"] == float(values.std())
    assert m["reward/classifier/mean"] == m["reward/mean"] and m["reward/none_frac"] == 0.0


def test_sources_list_parses_from_yaml_with_default_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "reward:\n  sources:\n    - kind: classifier\n    - {kind: model, model: org/my-rm, weight: 0.5}\n"
        "    - {kind: http, url: 'http://127.0.0.1:9000/score'}\n"
    )
    names = [s.resolved_name() for s in load_config(path).reward.source_list()]
    assert names == ["classifier", "model:my-rm", "http:127.0.0.1:9000"]
    assert [s.kind for s in Config().reward.source_list()] == ["classifier"]  # none set: today's classifier


def test_model_source_scores_with_the_single_output_of_a_scalar_reward_model(tmp_path, tiny_classifier):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_classifier, num_labels=1, ignore_mismatched_sizes=True)
    rm.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_classifier).save_pretrained(tmp_path / "rm")
    cfg = Config()
    cfg.reward.input = "response"
    spec = spec_of(RewardSourceConfig(kind="model", model=str(tmp_path / "rm")), "s", model=str(tmp_path / "rm"))
    assert spec.name == "model:rm"
    scores = RewardSources([spec], cfg).score(batch(2))
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    with torch.no_grad():
        expected = rm.eval()(**tok(["completion 0", "completion 1"], return_tensors="pt", padding=True)).logits[:, 0]
    torch.testing.assert_close(scores.per_source["model:rm"], expected)
    with pytest.raises(UserError, match=r"'model:classifier' .* has 2 labels, a kind model source needs"):
        RewardSources([spec_of(RewardSourceConfig(kind="model", name="model:classifier"), "s", tiny_classifier)], cfg)


def test_eval_table_shows_each_source_and_the_unscored_share():
    from rlhf_ray.tools.evaluate import format_table, summarize

    rows = {
        "score": [1.0, None, 3.0, -1.0],
        "score/a": [1.0, None, 1.0, None],
        "score/b": [0.0, None, 2.0, -1.0],
        "kl": [0.0] * 4,
        "length": [3.0] * 4,
        "response": ["x y"] * 4,
    }
    figures = summarize(rows, "logit_margin")
    assert figures["reward/mean"] == 1.0 and figures["reward/none_frac"] == 0.25
    assert figures["reward/a/mean"] == 1.0 and figures["reward/b/mean"] == pytest.approx(1 / 3)
    table = format_table({"reference": figures, "policy": figures})
    assert "| mean reward: a | 1.000 | 1.000 |" in table and "| no reward source applied | 0.250 | 0.250 |" in table


def test_a_decoder_reward_model_without_a_pad_token_scores_batches_as_single_texts(tmp_path, tiny_lm):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_ray.rewards.classifier import RewardModel

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(tiny_lm, num_labels=1).save_pretrained(tmp_path / "rm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "rm")
    rm = RewardModel(str(tmp_path / "rm"))
    texts = ["a short one", "a much longer text that needs the other one padded"]
    together = rm.score(texts)
    torch.testing.assert_close(together, torch.cat([rm.score([t]) for t in texts]), atol=1e-5, rtol=1e-5)
