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

Checkpoints (`run_dir/online/ckpt-<env step>/`, the newest two, `run_dir/online/LATEST` naming the
newest) hold the agent, the online transitions and the counters, each written as one unit;
resuming continues with the next block, starting fresh episodes: every stored transition is kept,
and the episodes that were running at the checkpoint end there (their last stored transition is
marked as a truncation).
"""

import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._checkpoint import CheckpointError, latest_checkpoint
from .._driver import AbstractTrainer, Block, drive, Saved
from .._logging import AbstractLogger, read_rows
from ._agents import AbstractFlowAgent
from ._buffers import (
    _FIELDS,
    add_transitions,
    append_transitions,
    overwrite_rows,
    ReplayBuffer,
    sparsify_rewards,
    Transitions,
)
from ._envs import EnvRunner, make_env_runner
from ._evaluate import agent_policy
from ._pretrain import dataset_fingerprint
from ._sharded import ShardedDataset
from ._train import (
    check_block_multiples,
    check_eval_flows,
    check_positive_ints,
    check_seed,
    CHECKED_KEYS,
    Evaluator,
    finish_block,
    fused_updates,
    plot_learning_curve,
    plotted_kl_budget,
    progress_postfix,
    run_caption,
    run_meta,
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
        check_seed(self)
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


def latest_online_checkpoint(run_dir: str | os.PathLike) -> pathlib.Path | None:
    """The folder of the newest online checkpoint of `run_dir` (`run_dir/online/ckpt-<env step>/`), or `None`."""
    return latest_checkpoint(pathlib.Path(run_dir) / "online")


def _online_rows_writer(buffer: ReplayBuffer, offline_size: int, env_step: int):
    """`write(path)` of the first `env_step` online rows of `buffer` (after the first `offline_size`), an
    episode running at this point stored as truncated (its last transition ends it)."""
    rows = {f: np.array(getattr(buffer.data, f)[offline_size : offline_size + env_step]) for f in _FIELDS}
    if env_step:
        rows["terminals"][-1] = 1.0

    def write(path):
        with open(path, "wb") as f:
            np.savez(f, **rows)

    return write


def _read_online_rows(folder: pathlib.Path, env_step: int) -> dict[str, np.ndarray]:
    try:
        with np.load(folder / "online_rows.npz", allow_pickle=False) as f:
            rows = {k: np.asarray(f[k], np.float32) for k in _FIELDS}
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise CheckpointError(f"{folder / 'online_rows.npz'} cannot be read ({err}); start the online phase anew.")
    if any(len(v) != env_step for v in rows.values()):
        raise CheckpointError(
            f"The checkpoint in {folder} is inconsistent: {env_step} environment steps but "
            f"{len(rows['rewards'])} stored transitions."
        )
    return rows


# ---------------------------------------------------------------------------------- the loop


def with_kl_budget(agent: AbstractFlowAgent, kl_budget: float | None) -> AbstractFlowAgent:
    """`agent` with TRQAM's budget replaced (λ and its KL average are kept)."""
    if kl_budget is None or kl_budget == agent.config.trust_region.kl_budget:
        return agent
    return dataclasses.replace(agent, config=agent.config.with_kl_budget(kl_budget))


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


class OnlineState(NamedTuple):
    """The online phase between two blocks (host side): the agent, the replay buffer, and the counters."""

    agent: AbstractFlowAgent
    buffer: ReplayBuffer
    env_step: int
    episodes_started: int
    policy_calls: int
    episodes_done: int
    recent: tuple[dict[str, float], ...] = ()


ONLINE_KEYS = (*CHECKED_KEYS, "offline_data", "num_envs", "utd", "steps_per_dispatch")
"""What a resumed online phase must share with its checkpoint."""


