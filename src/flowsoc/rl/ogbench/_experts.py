"""Training the low-level locomotion experts that OGBench's navigation datasets are generated with,
by SAC ([`flowsoc.rl.ogbench.SAC`][]), following upstream's protocol (`data_gen_scripts/main_sac.py`,
`commands.sh`):

- the ant: `online-ant-v0` wrapped in OGBench's `GymXYWrapper` (the goal direction in the
  observation, resampled every 100 steps), 400K environment steps, uniformly random actions for the
  first 10K, then one update per step;
- the humanoid: `online-humanoid-v0` in `DMCHumanoidXYWrapper` (resampled every 200 steps), 40M steps
  with one update every 4, 3x1024 LayerNorm critics and the mean of the two critics (many hours: run
  it as a background job).

Training runs in `flowsoc.drive` (`SACTrainer`): environment steps and updates alternate in blocks
(`steps_per_dispatch` steps, then as many updates fused into one compiled scan), one metric row per
block goes to `metrics.jsonl` / `train.csv`, a non-finite loss stops the run naming the environment
step, and `checkpoint/ckpt-<env step>/` (the newest two) holds the agent, the whole replay buffer and
the counters, written every `checkpoint_every` steps, at the end and on Ctrl-C. `--resume` continues a
stopped run from its newest checkpoint, or extends a finished one to more `--steps` (the episodes
running at the checkpoint end there; the warm-up's random actions are drawn from the seed and the
environment step, so they need no saved generator).

The result is a directory with `actor.npz` (the policy the dataset generator loads, see
`load_expert`), `expert.eqx` (the whole SAC state), `expert.json` (how it was trained and its
evaluation return), `training.png`, the metric rows and the `checkpoint/` folder.

    python -m flowsoc.rl.experts --expert ant --out experts/ant
    python -m flowsoc.rl.experts --expert ant --out experts/ant --resume   # after a Ctrl-C
"""

import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ..._checkpoint import CheckpointError, latest_checkpoint, read_meta, save_tree
from ..._driver import AbstractProgressMeter, AbstractTrainer, Block, drive, Saved
from ..._logging import read_rows
from .._buffers import add_transitions, ReplayBuffer, Transitions
from .._envs import InProcessEnvs
from .._online import Collector
from ._expert_actor import ExpertError, file_sha256, load_expert, NumpyActor, SHIPPED, subgoal_direction
from ._sac import SAC, sac_updates, SACConfig


@dataclasses.dataclass(frozen=True)
class ExpertArgs:
    """Train a locomotion expert by SAC (upstream's recipe) and save it with its training record."""

    expert: Literal["ant", "humanoid"] = "ant"
    """Which expert: the ant (antmaze) or the humanoid (humanoidmaze)."""
    out: str = "experts/ant"
    """Output directory (actor.npz, expert.eqx, expert.json, training.png, metrics.jsonl, train.csv, checkpoint/)."""
    steps: int | None = None
    """Environment steps (default: 400,000 for the ant, 40,000,000 for the humanoid)."""
    seed_steps: int = 10_000
    """Uniformly random actions for the first steps."""
    update_every: int | None = None
    """Environment steps per update (default: 1 for the ant, 4 for the humanoid)."""
    batch_size: int = 256
    """Transitions per update."""
    steps_per_dispatch: int = 1000
    """Environment steps between update dispatches."""
    eval_episodes: int = 10
    """Episodes of the deterministic policy evaluated at the end."""
    seed: int = 0
    """Seed of the networks, the actions and the resets."""
    checkpoint_every: int = 50_000
    """Write a checkpoint (agent, replay buffer, counters) to `out/checkpoint/` every this many environment
    steps; 0: only at the end and on Ctrl-C."""
    resume: bool = False
    """Continue a stopped training from out/checkpoint (or extend a finished one to more --steps)."""
    progress: bool = True
    """Show a progress bar."""


