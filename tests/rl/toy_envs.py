"""Tiny gymnasium environments for the online-phase tests (importable by spawned workers)."""

import gymnasium as gym
import numpy as np


class CounterEnv(gym.Env):
    """A bookkeeping environment: the observation is `(episode, t, last action)` with `episode` the
    reset seed mod 1000 over 1000, the reward
    is `t` after the step, episodes are truncated after `length` steps. `nan_at` makes step
    `nan_at` of an episode return a NaN observation; `interrupt_at` raises KeyboardInterrupt (a
    Ctrl-C) at that step of the environment's life."""

    def __init__(self, length: int = 7, nan_at: int | None = None, interrupt_at: int | None = None):
        self.length, self.nan_at, self.interrupt_at, self.steps = length, nan_at, interrupt_at, 0
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.ep, self.t = 0.0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.ep, self.t = (seed % 1000) / 1000, 0
        return np.array([self.ep, 0.0, 0.0], np.float32), {}

    def step(self, action):
        self.steps += 1
        if self.steps == self.interrupt_at:
            raise KeyboardInterrupt
        self.t += 1
        obs = np.array([self.ep, self.t, float(np.asarray(action)[0])], np.float32)
        if self.nan_at is not None and self.t == self.nan_at:
            obs[1] = np.nan
        return obs, float(self.t), False, self.t >= self.length, {"success": float(self.t >= self.length)}


class BanditEnv(gym.Env):
    """A one-step contextual bandit: the observation is a one-hot context (padded to 3 entries, the
    width of `CounterEnv`'s, so both share compiled agents), the best action is
    +0.6 for context 0 and -0.6 for context 1, and the reward is `1 - 4 (a - best)²`; success
    when the reward exceeds 0.5."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.ctx = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.ctx = int(self.np_random.integers(2))
        return np.eye(3, dtype=np.float32)[self.ctx], {}

    def step(self, action):
        best = 0.6 if self.ctx == 0 else -0.6
        reward = 1.0 - 4.0 * (float(np.asarray(action)[0]) - best) ** 2
        obs = np.eye(3, dtype=np.float32)[self.ctx]
        return obs, reward, True, False, {"success": float(reward > 0.5)}


class PointMassEnv(gym.Env):
    """A damped point mass on a line, to be brought to the origin and held there: position and
    velocity follow `x += 0.1 v`, `v = 0.9 v + 0.2 a` (a in [-1, 1]), the reward is `-|x|` per step,
    episodes start at `x ~ U(-1, 1)`, `v = 0` and last 30 steps."""

    length = 30

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.state = np.zeros(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = np.array([self.np_random.uniform(-1.0, 1.0), 0.0])
        self.t = 0
        return self.state.astype(np.float32), {}

    def step(self, action):
        x, v = self.state
        a = float(np.clip(np.asarray(action)[0], -1.0, 1.0))
        x, v = x + 0.1 * v, 0.9 * v + 0.2 * a
        self.state, self.t = np.array([x, v]), self.t + 1
        return self.state.astype(np.float32), -abs(x), False, self.t >= self.length, {"success": float(abs(x) < 0.1)}
