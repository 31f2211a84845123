"""One episode of OGBench data collection with OGBench's own environments and oracles.

This module runs inside the generator's worker processes. Every episode is seeded from
`(seed, episode index, attempt)` alone, never from the worker, so the data do not depend
on how episodes are spread over processes. The protocol follows upstream OGBench's
`data_gen_scripts/generate_manipspace.py` and `generate_locomaze.py` (written anew):

- manipulation `play`: open-loop plan oracles (noise 0.1, smoothing 0.5); `noisy`:
  closed-loop markov oracles with a per-episode Gaussian noise level xi ~ U(0, 0.1),
  per-coordinate scales (xi, xi, xi, 3 xi, 10 xi), and a probability `p_random_action`
  of a uniform random action;
- when the oracle finishes its sub-task, the env gets a new target (`set_new_target`)
  with a per-episode cube-stacking probability (double U(0, .25), triple U(.05, .35),
  quadruple U(.1, .5));
- scene episodes failing the cube-visibility health check are discarded and redrawn;
- pointmaze: the action is the unit direction to the BFS subgoal plus N(0, 0.5^2) noise;
  `navigate` resamples the goal (a vertex cell) on success, `stitch` aims at a cell four
  BFS steps away;
- antmaze / humanoidmaze: the same subgoals, but the action is the locomotion expert's
  tanh(mu(s)) on the state without x-y plus the unit subgoal direction, plus N(0, 0.2^2)
  noise; `explore` follows a random direction redrawn every 10 steps, with noise 1.0.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import numpy as np

from ._expert_actor import subgoal_direction


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Everything a worker needs to produce episode `i` (picklable, no live objects)."""

    env_id: str  # goal-conditioned env, e.g. "cube-double-v0"
    domain: str  # cube / scene / puzzle / pointmaze
    variant: str
    dataset_type: str  # play / noisy / navigate / stitch
    seed: int
    episode_length: int
    p_random_action: float
    noise: float
    noise_smoothing: float = 0.5  # plan oracles only
    min_norm: float = 0.4  # markov oracles only
    expert: str | None = None  # antmaze / humanoidmaze: the expert's actor file (or a shipped name)


_STATE: dict[str, Any] = {}

GOALS_KEY = "_goals_reached"
"""Maze episodes also return the number of commanded goals reached (navigate: each reached goal
is replaced by a new one; stitch and explore: 0 or 1) under this key, which is not written to the
data file."""


def _quiet_imports() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*DISPLAY.*")
    warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")  # OGBench's float64 Box bounds


def _build(cfg: RolloutConfig) -> dict[str, Any]:
    _quiet_imports()
    import gymnasium
    import ogbench  # noqa: F401  (registers the environments)

    if cfg.domain in ("pointmaze", "antmaze", "humanoidmaze"):
        env = gymnasium.make(cfg.env_id, terminate_at_goal=False, max_episode_steps=cfg.episode_length)
        maze = np.asarray(getattr(env.unwrapped, "maze_map"))
        free = [(i, j) for i in range(maze.shape[0]) for j in range(maze.shape[1]) if maze[i, j] == 0]

        def corridor(i: int, j: int) -> bool:
            vertical = maze[i - 1, j] == 0 and maze[i + 1, j] == 0 and maze[i, j - 1] == 1 and maze[i, j + 1] == 1
            horizontal = maze[i, j - 1] == 0 and maze[i, j + 1] == 0 and maze[i - 1, j] == 1 and maze[i + 1, j] == 1
            return bool(vertical or horizontal)

        vertices = [c for c in free if not corridor(*c)]
        actor = None
        if cfg.domain != "pointmaze":
            from ._expert_actor import EXPERT_OBS_DIM, load_expert

            if cfg.expert is None:
                raise ValueError(f"{cfg.env_id}: an expert policy is needed (RolloutConfig.expert)")
            actor = load_expert(cfg.expert, obs_dim=EXPERT_OBS_DIM[cfg.domain], action_dim=env.action_space.shape[0])
        return dict(env=env, maze=maze, free=free, vertices=vertices, actor=actor)

    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    env = gymnasium.make(
        cfg.env_id,
        terminate_at_goal=False,
        mode="data_collection",
        max_episode_steps=cfg.episode_length,
    )
    markov = cfg.dataset_type == "noisy"
    plan_kw: dict[str, Any] = dict(noise=cfg.noise, noise_smoothing=cfg.noise_smoothing)
    if cfg.domain == "cube":
        oracles = {
            "cube": CubeMarkovOracle(env=env, min_norm=cfg.min_norm) if markov else CubePlanOracle(env=env, **plan_kw)
        }
    elif cfg.domain == "scene":
        if markov:
            oracles = {
                "cube": CubeMarkovOracle(env=env, min_norm=cfg.min_norm, max_step=100),
                "button": ButtonMarkovOracle(env=env, min_norm=cfg.min_norm),
                "drawer": DrawerMarkovOracle(env=env, min_norm=cfg.min_norm),
                "window": WindowMarkovOracle(env=env, min_norm=cfg.min_norm),
            }
        else:
            oracles = {
                "cube": CubePlanOracle(env=env, **plan_kw),
                "button": ButtonPlanOracle(env=env, **plan_kw),
                "drawer": DrawerPlanOracle(env=env, **plan_kw),
                "window": WindowPlanOracle(env=env, **plan_kw),
            }
    elif cfg.domain == "puzzle":
        if markov:
            oracles = {"button": ButtonMarkovOracle(env=env, min_norm=cfg.min_norm, gripper_always_closed=True)}
        else:
            oracles = {"button": ButtonPlanOracle(env=env, gripper_always_closed=True, **plan_kw)}
    else:  # pragma: no cover - guarded by the name parser
        raise ValueError(f"no oracle for domain {cfg.domain!r}")
    return dict(env=env, oracles=oracles)