def make_xy_env(expert: str):
    """OGBench's directional locomotion environment for `expert` (`ant` or `humanoid`)."""
    import gymnasium
    import ogbench.online_locomotion  # noqa: F401  (registers the environments)
    from ogbench.online_locomotion.wrappers import DMCHumanoidXYWrapper, GymXYWrapper

    if expert == "ant":
        return GymXYWrapper(gymnasium.make("online-ant-v0"), resample_interval=100)
    if expert == "humanoid":
        return DMCHumanoidXYWrapper(gymnasium.make("online-humanoid-v0"), resample_interval=200)
    raise ValueError(f"expert must be 'ant' or 'humanoid', got {expert!r}.")


def expert_config(expert: str) -> SACConfig:
    """Upstream's SAC settings for `expert`."""
    if expert == "humanoid":
        return SACConfig(critic_hidden=(1024, 1024, 1024), layer_norm=True, min_q=False)
    return SACConfig()


_append = eqx.filter_jit(add_transitions, donate="all-except-first")
"""`add_transitions` compiled, the buffer not donated: the driver keeps the state a block started from
(saved on Ctrl-C or a non-finite block), so a block must not write into its buffer."""


@jax.jit
def _act(actor, obs, key, i):
    """One chunk of one action per environment, sampled from the actor with `fold_in(key, i)`."""
    return jax.vmap(actor.sample)(obs, jr.split(jr.fold_in(key, i), obs.shape[0]))[0][:, None]


def _grow(buffer: ReplayBuffer, capacity: int) -> ReplayBuffer:
    """`buffer`'s transitions, oldest first, in a buffer of `capacity` rows (when more than its own)."""
    if capacity <= buffer.capacity:
        return buffer
    size, pointer = int(buffer.size), int(buffer.pointer)
    order = np.arange(size) if size < buffer.capacity else (pointer + np.arange(size)) % buffer.capacity
    return ReplayBuffer.from_transitions(jax.tree.map(lambda x: x[order], buffer.data), capacity)


class SACState(NamedTuple):
    """SAC expert training between two blocks (host side): the agent, the replay buffer, the environment
    steps done, the collector's counters, the returns of the last (up to 20) training episodes and the
    training time so far."""

    agent: SAC
    buffer: ReplayBuffer
    env_step: int
    episodes_started: int
    policy_calls: int
    recent: tuple[float, ...] = ()
    wall_s: float = 0.0


SAC_KEYS = (
    "sac_config",
    "obs_dim",
    "action_dim",
    "seed_steps",
    "update_every",
    "batch_size",
    "steps_per_dispatch",
    "seed",
)
"""What a resumed expert training must share with its checkpoint (not `steps`: a finished run can be extended)."""


