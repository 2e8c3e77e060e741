"""Many runs, one base: the sweep's driver loop over one multi-run policy host.

One `MultiRunPolicyActor` holds the quantized base once and every run's adapter, value head and
optimizer (actors/multirun.py). Under cluster.layout=separate the roles split as a single run's do:
the learner host (or cluster.num_learners data-parallel ones) holds every run's learner, and each of
cluster.num_generators generator hosts holds every run's adapter (each run's prompts sharded over
them as a single run shards its own). Runs with the same reward config share a reward scorer; each
run has its own prompt stream, supervisor, metrics log and run directory. Each run is driven by the
single-run code itself: `RunRoles` presents the hosts to `driver.run_iteration`, `RolloutSource` and
`Supervisor` as if they were that run's own roles (every call carries the run's name), so a sweep's
iteration is a PPO iteration, its checkpoints are PPO checkpoints and `ppo --resume` continues one
run alone.

Rounds: one call per generator host samples every unfinished run's next batch (each row under its
run's adapter, models/mixed.py; run by run where the lean decode loop does not apply), then each run
is scored, learns and syncs in turn (the host switching the active adapter).

A run that fails by itself (its reward function raises, a non-finite batch under
ppo.on_nonfinite=stop, its scorer beyond cluster.max_role_restarts) stops alone with its last
completed iteration checkpointed; the others go on. A policy host that dies or hangs is restarted by
the run that meets it (its Supervisor, as a single run's), and every other run restores its own last
completed iteration on the hosts before its next round: every run goes on as if uninterrupted."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import ray
from ray.util.placement_group import remove_placement_group

from rlhf_ray.actors.remote import MultiRunPolicyActor, RewardScorerActor
from rlhf_ray.config.schema import Config
from rlhf_ray.data.prompts import prompt_stream
from rlhf_ray.errors import UserError, user_message
from rlhf_ray.models.policy import load_tokenizer
from rlhf_ray.runtime import stopping
from rlhf_ray.runtime.driver import driver_state_of, restore_run, run_iteration
from rlhf_ray.runtime.layout import role_layout
from rlhf_ray.runtime.learner_group import LearnerGroup, join_ranks
from rlhf_ray.runtime.metrics import MetricsLog, open_sinks, plot_metrics, write_samples
from rlhf_ray.runtime.overlap import Batch, RolloutSource
from rlhf_ray.runtime.placement import RoleSpec, actor_options, create_placement, run_id
from rlhf_ray.runtime.recovery import Supervisor, _cause, timed_get
from rlhf_ray.runtime.roles import make_actor, retry_while_name_taken, sync_adapter
from rlhf_ray.runtime.rundir import resume_checkpoint
from rlhf_ray.runtime.sweep_plan import reward_key
from rlhf_ray.store.artifacts import ModelRef
from rlhf_ray.store.checkpoint import write_checkpoint

log = logging.getLogger(__name__)


class HostRef:
    """A policy host every run's view calls, replaced in place when it is restarted."""

    def __init__(self, actor, maker: Callable[[], object]):
        self.actor, self.maker = actor, maker


@dataclass
class Hosts:
    """The sweep's policy hosts by role name: `policy-0` (fused), or `generator-<i>` and `learner-<i>`
    (separate; several learners are data-parallel ranks of one process group). generation counts the
    restarts of any of them, so each run knows when its adapter must be restored (its learner) and
    synced (every generator) on them."""

    refs: dict[str, HostRef]
    generators: list[str]
    learners: list[str]
    generation: int = 0

    def restart(self, name: str, timeout_s: float) -> None:
        """A fresh host for `name`; a learner restarts with every other rank of its group, joined anew."""
        names = self.learners if name in self.learners and len(self.learners) > 1 else [name]
        for n in names:
            ray.kill(self.refs[n].actor)
        for n in names:
            self.refs[n].actor = retry_while_name_taken(self.refs[n].maker)
        self.generation += 1
        timed_get([self.refs[n].actor.where.remote() for n in names], timeout_s)
        if len(names) > 1:
            join_ranks([self.refs[n].actor for n in names])