class OnlineTrainer(AbstractTrainer):
    """Blocks of acting and updating, for `flowsoc.drive`: each block collects `steps_per_dispatch`
    environment steps and runs `utd` updates per step on the replay buffer (overlapped when
    `config.overlap`)."""

    unit = "env step"
    identity_keys = ONLINE_KEYS

    def __init__(
        self,
        offline: Transitions,
        config: OnlineConfig,
        meta: dict,
        evaluator,
        offline_steps: int,
        capacity: int,
        collector: Collector,
        title: str,
    ):
        self.offline, self.config, self.meta, self.evaluator = offline, config, meta, evaluator
        self.offline_steps, self.capacity, self.collector, self.title = offline_steps, capacity, collector, title
        self.seed = jnp.asarray(config.seed, jnp.uint32)
        self.act_key = jr.key(config.seed + 2)
        self.live_buffer: ReplayBuffer | None = None
        self.shards: ShardedDataset | None = None  # set by `train_online` for sharded offline data
        self.first_shard = 0  # the shard in the buffer at the phase's start
        self.buffer_shard = 0  # the shard in the buffer's first rows now

    def shard_for(self, env_step: int) -> int:
        """The shard in the buffer's first rows during the block starting at `env_step` (the official rule: the
        next shard every `interval` environment steps, continuing from the offline phase's last)."""
        assert self.shards is not None
        return self.shards.shard_at(env_step, self.first_shard)

    def _rotate(self, buffer: ReplayBuffer, env_step: int) -> ReplayBuffer:
        """`buffer` with its first rows replaced by the shard due at `env_step` (official main.py:436-453)."""
        if self.shards is None or self.shard_for(env_step) == self.buffer_shard:
            return buffer
        self.buffer_shard = self.shard_for(env_step)
        # the one after is read in the background while these rows are used
        return overwrite_rows(buffer, self.shards.transitions(self.buffer_shard, prefetch=True))

    def position(self, state):
        return state.env_step

    def _policy(self, agent):
        act = agent_policy(agent, "policy")
        return lambda obs, index: act(obs, jr.fold_in(self.act_key, index))

    def block(self, state, n):
        cfg, collector = self.config, self.collector
        agent, buffer = state.agent, self._rotate(state.buffer, state.env_step)
        collector.episodes_started, collector.policy_calls = state.episodes_started, state.policy_calls
        training = state.env_step >= cfg.start_training
        updates = cfg.utd * n
        if training:
            pending = fused_updates(agent, buffer, self.seed, updates, cfg.batch_size)
            if not cfg.overlap:
                jax.block_until_ready(pending)
            acting = agent if cfg.overlap else pending[0]
        else:
            acting = agent
        rows, finished = collector.collect(self._policy(acting), n // cfg.num_envs)
        buffer = append_transitions(buffer, Transitions(**{k: jnp.asarray(v) for k, v in rows.items()}))
        self.live_buffer = buffer  # the append wrote in place: `state.buffer` is gone, its rows are a prefix of this
        env_step = state.env_step + n
        metrics: dict[str, np.ndarray] = {}
        if training:
            new, metrics, what = finish_block(lambda: pending, int(agent.step), updates)
            if what is not None:
                return Block(state, [], what)
            agent = new
        recent = (state.recent + tuple(finished))[-20:]
        episodes_done = state.episodes_done + len(finished)
        row: dict[str, Any] = {
            "kind": "train",
            "step": self.offline_steps + env_step,
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
        new_state = OnlineState(
            agent, buffer, env_step, collector.episodes_started, collector.policy_calls, episodes_done, recent
        )
        return Block(new_state, [row])

    def evaluate(self, state, position):
        if self.evaluator is None:
            return []
        step = self.offline_steps + position
        return [{"kind": "eval", "step": step, "phase": "online", **self.evaluator(state.agent, step)}]

    def identity(self):
        return self.meta

    def save(self, state):
        meta = {
            "offline_steps": self.offline_steps,
            "env_step": state.env_step,
            # the collector's own counters: at a Ctrl-C inside a block they are ahead of the state's, and
            # the resumed run must not reuse the seeds of the episodes that block started
            "episodes_started": max(state.episodes_started, self.collector.episodes_started),
            "policy_calls": max(state.policy_calls, self.collector.policy_calls),
            "episodes_done": state.episodes_done,
        }
        # The buffer is append-only and written in place: the newest one holds this state's rows as a prefix
        # (after a Ctrl-C or a NaN inside a block, `state.buffer` itself has been donated to the append).
        buffer = state.buffer if self.live_buffer is None else self.live_buffer
        rows = _online_rows_writer(buffer, self.offline.size, state.env_step)
        return Saved(state.agent, meta, {"online_rows.npz": rows})

    def restore(self, agent, meta, folder, state):
        env_step = int(meta["env_step"])
        rows = _read_online_rows(folder, env_step)
        offline = self.offline
        if self.shards is not None:
            self.buffer_shard = self.shard_for(env_step)
            offline = self.shards.transitions(self.buffer_shard, prefetch=True)
        buffer = ReplayBuffer.from_transitions(offline, self.capacity)
        if env_step:
            buffer = add_transitions(buffer, Transitions(**{k: jnp.asarray(v) for k, v in rows.items()}))
        self.offline_steps = int(meta["offline_steps"])
        return OnlineState(
            agent,
            buffer,
            env_step,
            int(meta["episodes_started"]),
            int(meta["policy_calls"]),
            int(meta.get("episodes_done", 0)),
        )

    def step_of(self, agent):
        return None

    def postfix(self, row, last_eval):
        postfix = progress_postfix(row, last_eval, self.meta["agent"])
        if "online/success" in row:
            postfix["online"] = f"{100 * row['online/success']:.0f}%"
        return postfix

    def finish(self, rows, directory):
        if directory is not None:
            kl_budget = plotted_kl_budget(self.meta)
            plot_learning_curve(
                rows,
                directory / "learning_curve.png",
                kl_budget=kl_budget,
                phase_boundary=self.offline_steps,
                agent=self.meta["agent"],
                caption=run_caption(
                    self.meta, self.offline_steps, kl_budget, f"then {self.config.steps:,} online environment steps"
                ),
            )


def train_online(
    agent: AbstractFlowAgent,
    offline: Transitions | ShardedDataset,
    config: OnlineConfig,
    env_factory: Callable[[], Any],
    *,
    evaluator: Evaluator | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    info: dict | None = None,
    loggers: Sequence[AbstractLogger] = (),
) -> TrainResult:
    """Continue training `agent` (fresh from the offline phase) while it acts in environments
    built by `env_factory`, for `config.steps` environment steps (see the module docstring), in
    `flowsoc.drive`.

    Metric rows go to `run_dir/metrics.jsonl` after the offline phase's, at step
    `offline updates + environment steps` (the reference's logging step); the figure marks where
    the online phase starts. `resume=True` continues from the newest online checkpoint.

    With a [`flowsoc.rl.ShardedDataset`][], the buffer starts from the shard the offline phase ended on, and every
    `offline.interval` environment steps its first rows are overwritten by the next shard (the official rule);
    the shards must have the same size.
    """
    shards = None
    if isinstance(offline, ShardedDataset):
        if len(set(offline.sizes)) > 1:
            raise ValueError(
                f"the shards hold {min(offline.sizes)} to {max(offline.sizes)} transitions: the online phase "
                "overwrites the replay buffer's first rows with each next shard, which needs shards of one size."
            )
        shards = offline
        shards.release_device()  # the offline phase's shards: the online phase uses the replay buffer
        offline = shards.transitions(shards.shard_at(int(agent.step)), prefetch=True)
    if not isinstance(offline, Transitions):
        raise TypeError(f"offline must be a flowsoc.rl.Transitions, got {type(offline).__name__}.")
    directory = None if run_dir is None else pathlib.Path(run_dir)
    agent = with_kl_budget(agent, config.kl_budget)
    capacity = offline.size + config.steps if config.buffer_capacity is None else config.buffer_capacity
    if capacity < offline.size + config.steps:
        raise ValueError(
            f"OnlineConfig.buffer_capacity={capacity} cannot hold the {offline.size} offline transitions and "
            f"{config.steps} online steps; leave it None or raise it."
        )
    meta = {
        **run_meta(agent, config, info or {}),
        "offline_data": dataset_fingerprint(offline if shards is None else shards),
        "num_envs": config.num_envs,
        "utd": config.utd,
        "steps_per_dispatch": config.steps_per_dispatch,
    }
    offline_steps = int(agent.step)
    if resume and (directory is None or latest_online_checkpoint(directory) is None):
        where = "no run directory was given" if directory is None else f"no online checkpoint in {directory / 'online'}"
        raise CheckpointError(f"No online checkpoint: {where}. Start without --resume.")
    rows = [] if directory is None or resume else read_rows(directory, up_to_step=offline_steps)
    last_eval_step = next((r["step"] for r in reversed(rows) if r["kind"] == "eval"), None)
    sparse = online_sparse_rewards(config, offline)  # refused before any environment is built
    state = OnlineState(agent, ReplayBuffer.from_transitions(offline, capacity), 0, 0, 0, 0)
    runner = make_env_runner(env_factory, config.num_envs, config.env_workers)
    try:
        collector = Collector(runner, config.seed, reward_fn=sparsify_rewards if sparse else None)
        title = " · ".join(str(v) for v in (info or {}).values())
        trainer = OnlineTrainer(offline, config, meta, evaluator, offline_steps, capacity, collector, title)
        if shards is not None:
            trainer.shards = shards
            trainer.first_shard = trainer.buffer_shard = shards.shard_at(offline_steps)
        result = drive(
            trainer,
            state,
            total=config.steps,
            block_size=config.steps_per_dispatch,
            run_dir=directory,
            checkpoint_dir=None if directory is None else directory / "online",
            resume=resume,
            eval_every=config.eval_every,
            eval_at_start=config.eval_at_start and last_eval_step != offline_steps,
            checkpoint_every=config.checkpoint_every,
            rows=rows,
            loggers=loggers,
            progress=config.progress,
            resume_flag="--resume",
        )
    finally:
        runner.close()
    return TrainResult(agent=result.state.agent, rows=result.rows, run_dir=directory, buffer=result.state.buffer)


__all__ = [
    "Collector",
    "OnlineConfig",
    "episode_seed",
    "OnlineState",
    "OnlineTrainer",
    "latest_online_checkpoint",
    "train_online",
    "with_kl_budget",
]