class SACTrainer(AbstractTrainer):
    """Blocks of acting and updating, for `flowsoc.drive`: each block collects `n` environment steps
    (uniformly random actions while the block starts within the first `seed_steps`, else actions
    sampled from the actor), adds them to the replay buffer, then, once past `seed_steps`, runs
    `n // update_every` SAC updates fused into one scan. The position is the environment step.
    `log(agent, row)` is called after every clean block."""

    unit = "env step"
    desc = "SAC"
    identity_keys = SAC_KEYS

    def __init__(
        self,
        collector: Collector,
        config: SACConfig,
        *,
        obs_dim: int,
        action_dim: int,
        capacity: int,
        seed_steps: int,
        update_every: int,
        batch_size: int,
        steps_per_dispatch: int,
        seed: int,
        log: Callable[[SAC, dict], None] | None = None,
    ):
        self.collector, self.config, self.capacity, self.log = collector, config, capacity, log
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.seed_steps, self.update_every, self.batch_size = seed_steps, update_every, batch_size
        self.steps_per_dispatch, self.seed = steps_per_dispatch, seed
        self.started = time.monotonic()
        self.wall_before = 0.0  # training time of the runs before a resume
        self.act_key = jr.key(seed + 1)

    def position(self, state):
        return state.env_step

    def _policy(self, state):
        if state.env_step < self.seed_steps:
            # from the seed and the block's first environment step: reproducible after a resume
            rng = np.random.default_rng([self.seed, state.env_step])
            return lambda obs, i: rng.uniform(-1, 1, (len(obs), 1, self.action_dim))
        actor = state.agent.nets.actor
        return lambda obs, i: np.asarray(_act(actor, np.asarray(obs, np.float32), self.act_key, i))

    def block(self, state, n):
        collector = self.collector
        collector.episodes_started, collector.policy_calls = state.episodes_started, state.policy_calls
        data, finished = collector.collect(self._policy(state), n)
        buffer = _append(state.buffer, Transitions(**{k: jnp.asarray(v) for k, v in data.items()}))
        env_step = state.env_step + n
        agent = state.agent
        row: dict[str, Any] = {"kind": "train", "step": env_step, "updates": int(agent.step)}
        if env_step > self.seed_steps:
            updates = n // self.update_every
            agent, metrics = sac_updates(agent, buffer, updates, self.batch_size)
            metrics = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
            bad = [k for k, v in metrics.items() if not np.all(np.isfinite(v))]
            if bad:
                first = int(state.agent.step)
                return Block(
                    state,
                    [],
                    f"{', '.join(bad)} at environment step {env_step} (updates {first + 1}-{first + updates})",
                )
            row.update({k: float(np.mean(v)) for k, v in metrics.items()})
            row["updates"] = int(agent.step)
        recent = (state.recent + tuple(ep["return"] for ep in finished))[-20:]
        if recent:
            row["return"] = float(np.mean(recent))
        wall_s = round(self.wall_before + time.monotonic() - self.started, 1)
        row["wall_s"] = wall_s
        new = SACState(agent, buffer, env_step, collector.episodes_started, collector.policy_calls, recent, wall_s)
        if self.log is not None:
            self.log(agent, row)
        return Block(new, [row])

    def identity(self):
        return {
            "trainer": "sac_expert",
            "sac_config": dataclasses.asdict(self.config),
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "seed_steps": self.seed_steps,
            "update_every": self.update_every,
            "batch_size": self.batch_size,
            "steps_per_dispatch": self.steps_per_dispatch,
            "seed": self.seed,
        }

    def save(self, state):
        meta = {
            "env_step": state.env_step,
            "capacity": state.buffer.capacity,
            # the collector's own counters: at a Ctrl-C inside a block they are ahead of the state's, and
            # the resumed run must not reuse the seeds of the episodes that block started
            "episodes_started": max(state.episodes_started, self.collector.episodes_started),
            "policy_calls": max(state.policy_calls, self.collector.policy_calls),
            "recent_returns": list(state.recent),
            "wall_s": state.wall_s,
        }
        return Saved((state.agent, state.buffer), meta)

    def restore(self, tree, meta, folder, state):
        agent, buffer = tree
        env_step = int(meta["env_step"])
        if int(buffer.size) != min(env_step, buffer.capacity):
            raise CheckpointError(
                f"The checkpoint in {folder} is inconsistent: {env_step} environment steps but {int(buffer.size)} "
                "transitions in its replay buffer."
            )
        self.wall_before = float(meta.get("wall_s", 0.0))
        self.started = time.monotonic()
        return SACState(
            agent,
            _grow(buffer, self.capacity),  # a run extended to more steps gets the larger buffer
            env_step,
            int(meta["episodes_started"]),
            int(meta["policy_calls"]),
            tuple(float(r) for r in meta.get("recent_returns", ())),
            self.wall_before,
        )

    def postfix(self, row, last_eval):
        return {k: f"{row[k]:.3g}" for k in ("return", "critic_loss", "alpha") if k in row}


