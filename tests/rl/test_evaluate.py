"""Evaluation: open-loop chunks, success from the last step's info, lockstep waves, seeds; and one
episode in a real OGBench environment."""

import jax.random as jr
import numpy as np
import pytest

from flowsoc.rl import AgentConfig, TRQAM
from flowsoc.rl._evaluate import agent_policy, evaluate
from flowsoc.rl.ogbench._envs import make_envs


class LineEnv:
    """x_{t+1} = x_t + a_t (1-D); success when x reaches `goal`; time limit `limit` steps."""

    def __init__(self, goal=3.0, limit=7):
        self.goal, self.limit, self.seeds, self.actions = goal, limit, [], []

    def reset(self, seed=None):
        self.seeds.append(seed)
        self.x, self.t = 0.0, 0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.actions.append(float(action[0]))
        self.x += float(action[0])
        self.t += 1
        success = self.x >= self.goal
        return np.array([self.x], np.float32), float(success) - 1.0, success, self.t >= self.limit, {"success": success}


def test_chunks_run_open_loop_and_success_comes_from_info():
    calls = []

    def policy(obs, key):  # chunks of 2: +1 then +1 for env 0, +0.25 twice for env 1
        calls.append(obs.copy())
        return np.stack([np.ones((2, 1)), np.full((2, 1), 0.25)])[: len(obs)]

    envs = [LineEnv(), LineEnv()]
    result = evaluate(policy, envs, 3, jr.key(0), seed=100)
    # episode 0 (env 0) reaches 3 after 3 steps; the chunk's 4th action is never executed
    # episode 1 (env 1) times out after 7 steps at x = 1.75; episode 2 reuses env 0 and succeeds.
    np.testing.assert_array_equal(result.success, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(result.lengths, [3, 7, 3])
    np.testing.assert_array_equal(result.returns, [-2.0, -7.0, -2.0])
    assert envs[0].seeds == [100, 102] and envs[1].seeds == [101]
    assert envs[0].actions == [1.0] * 6 and len(envs[1].actions) == 7
    # one policy call per chunk, always with both environments' observations (a fixed shape)
    assert all(c.shape == (2, 1) for c in calls)
    assert len(calls) == 4 + 2  # first wave: ceil(7 / 2) chunks; second wave: 2
    np.testing.assert_array_equal(calls[1][:, 0], [2.0, 0.5])  # observed only after each full chunk
    assert result.success_rate == pytest.approx(2 / 3)
    assert result.summary("p/") == {"p/success": 2 / 3, "p/return": pytest.approx(-11 / 3), "p/length": 13 / 3}


def test_bad_arguments():
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        evaluate(lambda o, k: o, [LineEnv()], 0, jr.key(0))
    with pytest.raises(ValueError, match="at least one environment"):
        make_envs("cube-single-play-singletask-task1-v0", 0)


def test_agent_in_ogbench_environment():
    env_name = "cube-single-play-singletask-task1-v0"
    (env,) = make_envs(env_name, 1)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    config = AgentConfig.small(actor_hidden=(8,), critic_hidden=(8,), num_critics=2, flow_steps=2)
    agent = TRQAM.create(jr.key(0), obs_dim, action_dim, config)
    chunk = agent_policy(agent, "behaviour")(np.zeros((1, obs_dim), np.float32), jr.key(1))
    assert chunk.shape == (1, config.horizon, action_dim) and np.all(np.abs(chunk) <= 1)
    with pytest.raises(ValueError, match="flow must be one of"):
        agent_policy(agent, "critic")(np.zeros((1, obs_dim), np.float32), jr.key(1))
    result = evaluate(agent_policy(agent), [env], 1, jr.key(2))
    assert result.lengths[0] == env.spec.max_episode_steps  # an untrained policy does not succeed
    assert result.success[0] == 0.0 and result.returns[0] < 0