class _RunMethod:
    """`actor.method` of the shared host, bound to one run: `.remote(*a)` calls `method(run, *a)`."""

    def __init__(self, host: HostRef, method: str, run: str, options: dict | None = None):
        self.host, self.method, self.run, self.opts = host, method, run, options or {}

    def options(self, **options) -> "_RunMethod":
        return _RunMethod(self.host, self.method, self.run, {**self.opts, **options})

    def remote(self, *args, **kwargs):
        method = getattr(self.host.actor, self.method)
        return (method.options(**self.opts) if self.opts else method).remote(self.run, *args, **kwargs)


class RunHandle:
    """The shared host as one run's generator (generate, load_adapter), for RolloutSource and sync."""

    def __init__(self, host: HostRef, run: str):
        self.host, self.run = host, run

    def __getattr__(self, method: str) -> _RunMethod:
        if method == "where":
            return self.host.actor.where
        return _RunMethod(self.host, method, self.run)


@dataclass
class RunRoles:
    """One run's roles as the driver, RolloutSource and Supervisor see them (runtime.roles.Roles)."""

    run: str
    hosts: Hosts
    scorer_maker: Callable[[], object]
    scorers: list
    start_timeout_s: float
    generators: list = field(init=False)
    learner: LearnerGroup = field(init=False)

    def __post_init__(self):
        h = self.hosts
        self.generators = [RunHandle(h.refs[name], self.run) for name in h.generators]
        # the learner hosts as this run's learner group (learn on every rank, publish from rank 0)
        self.learner = LearnerGroup([RunHandle(h.refs[name], self.run) for name in h.learners])

    def named(self) -> dict:
        return {**{name: ref.actor for name, ref in self.hosts.refs.items()}, "reward-0": self.scorers[0]}

    def restart(self, name: str) -> None:
        """A host is every run's: a fresh one (every run's adapter new again) replaces it for all of
        them, and each other run restores its own last completed iteration on the hosts before its
        next one (`catch_up`). A run's scorer (shared by the runs of its reward config: one list,
        replaced in place) is restarted in its bundle."""
        if name in self.hosts.refs:
            self.hosts.restart(name, self.start_timeout_s)
            return
        ray.kill(self.scorers[0])
        self.scorers[0] = retry_while_name_taken(self.scorer_maker)
        timed_get(self.scorers[0].where.remote(), self.start_timeout_s)

    def sync(self, timeout_s: float) -> None:
        payload_ref, receipt_ref = self.learner.publish()
        receipt = timed_get(receipt_ref, timeout_s)
        sync_adapter(self, payload_ref, receipt["version"], receipt["sha256"], timeout_s)


class PrefetchedSource(RolloutSource):
    """A run's RolloutSource whose next batches may already be sampled, in the round's one call for
    every run (`prefetch`): the batch of its next iteration and, with ppo.overlap, the one after it,
    which a single run launches when it takes the one before. A redo after a recovery samples the same
    prompts again, run alone."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prefetched: dict[int, Batch] = {}

    def wanted(self, iteration: int) -> list[int]:
        """The iterations whose batches this run's next take launches and are not launched yet."""
        launched = set(self.prefetched) | ({self.ahead[0]} if self.ahead else set())
        ahead = [iteration + 1] if self.overlap and iteration < self.last else []
        return [i for i in [iteration, *ahead] if i not in launched]

    def drop(self) -> None:
        """Forget every batch sampled ahead (its host may have died since): the prompts go back to the stream."""
        batches = [*([self.ahead] if self.ahead else []), *sorted(self.prefetched.items())]
        if batches:
            self.stream.state = replace(min(batches, key=lambda ib: ib[0])[1].state_before)
        self.prefetched, self.ahead = {}, None

    def take(self, iteration: int) -> Batch:
        if self.current is not None and self.current[0] == iteration:  # a redo: every batch sampled again
            self.prefetched = {}
        return super().take(iteration)

    def _launch(self, iteration: int) -> Batch:
        if iteration in self.prefetched:
            return self.prefetched.pop(iteration)
        return super()._launch(iteration)