def train_expert(
    env_factory: Callable[[], Any],
    config: SACConfig,
    *,
    steps: int,
    seed_steps: int = 10_000,
    update_every: int = 1,
    batch_size: int = 256,
    steps_per_dispatch: int = 1000,
    seed: int = 0,
    progress: bool | AbstractProgressMeter = True,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int = 0,
    log: Callable[[SAC, dict], None] | None = None,
) -> tuple[SAC, list[dict]]:
    """SAC in the environments of `env_factory` for `steps` environment steps (random actions for
    the first `seed_steps`, then one update per `update_every` steps, from a replay buffer of the last
    `min(steps, 1M)` transitions), in `flowsoc.drive` (`SACTrainer`).

    With `run_dir`, the rows go to `run_dir/metrics.jsonl` and `train.csv` and checkpoints to
    `run_dir/checkpoint/` every `checkpoint_every` environment steps (0: only at the end and on Ctrl-C);
    `resume=True` continues from the newest one (a finished run to more `steps`). A non-finite loss
    raises `flowsoc.NonFiniteError` naming the environment step, the last good state saved. Returns the
    agent and one row of metrics per block (the rows before a resume included); `log(agent, row)` is
    called after every block."""
    if steps % steps_per_dispatch or steps_per_dispatch % update_every:
        raise ValueError(
            f"steps={steps} must be a multiple of steps_per_dispatch={steps_per_dispatch}, itself a multiple of "
            f"update_every={update_every}."
        )
    directory = None if run_dir is None else pathlib.Path(run_dir)
    capacity = min(steps, 1_000_000)  # upstream's buffer: the last 1M transitions
    stored = capacity  # the buffer size of the checkpoint to resume (it is read into that shape)
    if resume and directory is not None and (folder := latest_checkpoint(directory / "checkpoint")) is not None:
        try:
            stored = int(read_meta(folder).get("capacity", capacity))
        except CheckpointError:
            pass  # the driver falls back to the previous checkpoint or names the problem
    runner = InProcessEnvs(env_factory, 1)
    try:
        env = runner.envs[0]
        obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
        agent = SAC.create(jr.key(seed), obs_dim, action_dim, config)
        state = SACState(agent, ReplayBuffer.empty(stored, (obs_dim,), action_dim), 0, 0, 0)
        trainer = SACTrainer(
            Collector(runner, seed),
            config,
            obs_dim=obs_dim,
            action_dim=action_dim,
            capacity=capacity,
            seed_steps=seed_steps,
            update_every=update_every,
            batch_size=batch_size,
            steps_per_dispatch=steps_per_dispatch,
            seed=seed,
            log=log,
        )
        result = drive(
            trainer,
            state,
            total=steps,
            block_size=steps_per_dispatch,
            run_dir=directory,
            resume=resume,
            checkpoint_every=checkpoint_every,
            progress=progress,
            resume_flag="--resume",
        )
    finally:
        runner.close()
    return result.state.agent, result.rows


def evaluate_expert(agent: SAC, env_factory: Callable[[], Any], episodes: int, seed: int = 0) -> dict[str, float]:
    """Mean undiscounted return and length of the deterministic policy (tanh of the mean)."""
    env = env_factory()
    act = jax.jit(lambda a, o: a.sample_actions(o, jr.key(0), deterministic=True))
    returns, lengths = [], []
    for i in range(episodes):
        np.random.seed(10_000 + seed * 1000 + i)  # OGBench's XY wrappers draw directions from NumPy's global generator
        ob, _ = env.reset(seed=10_000 + seed * 1000 + i)
        total, n, over = 0.0, 0, False
        while not over:
            ob, reward, term, trunc, _ = env.step(np.asarray(act(agent, jnp.asarray(ob, jnp.float32))))
            total, n, over = total + float(reward), n + 1, term or trunc
        returns.append(total)
        lengths.append(n)
    env.close()
    return {"return": float(np.mean(returns)), "return_std": float(np.std(returns)), "length": float(np.mean(lengths))}


