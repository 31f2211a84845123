"""The online phase of offline-to-online RL: the agent keeps training while it acts in the
environment (the official QAM/TRQAM `main.py`).

- **Acting**: chunks from the fine-tuned flow's ODE (fresh noise, no other exploration), executed
  open loop; a chunk is cut short when its episode ends.
- **Replay**: one buffer holding the whole offline dataset followed by the online transitions,
  sampled uniformly (offline and online data in proportion to their sizes; no 50/50 mixing).
  Rewards are made sparse by the offline rule when `sparse_rewards` is set.
- **Updates**: none during the first `start_training` environment steps, then `utd` updates per
  environment step. λ, its KL average, the optimiser state and every network carry over from the
  offline phase; `kl_budget` optionally switches TRQAM's budget for this phase.

Differences from the reference's one-step-at-a-time loop, for speed: environment steps and updates
alternate in blocks of `steps_per_dispatch` (the updates of a block run as one compiled scan), so
the acting policy is refreshed once per block rather than every step; with `overlap` the block's
updates run on the device while the environments step with the policy from the block's start. With
`num_envs` > 1 each environment writes its block as one contiguous segment whose last transition
is marked as an episode end (a time-limit truncation: the mask still bootstraps), so chunks never
mix two environments.

Checkpoints (`run_dir/online/ckpt-<env step>/`, named by `run_dir/online/LATEST`) hold the agent,
the online transitions and the counters; resuming continues with the next block, starting fresh
episodes: every stored transition is kept, and the episodes that were running at the checkpoint
end there (their last stored transition is marked as a truncation).
"""

