"""The compact SAC used for the locomotion experts: the tanh-Gaussian density, the critic target,
and learning a contextual bandit."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from flowsoc.rl.ogbench._data import ReplayBuffer, Transitions
from flowsoc.rl.ogbench._sac import SAC, sac_updates, SACConfig, TanhGaussianActor


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

    from flowsoc.rl.ogbench._experts import evaluate_expert, train_expert

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

    from flowsoc.rl.ogbench._experts import evaluate_expert, train_expert

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


# ---------------------------------------------------------------------------------- expert training in the driver

# The settings of `test_expert_training_loop_on_a_toy_environment` (one compilation serves these tests too).
TOY = SACConfig(actor_hidden=(16,), critic_hidden=(16,), learning_rate=3e-3, discount=0.0)
TOY_RUN = dict(seed_steps=200, update_every=2, batch_size=32, steps_per_dispatch=100, progress=False)


def _train_toy(env_factory, run_dir, steps=400, **kwargs):
    from flowsoc.rl.ogbench._experts import train_expert

    return train_expert(env_factory, TOY, steps=steps, run_dir=run_dir, **{**TOY_RUN, **kwargs})


def _checkpoint_buffer(run_dir, capacity):
    """The agent's update count and the replay buffer of `run_dir`'s newest checkpoint."""
    import flowsoc as fs

    like = (SAC.create(jr.key(0), 3, 1, TOY), ReplayBuffer.empty(capacity, (3,), 1))
    (agent, buffer), meta, _ = fs.load_checkpoint(run_dir / "checkpoint", like)
    return meta, int(agent.step), buffer


def test_stopped_expert_training_resumes_without_losing_or_repeating_a_row(tmp_path, monkeypatch):
    """Ctrl-C inside the second update dispatch (the block ending at environment step 400) saves the
    state of step 300; resuming reaches the uninterrupted run's steps and updates, each row once; the
    warm-up's random actions come from (seed, environment step) alone; other settings are refused."""
    import functools

    from tests.rl.toy_envs import CounterEnv

    import flowsoc as fs
    import flowsoc.rl.ogbench._experts as experts
    from flowsoc._logging import read_rows

    run_dir = tmp_path / "run"
    env = functools.partial(CounterEnv, length=7)
    original, calls = experts.sac_updates, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(experts, "sac_updates", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _train_toy(env, run_dir, checkpoint_every=200)
    meta, updates, _ = _checkpoint_buffer(run_dir, 400)
    assert (meta["step"], meta["env_step"], updates) == (300, 300, 50)
    assert [r["step"] for r in read_rows(run_dir)] == [100, 200, 300]
    with pytest.raises(FileExistsError, match="--resume"):
        _train_toy(env, run_dir)
    agent, rows = _train_toy(env, run_dir, resume=True)
    assert [r["step"] for r in rows] == [100, 200, 300, 400]
    assert [r["updates"] for r in rows] == [0, 0, 50, 100] and int(agent.step) == 100
    assert read_rows(run_dir) == rows  # metrics.jsonl: every block's row once, in order
    assert len((run_dir / "train.csv").read_text().splitlines()) == 1 + 4
    assert all(np.isfinite(r["critic_loss"]) for r in rows[2:]) and "critic_loss" not in rows[1]
    # The warm-up (env steps 0-199, one action per policy call) from NumPy generators of (seed, block start).
    meta, updates, buffer = _checkpoint_buffer(run_dir, 400)
    assert (meta["step"], updates, int(buffer.size)) == (400, 100, 400)
    warmup = np.concatenate([np.random.default_rng([0, s]).uniform(-1, 1, 100) for s in (0, 100)])
    np.testing.assert_array_equal(np.asarray(buffer.data.actions[:200, 0]), warmup.astype(np.float32))
    with pytest.raises(fs.CheckpointError, match=r"batch_size \(32 saved, 16 now\)"):
        _train_toy(env, run_dir, steps=500, resume=True, batch_size=16)


def test_non_finite_sac_losses_stop_expert_training_at_the_last_good_checkpoint(tmp_path, monkeypatch):
    from tests.rl.toy_envs import BanditEnv

    import flowsoc as fs
    import flowsoc.rl.ogbench._experts as experts
    from flowsoc._logging import read_rows

    run_dir = tmp_path / "run"
    original, calls = experts.sac_updates, []

    def poisoned(*args, **kwargs):  # the second dispatch (the block ending at step 400) reports a NaN loss
        agent, metrics = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            metrics = {**metrics, "critic_loss": metrics["critic_loss"].at[7].set(jnp.nan)}
        return agent, metrics

    monkeypatch.setattr(experts, "sac_updates", poisoned)
    with pytest.raises(
        fs.NonFiniteError,
        match=r"non-finite critic_loss at environment step 400 \(updates 51-100\); training stopped and the last "
        r"good state \(env step 300\) is saved in .*ckpt-0000000300",
    ):
        _train_toy(BanditEnv, run_dir, steps=400)
    meta, updates, buffer = _checkpoint_buffer(run_dir, 400)
    assert (meta["step"], updates, int(buffer.size)) == (300, 50, 300)
    assert [r["step"] for r in read_rows(run_dir)] == [100, 200, 300]


def test_finished_expert_training_extends_to_more_steps_with_a_larger_buffer(tmp_path):
    """A finished run resumed with more steps continues from its last checkpoint, its replay buffer
    grown to the new size (oldest transitions first), the random warm-up continuing its sequence. The
    run stays in the warm-up (no update to compile)."""
    from tests.rl.toy_envs import CounterEnv

    from flowsoc.rl.ogbench._data import add_transitions
    from flowsoc.rl.ogbench._experts import _grow

    run_dir = tmp_path / "run"
    _train_toy(CounterEnv, run_dir, steps=100, seed_steps=300)
    agent, rows = _train_toy(CounterEnv, run_dir, steps=200, seed_steps=300, resume=True)
    assert [r["step"] for r in rows] == [100, 200] and int(agent.step) == 0
    meta, _, buffer = _checkpoint_buffer(run_dir, 200)
    assert (meta["step"], meta["capacity"], int(buffer.size), int(buffer.pointer)) == (200, 200, 200, 0)
    warmup = np.concatenate([np.random.default_rng([0, s]).uniform(-1, 1, 100) for s in (0, 100)])
    np.testing.assert_array_equal(np.asarray(buffer.data.actions[:, 0]), warmup.astype(np.float32))
    # A ring that has wrapped is unrolled oldest first.
    table = lambda a, b: Transitions(
        *(jnp.arange(a, b, dtype=jnp.float32).reshape(-1, *s) for s in ((1,), (1,), (), (), (), (1,)))
    )
    ring = add_transitions(ReplayBuffer.from_transitions(table(0, 4), 4), table(4, 6))  # rows 4 5 2 3, pointer 2
    grown = _grow(ring, 8)
    assert (int(grown.size), int(grown.pointer)) == (4, 4)
    np.testing.assert_array_equal(grown.data.rewards, [2, 3, 4, 5, 0, 0, 0, 0])
    assert _grow(ring, 4) is ring