def prefetch(hosts: Hosts, states: list) -> None:
    """Draw each run's next prompts from its own stream and sample them all in ONE call per generator
    host (each row under its run's adapter: MultiRunPolicyHost.generate_many; generator i gets shard i
    of every run's prompts, as a single run's generator i would); each run's source hands its share to
    its iteration as if it had sampled it. With ppo.overlap that is the batch after the run's next
    one, sampled, as alone, under the adapter the generators hold before this round's updates."""
    if len(states) < 2:
        return
    n = len(hosts.generators)
    slots = []
    for state in states:
        source = state.source
        for it in source.wanted(state.iteration):
            before = replace(source.stream.state)
            slots.append((state.run.name, source, it, before, source.stream.next(source.batch_size)))
    if not slots:
        return
    calls = []
    for i, name in enumerate(hosts.generators):
        requests = [(run, prompts[i::n], it, source.want_samples(it)) for run, source, it, _, prompts in slots]
        calls.append(hosts.refs[name].actor.generate_many.options(num_returns=2 * len(requests)).remote(requests))
    for k, (_, source, it, before, _) in enumerate(slots):
        source.prefetched[it] = Batch([c[2 * k] for c in calls], [c[2 * k + 1] for c in calls], before)


@dataclass
class SweepRun:
    """One run of a sweep, as the stage resolved it."""

    name: str
    cfg: Config
    run_dir: Path
    reward: list  # its reward sources' specs (stages.ppo.reward_sources)
    env: object = None  # its EnvSpec, None for single-turn
    resume: bool = False  # continue from its latest checkpoint


@dataclass
class _Live:
    run: SweepRun
    roles: RunRoles
    source: PrefetchedSource
    supervisor: Supervisor
    log: MetricsLog
    iteration: int  # the next one
    host_generation: int = 0  # the host's generation this run's adapter was last restored or trained on
    last: dict = field(default_factory=dict)


def reward_groups(runs: list[SweepRun]) -> list[int]:
    """Each run's reward scorer: runs with the same `reward` section AND the same reward models share one
    (its models loaded once). The models count apart from the section: the reward stage's classifier is
    trained per run.seed, so runs of one section but different seeds score with different models."""
    keys: dict[str, int] = {}
    return [keys.setdefault(reward_key(r.cfg) + reward_models(r.reward), len(keys)) for r in runs]


def reward_models(specs: list) -> str:
    """Which model each source loads: a published directory by its content hash, else its path or name."""
    return json.dumps([[s.name, str(getattr(s.model, "sha256", s.model))] for s in specs])