import dataclasses
import os
import pathlib
import shutil
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._checkpoint import atomic_write, CheckpointError
from .agents import AbstractFlowAgent
from .data import _FIELDS, add_transitions, append_transitions, ReplayBuffer, sparsify_rewards, Transitions
from .envs import EnvRunner, make_env_runner
from .evaluate import agent_policy
from .train import (
    _meta,
    _postfix,
    check_block_multiples,
    check_eval_flows,
    check_positive_ints,
    CHECKED_KEYS,
    Evaluator,
    finish_block,
    fused_updates,
    load_agent_checkpoint,
    MetricsLog,
    plot_learning_curve,
    raise_non_finite,
    save_agent_checkpoint,
    TrainResult,
)


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """Settings of the online phase (the official protocol: 500K environment steps, updates from
    step 5K, one update per step, batch 256, evaluation every 50K steps over 50 episodes).

    `steps`, `start_training`, `eval_every` and `checkpoint_every` count environment steps (all
    environments together) and must be multiples of `steps_per_dispatch`, which must be a
    multiple of `num_envs`.
    """

    steps: int = 500_000
    """Environment steps of the phase (transitions collected, all environments together)."""
    start_training: int = 5_000
    """Environment steps collected before the first online update."""
    utd: int = 1
    """Updates per environment step."""
    steps_per_dispatch: int = 100
    """Environment steps per block; the block's `utd * steps_per_dispatch` updates run as one scan."""
    batch_size: int = 256
    """Chunks per update, drawn uniformly from the whole buffer."""
    num_envs: int = 1
    """Environments acting together (one batched policy call per chunk)."""
    env_workers: bool = False
    """Step each environment in its own process."""
    overlap: bool = True
    """Run a block's updates while the environments step with the policy from the block's start."""
    kl_budget: float | None = None
    """TRQAM: the budget of this phase (`None`: keep the offline one). λ carries over either way."""
    buffer_capacity: int | None = None
    """Replay rows; `None`: offline size + `steps`. More lets a resumed run be extended to more steps."""
    sparse_rewards: bool | None = None
    """Apply the offline sparse-reward rule to online rewards (puzzle, scene). `None`: do what was done to the
    offline data (`Transitions.sparse_rewards`; dense when not recorded)."""
    eval_every: int = 50_000
    """Environment steps between evaluations; 0: only at the end."""
    eval_episodes: int = 50
    """Episodes per evaluation."""
    eval_envs: int = 10
    """Evaluation environments stepped in lockstep."""
    eval_at_start: bool = True
    """Evaluate at the phase start, unless the offline phase just did at that step."""
    eval_flows: tuple[str, ...] = ("policy",)
    """Flows to evaluate: `"policy"`, `"behaviour"`, `"base"`."""
    checkpoint_every: int = 50_000
    """Environment steps between checkpoints; 0: only at the end (and on Ctrl-C)."""
    seed: int = 0
    """Seed of the batches, the acting noise, the episode resets and the evaluation."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        check_positive_ints(
            self, ("steps", "utd", "steps_per_dispatch", "batch_size", "num_envs", "eval_episodes", "eval_envs")
        )
        n = self.steps_per_dispatch
        if n % self.num_envs:
            raise ValueError(
                f"OnlineConfig: steps_per_dispatch={n} must be a multiple of num_envs={self.num_envs} "
                "(every environment takes the same number of steps per block)."
            )
        check_block_multiples(
            self,
            ("steps", "start_training", "eval_every", "checkpoint_every"),
            "environment steps and updates alternate in blocks",
        )
        if self.kl_budget is not None and not (np.isfinite(self.kl_budget) and self.kl_budget > 0):
            raise ValueError(f"OnlineConfig: kl_budget must be > 0 or None, got {self.kl_budget}.")
        check_eval_flows(self)

    def replace(self, **changes) -> "OnlineConfig":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------- acting


def episode_seed(seed: int, index: int) -> int:
    """The reset seed of online episode number `index` (distinct from the evaluation seeds)."""
    return int(np.random.SeedSequence([seed, 0x0E, index]).generate_state(1)[0])


class Collector:
    """Acts in `runner`'s environments with open-loop chunks and returns the transitions.

    `collect(policy, steps_per_env)` advances every environment by exactly `steps_per_env` steps
    (a chunk unfinished at the end continues in the next call) and returns the transitions
    environment by environment (each a contiguous run of its steps) and the episodes that ended.
    `policy(observations (E, obs), call_index) -> chunks (E, H, A)` is called with all `E`
    observations whenever some environment needs a new chunk.
    """

    def __init__(
        self,
        runner: EnvRunner,
        seed: int,
        *,
        reward_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        episodes_started: int = 0,
        policy_calls: int = 0,
    ):
        self.runner = runner
        self.seed = seed
        self.reward_fn = reward_fn
        self.episodes_started = episodes_started
        self.policy_calls = policy_calls
        e = runner.num_envs
        self.obs: np.ndarray | None = None
        self.queues: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * e
        self.returns = np.zeros(e)
        self.lengths = np.zeros(e, np.int64)

    def _next_seeds(self, which: list[bool]) -> list[int | None]:
        seeds = []
        for w in which:
            seeds.append(episode_seed(self.seed, self.episodes_started) if w else None)
            self.episodes_started += int(w)
        return seeds

    def _reset(self, which: list[bool]) -> None:
        new = self.runner.reset(self._next_seeds(which))
        for i, ob in enumerate(new):
            if ob is not None:
                self._check(ob, "reset")
                assert self.obs is not None
                self.obs[i] = ob
                self.queues[i] = self.queues[i][:0]
                self.returns[i], self.lengths[i] = 0.0, 0

    @staticmethod
    def _check(values, where):
        if not np.all(np.isfinite(values)):
            raise FloatingPointError(f"the environment returned a non-finite observation or reward at {where}.")

    @property
    def in_episode(self) -> bool:
        return self.obs is not None

    def collect(self, policy, steps_per_env: int) -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
        e = self.runner.num_envs
        if self.obs is None:
            first = self.runner.reset(self._next_seeds([True] * e))
            self.obs = np.stack(first).astype(np.float32)
            self._check(self.obs, "reset")
            self.queues = [np.zeros((0, 0), np.float32)] * e
            self.returns[:], self.lengths[:] = 0.0, 0
        rows: list[dict[str, list[np.ndarray]]] = [{f: [] for f in _FIELDS} for _ in range(e)]
        left = np.full(e, steps_per_env)
        finished = []
        while left.any():
            if any(left[i] and len(self.queues[i]) == 0 for i in range(e)):
                chunks = np.asarray(policy(self.obs.copy(), self.policy_calls), np.float32)
                self.policy_calls += 1
                for i in range(e):
                    if left[i] and len(self.queues[i]) == 0:
                        self.queues[i] = chunks[i]
            plan = [self.queues[i][: left[i]] for i in range(e)]
            segments = self.runner.run(plan)
            ended = [False] * e
            for i, seg in enumerate(segments):
                m = seg.steps
                if m == 0:
                    continue
                self._check(seg.next_observations, f"step {self.lengths[i] + m} of an episode")
                self._check(seg.rewards, f"step {self.lengths[i] + m} of an episode")
                rewards = seg.rewards if self.reward_fn is None else self.reward_fn(seg.rewards)
                out = rows[i]
                out["observations"].append(np.concatenate([self.obs[i][None], seg.next_observations[:-1]]))
                out["actions"].append(plan[i][:m])
                out["rewards"].append(np.asarray(rewards, np.float32))
                out["masks"].append(1.0 - seg.terminated.astype(np.float32))
                out["terminals"].append((seg.terminated | seg.truncated).astype(np.float32))
                out["next_observations"].append(seg.next_observations)
                self.queues[i] = self.queues[i][m:]
                left[i] -= m
                self.obs[i] = seg.next_observations[-1]
                self.returns[i] += float(np.sum(rewards))
                self.lengths[i] += m
                if seg.done:
                    finished.append(
                        {"success": seg.success, "return": float(self.returns[i]), "length": int(self.lengths[i])}
                    )
                    ended[i] = True
            if any(ended):
                self._reset(ended)
        per_env = [{f: np.concatenate(r[f]) for f in _FIELDS} for r in rows]
        if e > 1:  # each environment's segment ends as a truncation, so chunks never span two environments
            for r in per_env:
                r["terminals"][-1] = 1.0
        data = {f: np.concatenate([r[f] for r in per_env]).astype(np.float32) for f in _FIELDS}
        return data, finished


# ---------------------------------------------------------------------------------- checkpoints


def _fingerprint(data: Transitions) -> str:
    """A cheap identity of the offline dataset: its size and a CRC of rewards, terminals and actions."""
    crc = 0
    for field in ("rewards", "terminals", "actions"):
        crc = zlib.crc32(np.ascontiguousarray(np.asarray(getattr(data, field))).tobytes(), crc)
    return f"{data.size}:{crc:08x}"


def latest_online_checkpoint(run_dir: str | os.PathLike) -> pathlib.Path | None:
    """The directory of the newest online checkpoint of `run_dir`, or `None`."""
    root = pathlib.Path(run_dir) / "online"
    latest = root / "LATEST"
    if not latest.exists():
        return None
    return root / latest.read_text().strip()


def save_online_checkpoint(
    run_dir: str | os.PathLike, agent: AbstractFlowAgent, buffer: ReplayBuffer, offline_size: int, meta: dict
) -> pathlib.Path:
    """Write the agent, the online rows of `buffer` (those after the first `offline_size`) and
    `meta` to `run_dir/online/ckpt-<env_step>/`, then point `LATEST` at it and delete older ones.
    An episode running at this point is stored as truncated (its last transition ends it)."""
    root = pathlib.Path(run_dir) / "online"
    name = f"ckpt-{meta['env_step']:010d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_agent_checkpoint(tmp, agent, meta)
    size = int(buffer.size)
    rows = {f: np.array(getattr(buffer.data, f)[offline_size:size]) for f in _FIELDS}
    if size > offline_size:
        rows["terminals"][-1] = 1.0
    with open(tmp / "online_rows.npz", "wb") as f:
        np.savez(f, **rows)
        f.flush()
        os.fsync(f.fileno())
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write(root / "LATEST", lambda t: pathlib.Path(t).write_text(name))
    for old in root.glob("ckpt-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_online_checkpoint(
    directory: pathlib.Path, like: AbstractFlowAgent, offline: Transitions, capacity: int, meta: dict
) -> tuple[AbstractFlowAgent, ReplayBuffer, dict]:
    """Restore `(agent, buffer, saved meta)` from an online checkpoint, refusing one written for
    another offline dataset or other settings (`CheckpointError` naming the problem)."""
    agent, saved = load_agent_checkpoint(
        directory, like, meta, keys=(*CHECKED_KEYS, "num_envs", "utd", "steps_per_dispatch")
    )
    if saved.get("offline_data") != meta["offline_data"]:
        raise CheckpointError(
            f"The online checkpoint in {directory} was written with another offline dataset "
            f"({saved.get('offline_data')} saved, {meta['offline_data']} now). Resume with the same data."
        )
    try:
        with np.load(directory / "online_rows.npz", allow_pickle=False) as f:
            rows = {k: np.asarray(f[k], np.float32) for k in _FIELDS}
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise CheckpointError(f"{directory / 'online_rows.npz'} cannot be read ({err}); start the online phase anew.")
    n = int(saved.get("env_step", -1))
    if any(len(v) != n for v in rows.values()):
        raise CheckpointError(
            f"The checkpoint in {directory} is inconsistent: {n} environment steps but "
            f"{len(rows['rewards'])} stored transitions."
        )
    buffer = ReplayBuffer.from_transitions(offline, capacity)
    if n:
        buffer = add_transitions(buffer, Transitions(**{k: jnp.asarray(v) for k, v in rows.items()}))
    return agent, buffer, saved


# ---------------------------------------------------------------------------------- the loop


def with_kl_budget(agent: AbstractFlowAgent, kl_budget: float | None) -> AbstractFlowAgent:
    """`agent` with TRQAM's budget replaced (λ and its KL average are kept)."""
    if kl_budget is None or kl_budget == agent.config.kl_budget:
        return agent
    return dataclasses.replace(agent, config=agent.config.replace(kl_budget=kl_budget))