def evaluate_navigation(actor: NumpyActor, env_id: str = "antmaze-large-v0", episodes_per_task: int = 2) -> dict:
    """The expert as the navigation datasets use it, without action noise: following the maze's oracle
    subgoals (unit direction from the x-y position to the next BFS waypoint) on each of the maze's five
    evaluation tasks, until the goal is reached or the episode's time limit. Returns the success rate
    overall and per task, and the mean steps of successful episodes."""
    import gymnasium
    import ogbench  # noqa: F401  (registers the environments)

    env = gymnasium.make(env_id, terminate_at_goal=True)
    u = env.unwrapped
    per_task, lengths = [], []
    for task in range(1, 6):
        successes = 0
        for episode in range(episodes_per_task):
            np.random.seed(1000 * task + episode)  # the maze's start and goal noise use NumPy's global generator
            env.reset(seed=1000 * task + episode, options=dict(task_id=task))
            info, steps, over = {"success": 0.0}, 0, False
            while not over:
                _, _, terminated, truncated, info = env.step(actor.walk(u, subgoal_direction(u)))
                steps, over = steps + 1, terminated or truncated
            successes += bool(info["success"])
            if info["success"]:
                lengths.append(steps)
        per_task.append(successes / episodes_per_task)
    env.close()
    return {
        "env": env_id,
        "success": float(np.mean(per_task)),
        "per_task": per_task,
        "episodes_per_task": episodes_per_task,
        "mean_steps_to_goal": float(np.mean(lengths)) if lengths else None,
    }


def reach_in_xy_env(
    actor: NumpyActor, expert: str = "ant", trials: int = 5, distance: float = 4.0, steps: int = 200, seed: int = 0
) -> list[bool]:
    """In the directional environment the expert was trained in, command the unit direction towards a
    goal `distance` away (in a random direction) at every step; whether each trial comes within 0.5 of
    it in `steps` steps."""
    env = make_xy_env(expert)
    rng = np.random.default_rng(seed)
    reached = []
    for trial in range(trials):
        np.random.seed(seed * 1000 + trial)
        env.reset(seed=seed * 1000 + trial)
        u = env.unwrapped
        angle = rng.uniform(0, 2 * np.pi)
        goal = u.data.qpos[:2] + distance * np.array([np.cos(angle), np.sin(angle)])
        ob = env.unwrapped._get_obs()
        hit = False
        for _ in range(steps):
            direction = goal - u.data.qpos[:2]
            if np.linalg.norm(direction) < 0.5:
                hit = True
                break
            env.z = direction / np.linalg.norm(direction)  # the wrapper's commanded direction
            ob, _, terminated, truncated, _ = env.step(actor(np.concatenate([ob, env.z])))
            ob = ob[:-2]
            if terminated or truncated:
                break
        reached.append(hit)
    env.close()
    return reached


def export_actor(agent: SAC, path: str | pathlib.Path) -> NumpyActor:
    """Write the agent's actor to `path` (`weight_k`, `bias_k` per layer, float32), the form the dataset
    generator loads (`load_expert`); returns it as a `NumpyActor`."""
    layers = agent.nets.actor.mlp.layers
    arrays: dict[str, np.ndarray] = {}
    for k, layer in enumerate(layers):
        arrays[f"weight_{k}"] = np.asarray(layer.weight, np.float32)
        arrays[f"bias_{k}"] = np.asarray(layer.bias, np.float32)
    path = pathlib.Path(path)
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return load_expert(path)


def plot_training(out: str | pathlib.Path, path: str | pathlib.Path | None = None) -> pathlib.Path:
    """Plot the training rows of `out/metrics.jsonl` (or `out/train.jsonl`, written by earlier versions): the
    training episodes' return and the temperature α against environment steps, into `path` (default
    `out/training.png`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = pathlib.Path(out)
    if (out / "metrics.jsonl").exists():
        rows = [r for r in read_rows(out) if r.get("kind") == "train"]
    else:
        rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines() if line.strip()]
    path = pathlib.Path(path) if path is not None else out / "training.png"
    fig, (ax_r, ax_a) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax_r.plot([r["step"] for r in rows if "return" in r], [r["return"] for r in rows if "return" in r])
    ax_r.set(xlabel="environment steps", ylabel="return (last 20 episodes)", title="SAC expert: return")
    ax_a.semilogy([r["step"] for r in rows if "alpha" in r], [r["alpha"] for r in rows if "alpha" in r])
    ax_a.set(xlabel="environment steps", ylabel="α", title="temperature")
    for ax in (ax_r, ax_a):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}K"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


NAVIGATION_ENV = {"ant": "antmaze-large-v0", "humanoid": "humanoidmaze-medium-v0"}
"""The maze each expert's goal-reaching rate is measured in."""


