"""Environments for the online phase, stepped a chunk at a time, in this process or in worker
processes.

An *env runner* holds `E` gymnasium environments and offers two calls:

- `reset(seeds)`: reset environment `i` with `seeds[i]` (or leave it alone for `None`), returning
  the new first observations;
- `run(actions)`: for each environment `i`, execute the actions `actions[i]` of shape `(k_i, A)` in
  order (open loop) and stop early at the episode's end; returns a `Segment` per environment.

`InProcessEnvs` steps them one after the other in this process; `WorkerEnvs` gives each its own
process (the chunks of all environments then run in parallel, one message per chunk, not per
step). Both take a picklable factory, e.g. `flowsoc.rl.ogbench.OGBenchEnvFactory(name)`.
"""

import dataclasses
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Segment:
    """What one environment did with one list of actions: `m` steps (`m` = all actions, or fewer
    when the episode ended), with `next_observations[j]` the observation after action `j`."""

    next_observations: np.ndarray  # (m, *obs)
    rewards: np.ndarray  # (m,)
    terminated: np.ndarray  # (m,) bool
    truncated: np.ndarray  # (m,) bool
    success: float  # info["success"] at the last step (0 when absent)

    @property
    def steps(self) -> int:
        return len(self.rewards)

    @property
    def done(self) -> bool:
        return bool(self.steps and (self.terminated[-1] or self.truncated[-1]))


def run_actions(env, actions: np.ndarray) -> Segment:
    """Step `env` with each row of `actions` until they run out or the episode ends."""
    obs, rewards, terminated, truncated, success = [], [], [], [], 0.0
    for action in actions:
        ob, reward, term, trunc, info = env.step(np.asarray(action))
        obs.append(np.asarray(ob, np.float32))
        rewards.append(float(reward))
        terminated.append(bool(term))
        truncated.append(bool(trunc))
        success = float(info.get("success", 0.0))
        if term or trunc:
            break
    if not obs:
        shape = env.observation_space.shape
        return Segment(np.zeros((0, *shape), np.float32), np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), 0.0)
    return Segment(np.stack(obs), np.asarray(rewards), np.asarray(terminated), np.asarray(truncated), success)


@runtime_checkable
class EnvRunner(Protocol):
    """What `Collector` needs of a set of environments (see the module docstring)."""

    num_envs: int

    def reset(self, seeds: Sequence[int | None]) -> list[np.ndarray | None]: ...

    def run(self, actions: Sequence[np.ndarray]) -> list[Segment]: ...

    def close(self) -> None: ...


class InProcessEnvs:
    """`E` environments stepped one after the other in this process."""

    def __init__(self, factory: Callable[[], Any], num_envs: int):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
        self.envs = [factory() for _ in range(num_envs)]
        self.num_envs = num_envs

    def reset(self, seeds):
        return [
            None if s is None else np.asarray(env.reset(seed=int(s))[0], np.float32) for env, s in zip(self.envs, seeds)
        ]

    def run(self, actions):
        return [run_actions(env, a) for env, a in zip(self.envs, actions)]

    def close(self):
        for env in self.envs:
            env.close()


def _worker(conn, factory):
    try:
        env = factory()
        conn.send(("ok", None))
    except Exception:  # noqa: BLE001 - reported to the parent
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        command, payload = conn.recv()
        try:
            if command == "reset":
                out = np.asarray(env.reset(seed=int(payload))[0], np.float32)
            elif command == "run":
                out = run_actions(env, payload)
            else:  # "close"
                env.close()
                conn.send(("ok", None))
                return
            conn.send(("ok", out))
        except Exception:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class WorkerEnvs:
    """`E` environments, each in its own worker process (spawned, so it is safe next to JAX's
    threads; a script using it needs the `if __name__ == "__main__":` guard). All environments
    execute their chunks at the same time; messages go per chunk, not per step."""

    def __init__(self, factory: Callable[[], Any], num_envs: int):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
        import multiprocessing as mp  # here, not at the top: the in-process runner needs none of it

        ctx = mp.get_context("spawn")
        self.num_envs = num_envs
        self._conns, self._procs = [], []
        for _ in range(num_envs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, factory), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._gather(range(num_envs), "start")

    def _gather(self, ids, what):
        out = []
        for i in ids:
            try:
                status, payload = self._conns[i].recv()
            except EOFError:
                self.close()
                raise RuntimeError(f"environment worker {i} died during {what}.") from None
            if status != "ok":
                self.close()
                raise RuntimeError(f"environment worker {i} failed during {what}:\n{payload}")
            out.append(payload)
        return out

    def reset(self, seeds):
        ids = [i for i, s in enumerate(seeds) if s is not None]
        for i in ids:
            self._conns[i].send(("reset", int(seeds[i])))
        obs = dict(zip(ids, self._gather(ids, "reset")))
        return [obs.get(i) for i in range(self.num_envs)]

    def run(self, actions):
        for conn, a in zip(self._conns, actions):
            conn.send(("run", np.asarray(a)))
        return self._gather(range(self.num_envs), "run")

    def close(self):
        for conn, proc in zip(self._conns, self._procs):
            try:
                if proc.is_alive():
                    conn.send(("close", None))
                    conn.recv()
            except (OSError, EOFError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []

    def __del__(self):  # pragma: no cover - best effort
        if getattr(self, "_procs", None):
            self.close()


def make_env_runner(factory: Callable[[], Any], num_envs: int, workers: bool) -> EnvRunner:
    """`WorkerEnvs` when `workers`, else `InProcessEnvs`."""
    return (WorkerEnvs if workers else InProcessEnvs)(factory, num_envs)


__all__ = [
    "EnvRunner",
    "InProcessEnvs",
    "Segment",
    "WorkerEnvs",
    "make_env_runner",
    "run_actions",
]
