"""env.kind=openenv against a real OpenEnv server: the package's own create_app serving
examples/openenv_guess.py (guess the number, 1..16) under uvicorn in a subprocess on 127.0.0.1.
One round trip through our protocol object, concurrent episodes with a session each (and freed by
close), and a server that stops answering or goes away mid-episode: the step raises within
env.step_timeout_s, never hangs. The refusal without the package needs no server."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import pytest

from rlhf_ray.actors.dp import free_port
from rlhf_ray.config.schema import Config
from rlhf_ray.envs.episodes import call_all
from rlhf_ray.envs.openenv import default_text, load_glue, openenv_factory, text_field
from rlhf_ray.envs.protocol import EnvError, StepTimeout, as_step
from rlhf_ray.envs.runner import env_spec
from rlhf_ray.errors import UserError

REPO = Path(__file__).resolve().parents[2]
SESSIONS = 8  # the server's max_concurrent_envs: the batch of test_concurrent_episodes
# uvicorn serving examples/openenv_guess.py:app. Without gradio: openenv imports its web UI only if it
# can (a ModuleNotFoundError is caught there), and gradio's import is most of a server's start-up time.
LAUNCH = (
    "import sys, uvicorn; sys.modules['gradio'] = None; sys.path.insert(0, sys.argv[1]); "
    "uvicorn.run('openenv_guess:app', host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')"
)


def target(seed: int) -> int:
    return random.Random(seed).randint(1, 16)  # as examples/openenv_guess.py draws it


class Server:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "GUESS_MAX_SESSIONS": str(SESSIONS), "ENABLE_WEB_INTERFACE": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(REPO / "examples"), str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def wait(self, timeout_s: float = 60.0) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the OpenEnv server exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
            try:
                with opener.open(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"the OpenEnv server did not answer /health within {timeout_s:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def servers():
    """Two servers, started at once (each imports openenv for seconds): one stays up, one is
    stopped and killed by test_server_gone_mid_episode."""
    pytest.importorskip("openenv", reason="pip install 'rlhf-ray[openenv]' (in the dev extra)")
    up, doomed = Server(), Server()
    try:
        import openenv.core.generic_client  # noqa: F401 - this process's import (seconds) while they start

        up.wait()
        doomed.wait()
        yield up, doomed
    finally:
        up.stop()
        doomed.stop()


def test_round_trip(servers):
    """reset with a seed and the row's columns, steps with feedback, reward and done from the observation."""
    make = openenv_factory(servers[0].url, None, 10.0)  # no glue: the action's one text field is `guess`
    env = make()
    first = env.reset(seed=3, level=2)  # `level`: a column the server's reset takes in **row
    assert first == "I picked a whole number from 1 to 16. Reply with one number."
    n = target(3)
    low = 1 if n > 1 else 2
    observation, reward, done = env.step(f"My guess is {low}.")
    assert (observation, reward, done) == ("Higher." if low < n else "Lower.", 0.0, False)
    assert env.step("no idea") == ("Reply with one number from 1 to 16.", 0.0, False)
    step = as_step(env.step(str(n)))  # read as the episode loop reads it
    assert step.messages == [{"role": "user", "content": "Correct!"}]
    assert (step.reward, step.done) == (1.0, True)
    env.close()
    env.close()  # idempotent

    env = make()  # the row's `target` column reaches the server's reset (the `guess` dataset's rows)
    assert env.reset(seed=3, target=11, prompt=[{"role": "user", "content": "Guess."}]) is None  # nothing to add
    assert env.step("12") == ("Lower.", 0.0, False)
    assert env.step("11") == ("Correct!", 1.0, True)
    env.close()


def test_glue(servers, tmp_path):
    """The glue's action/observation are used; a glue file goes through env_spec (shipped as text)
    and load_glue (imported from the cache) as the runner does."""
    glue = types.ModuleType("glue")
    glue.action = lambda text: {"guess": text.split("|")[0]}
    glue.observation = lambda obs: {"role": "user", "content": "[guess] " + obs["feedback"]}
    env = openenv_factory(servers[0].url, glue, 10.0)()
    assert env.reset(seed=5)["content"].startswith("[guess] I picked")
    assert env.step(f"{target(5)}|ignored 99") == ({"role": "user", "content": "[guess] Correct!"}, 1.0, True)
    env.close()

    cfg = Config()
    cfg.env.kind, cfg.env.url, cfg.env.glue = "openenv", servers[0].url, str(REPO / "examples/openenv_guess_glue.py")
    spec = env_spec(cfg)
    assert spec.glue.source is not None  # travels as text
    module = load_glue(spec.glue, tmp_path)
    env = openenv_factory(spec.url, module, 10.0)()
    env.reset(seed=7)
    assert env.step(f"{target(7)}\nI am sure, not 3.") == ("Correct!", 1.0, True)
    env.close()


