"""The compact SAC used for the locomotion experts: the tanh-Gaussian density, the critic target,
and learning a contextual bandit."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from flowsoc.rl.data import ReplayBuffer, Transitions
from flowsoc.rl.sac import SAC, sac_updates, SACConfig, TanhGaussianActor


def test_tanh_gaussian_density_integrates_to_one_and_matches_change_of_variables():
    actor = TanhGaussianActor(3, 1, SACConfig(actor_final_scale=0.3, actor_hidden=(8,)), key=jr.key(0))
    obs = jnp.array([0.3, -1.0, 2.0])
    mean, log_std = actor(obs)
    # Sampled actions: log π(a) = log N(u; μ, σ²) - log(1 - tanh(u)²) with u = atanh(a).
    keys = jr.split(jr.key(1), 200)
    a, logp = jax.vmap(lambda k: actor.sample(obs, k))(keys)
    inside = jnp.abs(a[:, 0]) < 0.99  # atanh of a saturated tanh loses the digits the direct formula needs
    assert int(inside.sum()) > 150
    u = jnp.arctanh(a[inside, 0])
    direct = jax.scipy.stats.norm.logpdf(u, mean[0], jnp.exp(log_std[0])) - jnp.log1p(-(jnp.tanh(u) ** 2))
    np.testing.assert_allclose(logp[inside], direct, rtol=1e-8, atol=1e-8)
    # The density over a in (-1, 1) integrates to one.
    grid = jnp.linspace(-1 + 1e-6, 1 - 1e-6, 200_001)
    ug = jnp.arctanh(grid)
    density = jnp.exp(jax.scipy.stats.norm.logpdf(ug, mean[0], jnp.exp(log_std[0]))) / (1 - grid**2)
    assert abs(float(jnp.trapezoid(density, grid)) - 1.0) < 1e-3


def batch_of(n=16, seed=0, masks=1.0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 3))
    return Transitions(
        observations=jnp.asarray(obs),
        actions=jnp.asarray(rng.uniform(-1, 1, (n, 1))),
        rewards=jnp.asarray(rng.normal(size=n)),
        masks=jnp.full(n, masks),
        terminals=jnp.zeros(n),
        next_observations=jnp.asarray(rng.normal(size=(n, 3))),
    )


@pytest.mark.parametrize("discount, masks", [(0.0, 1.0), (0.99, 0.0)])
def test_critic_loss_without_bootstrap_is_regression_on_rewards(discount, masks):
    agent = SAC.create(jr.key(0), 3, 1, SACConfig(actor_hidden=(8,), critic_hidden=(8,), discount=discount))
    batch = batch_of(masks=masks)
    _, metrics = agent.losses(agent.nets, batch, jr.key(2))
    q = jax.vmap(agent.nets.critic)(batch.observations, batch.actions)
    np.testing.assert_allclose(metrics["critic_loss"], jnp.mean((q - batch.rewards[:, None]) ** 2), rtol=1e-10)


def test_sac_learns_a_contextual_bandit():
    # Contexts ±1 in the first coordinate; the best action is 0.6 * context, reward 1 - 4 (a - best)².
    rng = np.random.default_rng(0)
    n = 4096
    ctx = rng.choice([-1.0, 1.0], n)
    obs = np.stack([ctx, np.zeros(n), np.zeros(n)], 1)
    actions = rng.uniform(-1, 1, (n, 1))
    rewards = 1 - 4 * (actions[:, 0] - 0.6 * ctx) ** 2
    zeros = np.zeros(n)
    data = Transitions(*(jnp.asarray(x) for x in (obs, actions, rewards, zeros, zeros + 1, obs)))
    buffer = ReplayBuffer.from_transitions(data, n)
    config = SACConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), learning_rate=3e-3, discount=0.0)
    agent = SAC.create(jr.key(0), 3, 1, config)
    for _ in range(3):
        agent, metrics = sac_updates(agent, buffer, 500, 128)
    probe = jnp.array([[1.0, 0, 0], [-1.0, 0, 0]])
    best = agent.sample_actions(probe, jr.key(0), deterministic=True)[:, 0]
    np.testing.assert_allclose(best, [0.6, -0.6], atol=0.1)
    # The temperature was tuned: entropy near its target (-0.5 for one action dimension).
    assert abs(float(metrics["entropy"][-100:].mean()) - agent.target_entropy) < 0.5
    assert int(agent.step) == 1500


def test_sac_learns_to_hold_a_point_mass_at_the_origin():
    """A 30-step control task (`PointMassEnv`): 3000 environment steps of SAC bring the deterministic
    policy's return (-Σ|x|) far above both the untrained policy's and that of doing nothing."""
    from tests.rl.toy_envs import PointMassEnv

    from flowsoc.rl.experts import evaluate_expert, train_expert

    config = SACConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), learning_rate=3e-3, discount=0.9)
    agent, rows = train_expert(
        PointMassEnv, config, steps=3000, seed_steps=600, batch_size=64, steps_per_dispatch=300, progress=False
    )
    untrained = evaluate_expert(SAC.create(jr.key(0), 2, 1, config), PointMassEnv, episodes=20)["return"]
    env, still = PointMassEnv(), []
    for i in range(20):  # the same start states as the evaluation, holding a = 0
        env.reset(seed=10_000 + i)
        still.append(sum(-abs(float(env.step(np.zeros(1))[0][0])) for _ in range(env.length)))
    learned = evaluate_expert(agent, PointMassEnv, episodes=20)["return"]
    assert learned > 0.5 * np.mean(still) and learned > 0.5 * untrained, (learned, np.mean(still), untrained)
    assert rows[-1]["return"] > rows[0]["return"] + 5  # the training episodes improve too


def test_expert_training_loop_on_a_toy_environment():
    from tests.rl.toy_envs import BanditEnv

    from flowsoc.rl.experts import evaluate_expert, train_expert

    config = SACConfig(actor_hidden=(16,), critic_hidden=(16,), learning_rate=3e-3, discount=0.0)
    agent, rows = train_expert(
        BanditEnv,
        config,
        steps=400,
        seed_steps=100,
        update_every=2,
        batch_size=32,
        steps_per_dispatch=100,
        progress=False,
    )
    # Random actions for the first block (no updates), then one update per two environment steps.
    assert [r["step"] for r in rows] == [100, 200, 300, 400]
    assert [r["updates"] for r in rows] == [0, 50, 100, 150] and int(agent.step) == 150
    assert "critic_loss" not in rows[0] and all(np.isfinite(r["critic_loss"]) for r in rows[1:])
    assert all("return" in r for r in rows)  # one-step episodes: returns every block
    result = evaluate_expert(agent, BanditEnv, episodes=4)
    assert result["length"] == 1.0 and np.isfinite(result["return"])
    with pytest.raises(ValueError, match="multiple of steps_per_dispatch"):
        train_expert(BanditEnv, config, steps=450, steps_per_dispatch=100)