def start_roles(runs: list[SweepRun], policy: ModelRef, sweep_dir: Path):
    """The policy hosts (every run's adapter on each one base: one fused host, or under the separate
    layout the generator hosts and the learner hosts) and a reward scorer per distinct reward config,
    in one placement group."""
    first = runs[0].cfg
    c = first.cluster
    group = reward_groups(runs)
    owners = [runs[group.index(g)] for g in range(max(group) + 1)]  # the first run of each group builds it
    layout = role_layout(first, first.cluster.layout)
    # (spec, role, rank): a generator host's rank picks its sampling stream, as a single run's generator's
    hosted = [(s, "generator", i) for i, s in enumerate(layout.generators)]
    hosted += [(s, "fused" if layout.fused else "learner", i) for i, s in enumerate(layout.learners)]
    policy_specs = [spec for spec, _, _ in hosted]
    # the scorers (one per reward config and trained seed) share one role's CPU reservation: each scores
    # for a moment per round, and a 4-seed sweep of the default config must start on 2 cores
    scorer_cpus = c.actor_cpus / len(owners)
    specs = policy_specs + [RoleSpec(f"reward-{g}", scorer_cpus, c.scorer_gpus) for g in range(len(owners))]
    rid = run_id(sweep_dir)
    pg = create_placement(specs, c, name=f"rlhf_ray/{rid}")
    opts = {s.name: actor_options(s, pg, i, c.namespace, rid) for i, s in enumerate(specs)}
    configs, envs = {r.name: r.cfg for r in runs}, {r.name: r.env for r in runs}
    started: list = []
    try:
        refs = {}
        for spec, role, rank in hosted:
            maker = partial(make_actor, MultiRunPolicyActor, opts[spec.name], (configs, policy, envs, role, rank))
            refs[spec.name] = HostRef(maker(), maker)
            started.append(refs[spec.name].actor)
        learners = [s.name for s in layout.learners]
        hosts = Hosts(refs, [s.name for s in layout.generators] or learners, learners)  # fused: one host for both
        join_ranks([refs[n].actor for n in learners])  # data-parallel learner hosts: one process group
        makers = [
            partial(make_actor, RewardScorerActor, opts[f"reward-{g}"], (o.cfg, o.reward)) for g, o in enumerate(owners)
        ]
        scorers = [[make()] for make in makers]  # one list per scorer, shared by its runs' views (restarts)
        started += [s[0] for s in scorers]
        timed_get([a.where.remote() for a in started], c.start_timeout_s)  # every model loaded
    except BaseException:
        for actor in started:
            ray.kill(actor)
        remove_placement_group(pg)
        raise
    views = {
        r.name: RunRoles(r.name, hosts, makers[group[i]], scorers[group[i]], c.start_timeout_s)
        for i, r in enumerate(runs)
    }
    return hosts, views, started[len(refs) :], pg


def train_sweep(
    runs: list[SweepRun], policy_path: str, policy: ModelRef, sweep_dir: Path, on_state: Callable[..., None]
) -> dict[str, dict]:
    """Every run to its ppo.iterations, in rounds. on_state(name, state, **info) hears each change:
    running (iteration), done (summary), failed (error, iteration checkpointed), stopped; and once
    on_state(None, "generation", mode=...): whether the runs share one sampling call."""
    stopping.reclaim()  # ray.init replaced our SIGTERM handler
    tokenizer = load_tokenizer(policy_path)
    hosts, views, scorers, pg = start_roles(runs, policy, sweep_dir)
    live: dict[str, _Live] = {}
    results: dict[str, dict] = {}
    try:
        names = [r.name for r in runs]
        first_generator = hosts.refs[hosts.generators[0]].actor
        batched = timed_get(first_generator.batched.remote(names), runs[0].cfg.cluster.call_timeout_s)
        on_state(None, "generation", mode=f"one call for every run ({batched})" if batched else "run by run")
        for r in runs:
            live[r.name] = _begin(r, views[r.name], tokenizer)
            on_state(r.name, "running", iteration=live[r.name].iteration - 1)
        while live:
            if batched:
                for name in list(live):  # a host restarted in the last round: every run back on it first
                    try:
                        catch_up(live[name])
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:  # noqa: BLE001 - this run stops alone, the others go on
                        results[name] = _fail(live.pop(name), exc, on_state)
                prefetch(hosts, list(live.values()))  # one sampling call per generator host for every run
            for name in list(live):
                state = live[name]
                try:
                    _step(state)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - this run stops alone, the others go on
                    results[name] = _fail(state, exc, on_state)
                    del live[name]
                    continue
                if state.iteration > state.run.cfg.ppo.iterations:
                    results[name] = _finish(state)
                    on_state(name, "done", summary=results[name])
                    del live[name]
                else:
                    on_state(name, "running", iteration=state.iteration - 1)
    except KeyboardInterrupt:
        for name, state in live.items():  # every run keeps its last completed iteration
            done, path = state.supervisor.save_latest()
            on_state(name, "stopped", iteration=done, checkpoint=str(path) if path else None)
        raise
    finally:
        for state in live.values():
            state.log.close()
        hosts_now = [ref.actor for ref in hosts.refs.values()]
        for actor in [*hosts_now, *{id(v.scorers[0]): v.scorers[0] for v in views.values()}.values(), *scorers]:
            ray.kill(actor)  # the live ones (a restarted role replaced its first actor) and the first ones
        remove_placement_group(pg)
    return results