def test_concurrent_episodes(servers):
    """As many episodes at once as the server's max_concurrent_envs, from as many threads, each in
    its own session; one more is refused with a hint; closed sessions are freed for the next batch."""
    make = openenv_factory(servers[0].url, None, 10.0)
    for batch in range(2):  # the second batch needs the first's sessions freed by close()
        seeds = [100 * batch + i for i in range(SESSIONS)]
        envs = [make() for _ in seeds]
        firsts = call_all([lambda e=e, s=s: e.reset(seed=s) for e, s in zip(envs, seeds)], 10.0)
        assert all(isinstance(f, str) for f in firsts), firsts
        if batch == 0:
            extra = make()
            with pytest.raises(EnvError, match="CAPACITY_REACHED.*max_concurrent_envs"):
                extra.reset(seed=1)
            extra.close()
        wrong = call_all([lambda e=e, s=s: e.step(str(17 - target(s))) for e, s in zip(envs, seeds)], 10.0)
        right = call_all([lambda e=e, s=s: e.step(str(target(s))) for e, s in zip(envs, seeds)], 10.0)
        for s, w, r in zip(seeds, wrong, right):  # each session kept its own number
            assert w == ("Higher." if 17 - target(s) < target(s) else "Lower.", 0.0, False), (s, w)
            assert r == ("Correct!", 1.0, True), (s, r)
        call_all([e.close for e in envs], 10.0)


def test_server_gone_mid_episode(servers):
    """A server that stops answering: each step raises StepTimeout within the timeout (well before
    call_all's deadline: the client's own bound); one that is killed: EnvError at once. Neither
    hangs, close() neither, and a failed session is never silently replaced by a new (unreset) one."""
    server, timeout_s = servers[1], 1.0
    make = openenv_factory(server.url, None, timeout_s)
    stalled, waiting, killed = make(), make(), make()
    for seed, env in enumerate((stalled, waiting, killed)):
        env.reset(seed=seed)
    assert stalled.step("1")[1] in (0.0, 1.0)

    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()  # call_all would wait 10 s: the steps' own bound ends them
        results = call_all([lambda: stalled.step("2"), lambda: waiting.step("3")], 10.0)
        assert all(isinstance(r, StepTimeout) for r in results), results
        assert time.monotonic() - t0 < timeout_s + 1.0
        t0 = time.monotonic()
        stalled.close()
        assert time.monotonic() - t0 < timeout_s + 1.0
    finally:
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)

    fresh = make()
    t0 = time.monotonic()
    gone, refused, again = call_all(
        [lambda: killed.step("4"), lambda: fresh.reset(seed=3), lambda: waiting.step("5")], 10.0
    )
    assert time.monotonic() - t0 < timeout_s + 1.0
    assert isinstance(gone, EnvError) and isinstance(refused, EnvError), (gone, refused)
    assert "OpenEnv server" in str(refused)
    assert isinstance(again, EnvError) and "after the session failed" in str(again), again
    for env in (waiting, killed, fresh):
        env.close()


def test_missing_package_is_refused_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openenv", None)  # as if not installed
    with pytest.raises(UserError) as info:
        openenv_factory("http://127.0.0.1:1", None, 1.0)
    assert str(info.value) == "env.kind=openenv needs the openenv package: pip install 'rlhf-ray[openenv]'"


def test_defaults_without_glue():
    """Which action field takes the text, and which observation text the policy reads."""
    action = {
        "properties": {"metadata": {"type": "object"}, "guess": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["guess"],
    }
    assert text_field(action, "u") == "guess"
    assert text_field({"properties": {"message": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}, "u") == "message"
    with pytest.raises(EnvError, match="write action"):
        text_field({"properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["a", "b"]}, "u")
    assert default_text({"feedback": "higher", "reward": 0.0, "done": False, "metadata": {"x": "y"}}) == "higher"
    assert default_text({"stdout": "1", "stderr": "oops", "exit_code": 1}) == "stdout: 1\nstderr: oops"
    assert default_text({"board": [1, 2], "metadata": {}}) == '{"board": [1, 2]}'
    assert default_text({"metadata": {}}) is None