def finalize_expert(
    out: str | pathlib.Path, eval_episodes: int = 10, seed: int = 0, navigation_episodes_per_task: int = 2
) -> dict:
    """Export and evaluate the trained expert in `out` (`expert.eqx` and `expert.json` from training):
    writes `actor.npz` and adds to the record its SHA-256, the return in the directional environment
    (`evaluate_expert`), the goal-reaching rate in a maze (`evaluate_navigation`) and in open space
    (`reach_in_xy_env`). Returns the record."""
    out = pathlib.Path(out)
    record = json.loads((out / "expert.json").read_text())
    expert = record["expert"]
    factory = lambda: make_xy_env(expert)  # noqa: E731
    env = factory()
    like = SAC.create(jr.key(0), env.observation_space.shape[0], env.action_space.shape[0], expert_config(expert))
    env.close()
    from ..._checkpoint import load_tree

    agent = load_tree(out / "expert.eqx", like)
    actor = export_actor(agent, out / "actor.npz")
    reached = reach_in_xy_env(actor, expert, trials=10, seed=seed)
    record.update(
        actor_sha256=file_sha256(out / "actor.npz"),
        evaluation=evaluate_expert(agent, factory, eval_episodes, seed),
        navigation=evaluate_navigation(actor, NAVIGATION_ENV[expert], navigation_episodes_per_task),
        xy_reach={"trials": len(reached), "reached": int(sum(reached)), "distance": 4.0, "steps": 200},
    )
    (out / "expert.json").write_text(json.dumps(record, indent=2))
    return record


def main(args: ExpertArgs) -> pathlib.Path:
    """Train, evaluate and save the expert described by `args`. The metric rows (one per block) go to
    `out/metrics.jsonl` and `out/train.csv`, checkpoints to `out/checkpoint/` every `checkpoint_every`
    steps (kept at the end: `--resume` with more `--steps` extends the training)."""
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps or (400_000 if args.expert == "ant" else 40_000_000)
    update_every = args.update_every or (1 if args.expert == "ant" else 4)
    config = expert_config(args.expert)
    factory = lambda: make_xy_env(args.expert)  # noqa: E731
    agent, rows = train_expert(
        factory,
        config,
        steps=steps,
        seed_steps=args.seed_steps,
        update_every=update_every,
        batch_size=args.batch_size,
        steps_per_dispatch=args.steps_per_dispatch,
        seed=args.seed,
        progress=args.progress,
        run_dir=out,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
    )
    save_tree(out / "expert.eqx", agent)
    (out / "snapshot.eqx").unlink(missing_ok=True)  # the earlier versions' unresumable snapshot
    record = {
        "expert": args.expert,
        "args": dataclasses.asdict(args),
        "sac_config": dataclasses.asdict(config),
        "steps": steps,
        "updates": int(agent.step),
        "train_wall_s": rows[-1].get("wall_s") if rows else None,
        "jax": jax.__version__,
    }
    (out / "expert.json").write_text(json.dumps(record, indent=2))
    record = finalize_expert(out, args.eval_episodes, args.seed)
    plot_training(out)
    evaluation, navigation = record["evaluation"], record["navigation"]
    print(
        f"{args.expert} expert: return {evaluation['return']:.1f} ± {evaluation['return_std']:.1f} over "
        f"{args.eval_episodes} episodes; maze goals reached {navigation['success']:.0%} ({navigation['env']}); "
        f"saved in {out}"
    )
    return out


__all__ = [
    "ExpertArgs",
    "ExpertError",
    "NumpyActor",
    "SACState",
    "SACTrainer",
    "SHIPPED",
    "evaluate_expert",
    "evaluate_navigation",
    "finalize_expert",
    "reach_in_xy_env",
    "expert_config",
    "export_actor",
    "load_expert",
    "make_xy_env",
    "plot_training",
    "train_expert",
]