def _state(cfg: RolloutConfig) -> dict[str, Any]:
    if _STATE.get("cfg") != cfg:
        _STATE.clear()
        _STATE.update(_build(cfg), cfg=cfg)
    return _STATE


def _seed_episode(env: Any, cfg: RolloutConfig, episode: int, attempt: int, shard: int | None = None) -> int:
    """Seed every random source an episode touches; returns the env's reset seed. A shard's episodes take the
    shard as SeedSequence's spawn key: `(seed, shard, episode)` alone, never colliding with a standard file's."""
    spawn = () if shard is None else (shard,)
    words = np.random.SeedSequence([cfg.seed, episode, attempt], spawn_key=spawn).generate_state(4)
    np.random.seed(words)  # OGBench's oracles and maze noise draw from numpy's global generator
    env_seed = int(words[0])
    space = env.unwrapped.action_space
    space.seed(env_seed)  # the maze's reset takes a few steps with `action_space.sample()`
    return env_seed


def _stack_probability(variant: str, domain: str) -> float:
    if domain == "cube":
        low, high = {
            "single": (0.0, 0.0),
            "double": (0.0, 0.25),
            "triple": (0.05, 0.35),
            "quadruple": (0.1, 0.5),
        }[variant]
        return 0.0 if high == 0.0 else float(np.random.uniform(low, high))
    return 0.5


def _pack(steps: dict[str, list]) -> dict[str, np.ndarray]:
    dtypes = {"terminals": bool, "button_states": np.int64}
    return {k: np.asarray(v, dtype=dtypes.get(k, np.float32)) for k, v in steps.items()}


def _manip_episode(
    cfg: RolloutConfig, st: dict[str, Any], episode: int, attempt: int, shard: int | None = None
) -> dict[str, np.ndarray] | None:
    env, oracles = st["env"], st["oracles"]
    env_seed = _seed_episode(env, cfg, episode, attempt, shard)
    ob, info = env.reset(seed=env_seed)
    p_stack = _stack_probability(cfg.variant, cfg.domain)
    markov = cfg.dataset_type == "noisy"
    xi = float(np.random.uniform(0, cfg.noise)) if markov else 0.0
    noise_scale = np.array([xi, xi, xi, 3 * xi, 10 * xi])
    agent = oracles[info["privileged/target_task"]]
    agent.reset(ob, info)
    has_buttons = hasattr(env.unwrapped, "_cur_button_states")
    steps: dict[str, list] = {k: [] for k in ("observations", "actions", "terminals", "qpos", "qvel")}
    if has_buttons:
        steps["button_states"] = []
    done = False
    while not done:
        if np.random.rand() < cfg.p_random_action:
            # Uniform on the action box. Not `action_space.sample()`:
            # ManipSpace builds a fresh,
            # unseeded Box on every access, which would make the data irreproducible.
            space = env.unwrapped.action_space
            action = np.random.uniform(space.low, space.high)
        else:
            action = np.asarray(agent.select_action(ob, info), dtype=np.float64)
            if markov:
                action = action + np.random.normal(0.0, noise_scale, action.shape)
        action = np.clip(action, -1.0, 1.0)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = bool(terminated or truncated)
        if agent.done:
            agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
            agent = oracles[agent_info["privileged/target_task"]]
            agent.reset(agent_ob, agent_info)
        steps["observations"].append(ob)
        steps["actions"].append(action)
        steps["terminals"].append(done)
        steps["qpos"].append(info["prev_qpos"])
        steps["qvel"].append(info["prev_qvel"])
        if has_buttons:
            steps["button_states"].append(info["prev_button_states"])
        ob = next_ob
    out = _pack(steps)
    if cfg.domain == "scene" and not scene_is_healthy(out["qpos"]):
        return None
    return out