def online_sparse_rewards(config: OnlineConfig, offline: Transitions) -> bool:
    """Whether online rewards are made sparse: `config.sparse_rewards`, or when `None` the rule the offline data
    were loaded with. Refuses a setting that contradicts the offline data's (the replay would mix both)."""
    recorded = offline.sparse_rewards
    if config.sparse_rewards is None:
        return bool(recorded)
    if recorded is not None and recorded != config.sparse_rewards:
        raise ValueError(
            f"OnlineConfig(sparse_rewards={config.sparse_rewards}) but the offline data were loaded with "
            f"sparse rewards {recorded}: the replay buffer would mix both reward scales; leave it None or match them."
        )
    return config.sparse_rewards


def train_online(
    agent: AbstractFlowAgent,
    offline: Transitions,
    config: OnlineConfig,
    env_factory: Callable[[], Any],
    *,
    evaluator: Evaluator | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    info: dict | None = None,
) -> TrainResult:
    """Continue training `agent` (fresh from the offline phase) while it acts in environments
    built by `env_factory`, for `config.steps` environment steps (see the module docstring).

    Metric rows go to `run_dir/metrics.jsonl` after the offline phase's, at step
    `offline updates + environment steps` (the reference's logging step); the figure marks where
    the online phase starts. `resume=True` continues from the newest online checkpoint.
    """
    if not isinstance(offline, Transitions):
        raise TypeError(f"offline must be a flowsoc.rl.data.Transitions, got {type(offline).__name__}.")
    directory = None if run_dir is None else pathlib.Path(run_dir)
    agent = with_kl_budget(agent, config.kl_budget)
    capacity = offline.size + config.steps if config.buffer_capacity is None else config.buffer_capacity
    if capacity < offline.size + config.steps:
        raise ValueError(
            f"OnlineConfig.buffer_capacity={capacity} cannot hold the {offline.size} offline transitions and "
            f"{config.steps} online steps; leave it None or raise it."
        )
    meta = {
        **_meta(agent, config, info or {}),
        "offline_data": _fingerprint(offline),
        "num_envs": config.num_envs,
        "utd": config.utd,
        "steps_per_dispatch": config.steps_per_dispatch,
    }
    if resume:
        if directory is None:
            raise ValueError("resume=True needs a run_dir.")
        ckpt = latest_online_checkpoint(directory)
        if ckpt is None:
            raise CheckpointError(f"No online checkpoint in {directory / 'online'}. Start without --resume.")
        agent, buffer, saved = load_online_checkpoint(ckpt, agent, offline, capacity, meta)
        offline_steps, env_step = int(saved["offline_steps"]), int(saved["env_step"])
        episodes_started, policy_calls = int(saved["episodes_started"]), int(saved["policy_calls"])
        log = MetricsLog.restore(directory, offline_steps + env_step)
    else:
        if directory is not None and latest_online_checkpoint(directory) is not None:
            raise FileExistsError(
                f"{directory} already holds an online phase ({directory / 'online'}). Pass --resume to continue "
                "it, or choose another run directory."
            )
        buffer = ReplayBuffer.from_transitions(offline, capacity)
        offline_steps, env_step, episodes_started, policy_calls = int(agent.step), 0, 0, 0
        log = MetricsLog.restore(directory, offline_steps) if directory is not None else MetricsLog(None)

    sparse = online_sparse_rewards(config, offline)  # refused before any environment is built
    runner = make_env_runner(env_factory, config.num_envs, config.env_workers)
    collector = Collector(
        runner,
        config.seed,
        reward_fn=sparsify_rewards if sparse else None,
        episodes_started=episodes_started,
        policy_calls=policy_calls,
    )
    recent: deque[dict[str, float]] = deque(maxlen=20)
    episodes_done = int(
        ([r for r in log.kind("train") if "online/episodes" in r] or [{}])[-1].get("online/episodes", 0)
    )
    last_eval = (log.kind("eval") or [None])[-1]
    last_saved: int | None = env_step if resume else None
    kl_budget = agent.config.kl_budget if type(agent).__name__ == "TRQAM" else None
    seed = jnp.asarray(config.seed, jnp.uint32)
    act_key = jr.key(config.seed + 2)

    def checkpoint(a, buf, at_env_step):
        nonlocal last_saved
        if directory is None:
            return
        m = {
            **meta,
            "offline_steps": offline_steps,
            "env_step": at_env_step,
            "episodes_started": collector.episodes_started,
            "policy_calls": collector.policy_calls,
        }
        save_online_checkpoint(directory, a, buf, offline.size, m)
        last_saved = at_env_step

    def run_eval(a, s):
        nonlocal last_eval
        if evaluator is None:
            return
        row = {"kind": "eval", "step": s, "phase": "online", **evaluator(a, s)}
        log.append(row)
        last_eval = {k: v for k, v in row.items() if "/" in k}

    def policy_of(a):
        act = agent_policy(a, "policy")
        return lambda obs, index: act(obs, jr.fold_in(act_key, index))

    from tqdm.auto import tqdm

    n = config.steps_per_dispatch
    per_env = n // config.num_envs
    updates = config.utd * n
    bar = tqdm(total=config.steps, initial=env_step, disable=not config.progress, unit="env step", dynamic_ncols=True)
    try:
        at_start = last_eval is None or last_eval.get("step") != offline_steps  # type: ignore[union-attr]
        if env_step == 0 and config.eval_at_start and config.eval_every and at_start:
            run_eval(agent, offline_steps)
        while env_step < config.steps:
            training = env_step >= config.start_training
            if training:
                pending = fused_updates(agent, buffer, seed, updates, config.batch_size)
                if not config.overlap:
                    jax.block_until_ready(pending)
                acting = agent if config.overlap else pending[0]
            else:
                acting = agent
            rows, finished = collector.collect(policy_of(acting), per_env)
            buffer = append_transitions(buffer, Transitions(**{k: jnp.asarray(v) for k, v in rows.items()}))
            env_step += n
            metrics: dict[str, np.ndarray] = {}
            if training:
                new, metrics, what = finish_block(lambda: pending, int(agent.step), updates)
                if what is not None:
                    checkpoint(agent, buffer, env_step)
                    raise_non_finite(what, int(agent.step), latest_online_checkpoint(directory) if directory else None)
                agent = new
            recent.extend(finished)
            episodes_done += len(finished)
            row: dict[str, Any] = {
                "kind": "train",
                "step": offline_steps + env_step,
                "phase": "online",
                "env_step": env_step,
                "updates": int(agent.step),
                "buffer_size": int(buffer.size),
                "online/episodes": episodes_done,
            }
            if recent:
                row["online/success"] = float(np.mean([r["success"] for r in recent]))
                row["online/return"] = float(np.mean([r["return"] for r in recent]))
            row.update({k: float(np.mean(v)) for k, v in metrics.items()})
            log.append(row)
            bar.update(n)
            postfix = _postfix(row, last_eval)
            if "online/success" in row:
                postfix["online"] = f"{100 * row['online/success']:.0f}%"
            bar.set_postfix(postfix, refresh=False)
            if (config.eval_every and env_step % config.eval_every == 0) or env_step == config.steps:
                run_eval(agent, offline_steps + env_step)
            if (config.checkpoint_every and env_step % config.checkpoint_every == 0) or env_step == config.steps:
                checkpoint(agent, buffer, env_step)
    except KeyboardInterrupt:
        checkpoint(agent, buffer, env_step)
        bar.close()
        where = f"; the state at environment step {env_step} is saved, continue with --resume" if directory else ""
        print(f"\nInterrupted at online step {env_step}{where}.")
        raise
    finally:
        runner.close()
    bar.close()
    if directory is not None:
        plot_learning_curve(
            log.rows,
            directory / "learning_curve.png",
            kl_budget=kl_budget,
            title=" · ".join(str(v) for v in (info or {}).values()),
            phase_boundary=offline_steps,
        )
    return TrainResult(agent=agent, rows=log.rows, run_dir=directory, buffer=buffer)


__all__ = [
    "Collector",
    "OnlineConfig",
    "episode_seed",
    "latest_online_checkpoint",
    "load_online_checkpoint",
    "save_online_checkpoint",
    "train_online",
    "with_kl_budget",
]