def _begin(r: SweepRun, roles: RunRoles, tokenizer) -> _Live:
    """A run's driver side: its prompt stream, restored learner (on resume), supervisor and log."""
    cfg = r.cfg
    stream = prompt_stream(cfg, tokenizer, "train")
    start = restore_run(cfg, roles, stream, resume_checkpoint(r.run_dir, cfg)) if r.resume else 1
    roles.sync(cfg.cluster.call_timeout_s)
    source = PrefetchedSource(roles.generators, stream, cfg, last_iteration=cfg.ppo.iterations)
    supervisor = Supervisor(cfg, roles, r.run_dir)
    supervisor.commit(start - 1, driver_state_of(cfg, start - 1, source))
    keep = start - 1 if r.resume else None
    metrics_log = MetricsLog(r.run_dir / "metrics.jsonl", keep_through=keep, sinks=open_sinks(cfg, r.run_dir))
    return _Live(r, roles, source, supervisor, metrics_log, start)


def _step(state: _Live) -> None:
    """One PPO iteration of one run (the single-run driver's), recorded and checkpointed."""
    cfg, it, run_dir = state.run.cfg, state.iteration, state.run.run_dir

    def record(result) -> None:
        metrics, samples, events = result
        for event in events:
            state.supervisor.events.write(**event)
        state.log.write({**metrics, "time/snapshot_s": state.supervisor.snapshot_s})
        if samples is not None:
            write_samples(run_dir, metrics["iteration"], **samples)
        state.last = metrics
        log.info("%s iteration %d: reward=%.3f kl=%.3f", state.run.name, it, metrics["reward/mean"], metrics["kl/mean"])

    catch_up(state)
    state.supervisor.run(
        it,
        lambda: run_iteration(cfg, state.roles, state.source, it),
        lambda: driver_state_of(cfg, it, state.source),
        record,
    )
    state.host_generation = state.roles.hosts.generation  # a restart during this iteration restored this run itself
    if it % cfg.ppo.checkpoint_every == 0 or it == cfg.ppo.iterations:
        write_checkpoint(run_dir, it, state.supervisor.state, keep=cfg.ppo.keep_checkpoints)
    state.iteration += 1


def catch_up(state: _Live) -> None:
    """A host was restarted (by another run's recovery) since this run last ran: its adapter, value
    head, optimizer and KL back on the learner, and its adapter on every generator."""
    hosts = state.roles.hosts
    if state.host_generation != hosts.generation:
        state.source.drop()  # sampled before the restart, perhaps by the dead host: sampled again, alone
        state.supervisor.restore()
        state.host_generation = hosts.generation


def _finish(state: _Live) -> dict:
    state.log.close()
    path = state.run.run_dir / "metrics.jsonl"
    if path.exists():
        plot_metrics(path, state.run.run_dir / "metrics.png")
    keys = ("reward/mean", "kl/mean", "policy/version")
    return {"iterations": state.run.cfg.ppo.iterations, "final": {k: state.last.get(k) for k in keys}}


def _fail(state: _Live, exc: BaseException, on_state) -> dict:
    """This run stops alone: its last completed iteration checkpointed, the error in events.jsonl."""
    cause = _cause(exc)
    if isinstance(cause, UserError):
        error = user_message(cause)
    else:
        error = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[-1][:300]}"
    done, path = state.supervisor.save_latest()
    state.supervisor.events.write(kind="run_failed", iteration=state.iteration, cause=error, time_failed=time.time())
    state.log.close()
    log.warning("run %s stopped at iteration %d: %s", state.run.name, state.iteration, error)
    on_state(state.run.name, "failed", iteration=done, error=error, checkpoint=str(path) if path else None)
    return {"failed": error, "iteration": done}