def scene_is_healthy(qpos: np.ndarray) -> bool:
    """
    Upstream's scene check: the cube stays visible (not too far right; far left only in
    the drawer).
    """
    cube = qpos[:, 14:17]
    too_right = (cube[:, 1] >= 0.29).any()
    too_left = ((cube[:, 1] <= -0.3) & ((cube[:, 2] < 0.06) | (cube[:, 2] > 0.08))).any()
    return not (too_right or too_left)


def _cells_at_distance(maze: np.ndarray, start: tuple[int, int], distance: int) -> list[tuple[int, int]]:
    dist = {start: 0}
    frontier = [start]
    found = []
    while frontier:
        nxt = []
        for i, j in frontier:
            for ni, nj in ((i - 1, j), (i, j - 1), (i + 1, j), (i, j + 1)):
                if 0 <= ni < maze.shape[0] and 0 <= nj < maze.shape[1] and maze[ni, nj] == 0 and (ni, nj) not in dist:
                    dist[(ni, nj)] = dist[(i, j)] + 1
                    nxt.append((ni, nj))
                    if dist[(ni, nj)] == distance:
                        found.append((ni, nj))
        frontier = nxt
    return found


def _maze_episode(
    cfg: RolloutConfig, st: dict[str, Any], episode: int, attempt: int, shard: int | None = None
) -> dict[str, np.ndarray]:
    env, free, vertices, actor = st["env"], st["free"], st["vertices"], st["actor"]
    u = env.unwrapped
    env_seed = _seed_episode(env, cfg, episode, attempt, shard)
    init_ij = free[np.random.randint(len(free))]
    if cfg.dataset_type == "stitch":  # a goal four cells away
        near = _cells_at_distance(st["maze"], init_ij, 4)
        goal_ij = near[np.random.randint(len(near))] if near else init_ij
    else:
        goal_ij = vertices[np.random.randint(len(vertices))]
    ob, _ = env.reset(seed=env_seed, options=dict(task_info=dict(init_ij=init_ij, goal_ij=goal_ij)))
    steps: dict[str, list] = {k: [] for k in ("observations", "actions", "terminals", "qpos", "qvel")}
    done, step, goals = False, 0, 0
    while not done:
        if cfg.dataset_type == "explore":
            if step % 10 == 0:
                wander = np.random.randn(2)
                wander = wander / (np.linalg.norm(wander) + 1e-6)
            direction = wander
        else:
            direction = subgoal_direction(u)
        action = direction if actor is None else actor.walk(u, direction)
        action = np.clip(action + np.random.normal(0.0, cfg.noise, action.shape), -1.0, 1.0)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = bool(terminated or truncated)
        if info["success"] and cfg.dataset_type == "navigate":
            u.set_goal(vertices[np.random.randint(len(vertices))])
            goals += 1
        elif info["success"] and goals == 0:
            goals = 1  # stitch / explore: whether the goal was reached at all
        steps["observations"].append(ob)
        steps["actions"].append(action)
        steps["terminals"].append(done)
        steps["qpos"].append(info["prev_qpos"])
        steps["qvel"].append(info["prev_qvel"])
        ob = next_ob
        step += 1
    return {**_pack(steps), GOALS_KEY: np.array([goals])}


def rollout_episode(cfg: RolloutConfig, episode: int, shard: int | None = None) -> dict[str, np.ndarray]:
    """Collect episode number `episode` (0-based over train then validation episodes) of shard `shard` of a large
    dataset (`None`: of a standard file).

    Returns the raw OGBench arrays of one episode: `observations`, `actions` (float32),
    `terminals` (bool, True at the last step), `qpos`, `qvel` (float32, the state
    *before* each action), and `button_states` (int64) for puzzle and scene.
    """
    st = _state(cfg)
    for attempt in range(1000):
        if "maze" in cfg.domain:
            return _maze_episode(cfg, st, episode, attempt, shard)
        out = _manip_episode(cfg, st, episode, attempt, shard)
        if out is not None:
            return out
    raise RuntimeError(f"episode {episode}: 1000 unhealthy scene rollouts in a row")


def exit_with_parent(parent: int, interval: float = 0.2) -> None:
    """`multiprocessing.Pool` initializer: end this worker as soon as process `parent` (the generator) is
    gone. Pool workers are daemons, which their parent ends when it exits normally, but a parent killed
    outright (kill -9, the OOM killer) ends nothing: its workers would run on until their episode is done.
    A daemon thread polls the parent process id (portable, unlike Linux's `PR_SET_PDEATHSIG`) and exits the
    process without cleanup (`os._exit`) once the worker has been re-parented."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def worker_episode(
    args: tuple[RolloutConfig, int] | tuple[RolloutConfig, int, int | None],
) -> tuple[int, dict[str, np.ndarray]]:
    """`multiprocessing` entry point: `(cfg, episode[, shard]) -> (episode, arrays)`."""
    cfg, episode, shard = (*args, None) if len(args) == 2 else args
    return episode, rollout_episode(cfg, episode, shard)
