"""The online phase: open-loop collection, the replay buffer it fills, resume, and learning."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from tests.rl.bandit import BANDIT_CONFIG
from tests.rl.toy_envs import BanditEnv, CounterEnv

from flowsoc.rl import TRQAM
from flowsoc.rl._envs import InProcessEnvs, WorkerEnvs
from flowsoc.rl._online import (
    Collector,
    episode_seed,
    latest_online_checkpoint,
    OnlineConfig,
    train_online,
    with_kl_budget,
)
from flowsoc.rl._train import CheckpointError, load_transitions
from flowsoc.rl.ogbench._data import sample_chunks


# ---------------------------------------------------------------------------------- collection


def chunk_policy(horizon):
    """Chunks whose actions encode the call: action j of call c is (c + 1) / 100 + j / 1000."""

    def policy(obs, call):
        chunk = (call + 1) / 100 + np.arange(horizon) / 1000
        return np.broadcast_to(chunk[None, :, None], (len(obs), horizon, 1)).astype(np.float32)

    return policy


@pytest.mark.parametrize("num_envs", [1, 2])
def test_collector_rows_chunks_and_episodes(num_envs):
    length, horizon, per_env = 7, 3, 10
    collector = Collector(InProcessEnvs(functools.partial(CounterEnv, length), num_envs), seed=3)
    blocks = [collector.collect(chunk_policy(horizon), per_env) for _ in range(3)]
    for rows, _ in blocks:
        assert all(len(v) == num_envs * per_env for v in rows.values())  # exactly the steps taken
    # Reassemble each environment's stream from its segments (environment-major within a block).
    streams = [
        {k: np.concatenate([rows[k][i * per_env : (i + 1) * per_env] for rows, _ in blocks]) for k in blocks[0][0]}
        for i in range(num_envs)
    ]
    for s in streams:
        t = s["observations"][:, 1]
        # Time restarts at 0 after each episode end; s' of a step is s of the next within an episode.
        ends = np.flatnonzero(s["next_observations"][:, 1] == length)
        assert np.array_equal(ends, np.arange(length - 1, 3 * per_env, length))
        assert np.array_equal(t, np.arange(3 * per_env) % length)
        inside = np.setdiff1d(np.arange(3 * per_env - 1), ends)
        assert np.array_equal(s["next_observations"][inside], s["observations"][inside + 1])
        assert np.array_equal(s["rewards"], s["next_observations"][:, 1])
        assert np.all(s["masks"] == 1.0)  # truncations, never terminations
        # Each episode starts with a fresh chunk (its first action is action 0 of a call), and chunks
        # run open loop across block boundaries: within an episode, actions go 0, 1, 2, 0, 1, 2, ...
        position = np.round(s["actions"][:, 0] * 1000) % 10
        assert np.array_equal(position, (np.arange(3 * per_env) % length) % horizon)
        # The episode (reset seed) changes exactly at episode ends.
        assert np.array_equal(np.flatnonzero(np.diff(s["observations"][:, 0])), ends)
    for b, (rows, finished) in enumerate(blocks):
        terminal_rows = np.flatnonzero(rows["terminals"])
        expected = {i * per_env + e for i in range(num_envs) for e in range(per_env) if (b * per_env + e) % length == 6}
        if num_envs > 1:  # segment ends are truncations, so no chunk spans two environments
            expected |= {i * per_env + per_env - 1 for i in range(num_envs)}
        assert set(terminal_rows) == expected
        assert all(ep["length"] == length and ep["success"] == 1.0 for ep in finished)
    assert sum(len(f) for _, f in blocks) == num_envs * (3 * per_env // length)
    assert collector.episodes_started == num_envs * (1 + 3 * per_env // length)


def test_worker_envs_equal_in_process():
    factory = functools.partial(CounterEnv, 5)
    local = Collector(InProcessEnvs(factory, 2), seed=1)
    workers = WorkerEnvs(factory, 2)
    try:
        remote = Collector(workers, seed=1)
        for _ in range(2):
            a, fa = local.collect(chunk_policy(2), 6)
            b, fb = remote.collect(chunk_policy(2), 6)
            assert fa == fb
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
    finally:
        workers.close()


def test_worker_errors_are_reported():
    with pytest.raises(RuntimeError, match="worker 0 failed during start"):
        WorkerEnvs(functools.partial(CounterEnv, 7, colour="blue"), 1)  # the constructor raises TypeError


def test_non_finite_observation_stops_collection():
    collector = Collector(InProcessEnvs(functools.partial(CounterEnv, 7, nan_at=3), 1), seed=0)
    with pytest.raises(FloatingPointError, match="non-finite observation"):
        collector.collect(chunk_policy(2), 5)


def test_episode_seeds_are_distinct():
    seeds = [episode_seed(s, i) for s in range(3) for i in range(1000)]
    assert len(set(seeds)) == len(seeds)


# ---------------------------------------------------------------------------------- the loop

# One block size, batch size, buffer capacity and observation width everywhere: a single compiled
# update block (64 offline rows + up to 1200 online steps).
ONLINE = OnlineConfig(
    steps=400,
    buffer_capacity=64 + 1200,
    start_training=100,
    steps_per_dispatch=100,
    batch_size=64,
    eval_every=0,
    checkpoint_every=200,
    progress=False,
)


def bandit_offline(n=64, seed=0):
    """A poor offline dataset for `BanditEnv`: 64 uniformly random actions."""
    rng = np.random.default_rng(seed)
    ctx = rng.integers(2, size=n)
    obs = np.eye(3, dtype=np.float32)[ctx]
    actions = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    rewards = 1 - 4 * (actions[:, 0] - np.where(ctx == 0, 0.6, -0.6)) ** 2
    ones = np.ones(n, np.float32)
    return load_transitions(
        dict(observations=obs, actions=actions, rewards=rewards, masks=0 * ones, terminals=ones, next_observations=obs)
    )


def rows_of(buffer, start, stop):
    return {
        k: np.asarray(getattr(buffer.data, k)[start:stop])
        for k in ("observations", "actions", "rewards", "masks", "terminals", "next_observations")
    }


def test_buffer_holds_offline_then_exactly_the_online_steps_and_sampling_mixes_them():
    offline = bandit_offline()
    agent = TRQAM.create(jr.key(0), 3, 1, BANDIT_CONFIG)
    result = train_online(agent, offline, ONLINE, BanditEnv)
    buffer = result.buffer
    assert int(buffer.size) == offline.size + ONLINE.steps and buffer.capacity == ONLINE.buffer_capacity
    for k, v in rows_of(buffer, 0, offline.size).items():  # the offline data first, untouched
        np.testing.assert_array_equal(v, np.asarray(getattr(offline, k)))
    online = rows_of(buffer, offline.size, offline.size + ONLINE.steps)
    assert np.all(online["terminals"] == 1) and np.all(online["masks"] == 0)  # one-step episodes reach the end
    best = np.where(online["observations"][:, 0] == 1, 0.6, -0.6)
    np.testing.assert_allclose(online["rewards"], 1 - 4 * (online["actions"][:, 0] - best) ** 2, rtol=1e-5)
    # Updates: none in the warm-up, then one per environment step; all counted by the agent.
    train = result.train
    assert [r["env_step"] for r in train] == [100, 200, 300, 400]
    assert "critic_loss" not in train[0] and all("critic_loss" in r for r in train[1:])
    assert int(result.agent.step) == ONLINE.steps - ONLINE.start_training
    assert [r["buffer_size"] for r in train] == [offline.size + s for s in (100, 200, 300, 400)]
    # Uniform sampling over the buffer: online chunks in proportion to their share of the rows.
    marked = eqx.tree_at(lambda b: b.data.rewards, buffer, jnp.arange(buffer.capacity, dtype=jnp.float32))
    n = 40_000
    rows = sample_chunks(marked, jr.key(3), n, 1, 0.0).rewards[:, 0]
    share = float(jnp.mean(rows >= offline.size))
    assert float(jnp.max(rows)) < int(buffer.size)  # only filled rows are drawn
    p = ONLINE.steps / (offline.size + ONLINE.steps)
    assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / n), (share, p)


def bandit_shards(count=3, n=64, interval=100):
    """`count` shards of `bandit_offline` data (seeds 0, 1, ...) as a `ShardedDataset`: each one-step episode is
    two stored rows, its state and its final state."""
    from flowsoc.rl import indexed_from_raw, ShardedDataset

    def loader(seed):
        def load():
            t = bandit_offline(n, seed)
            obs = np.asarray(t.observations)
            return indexed_from_raw(
                dict(
                    observations=np.repeat(obs, 2, axis=0),
                    actions=np.repeat(np.asarray(t.actions), 2, axis=0),
                    terminals=np.tile([False, True], n),
                ),
                np.asarray(t.rewards),
                np.asarray(t.masks),
            )

        return load

    return ShardedDataset(
        [loader(k) for k in range(count)], [f"bandit-{k}" for k in range(count)], [n] * count, [2 * n] * count,
        (3,), 1, interval=interval, mode="stream",
    )  # fmt: skip


def test_online_phase_from_shards_rotates_them_into_the_buffer_read_ahead():
    """From a sharded offline dataset: the buffer starts from the offline phase's shard, and at every `interval`
    environment steps its first rows become the next shard (read in the background meanwhile); the online
    rows after them are untouched."""
    shards = bandit_shards()
    config = ONLINE.replace(steps=300, checkpoint_every=0)
    result = train_online(TRQAM.create(jr.key(0), 3, 1, BANDIT_CONFIG), shards, config, BanditEnv)
    buffer = result.buffer
    assert int(buffer.size) == 64 + 300
    expected = bandit_offline(64, 2)  # blocks at steps 0, 100, 200 use shards 0, 1, 2
    for k, v in rows_of(buffer, 0, 64).items():
        np.testing.assert_array_equal(v, np.asarray(getattr(expected, k)), err_msg=k)
    online = rows_of(buffer, 64, 364)
    assert np.all(online["terminals"] == 1) and np.all(np.isin(online["observations"].sum(-1), [1.0]))
    assert shards.loads[:3] == [0, 1, 2]  # each next shard read once, ahead of its block
    shards.close()


def test_online_phase_improves_the_reward_where_offline_data_is_poor():
    offline = bandit_offline()
    config = ONLINE.replace(steps=1200, checkpoint_every=0)
    result = train_online(TRQAM.create(jr.key(1), 3, 1, BANDIT_CONFIG), offline, config, BanditEnv)
    online = result.buffer.data.rewards[offline.size : offline.size + config.steps]
    first, last = float(jnp.mean(online[:100])), float(jnp.mean(online[-200:]))
    # Seeds 0-2 (measured): first block ≈ -2.0 to -2.8 (random-ish actions), last 200 steps ≥ 0.7.
    assert first < -1.0 and last > 0.3, (first, last)
    assert result.train[-1]["online/success"] > 0.5


def test_resume_mid_online_loses_no_transition(tmp_path):
    offline = bandit_offline()
    factory = functools.partial(CounterEnv, 7)
    agent = TRQAM.create(jr.key(2), 3, 1, BANDIT_CONFIG)
    full = train_online(agent, offline, ONLINE, factory, run_dir=tmp_path / "a")
    # Ctrl-C at environment step 250, during the third block: the state after the second block is saved.
    with pytest.raises(KeyboardInterrupt):
        train_online(agent, offline, ONLINE, functools.partial(CounterEnv, 7, interrupt_at=250), run_dir=tmp_path / "b")
    assert latest_online_checkpoint(tmp_path / "b").name == "ckpt-0000000200"
    with pytest.raises(FileExistsError, match="--resume"):
        train_online(agent, offline, ONLINE, factory, run_dir=tmp_path / "b")
    resumed = train_online(agent, offline, ONLINE, factory, run_dir=tmp_path / "b", resume=True)
    n0, half = offline.size, offline.size + 200
    a, b = rows_of(full.buffer, 0, full.buffer.capacity), rows_of(resumed.buffer, 0, resumed.buffer.capacity)
    assert int(resumed.buffer.size) == int(full.buffer.size) == n0 + 400
    # Everything collected before the checkpoint is kept; the episode running at the checkpoint is
    # stored as truncated there (200 = 28 episodes of 7 + 4 steps), and the resumed run starts a new one.
    for k in a:
        if k != "terminals":
            np.testing.assert_array_equal(a[k][:half], b[k][:half])
    np.testing.assert_array_equal(a["terminals"][: half - 1], b["terminals"][: half - 1])
    assert a["terminals"][half - 1] == 0 and b["terminals"][half - 1] == 1
    assert b["observations"][half, 1] == 0 and a["observations"][half, 1] == 4
    # Seeds are never reused: 36 episodes had been started by the Ctrl-C at step 250 (1 + 35 resets),
    # so the resumed run's first episode is the 37th.
    assert b["observations"][half, 0] == np.float32((episode_seed(0, 36) % 1000) / 1000)
    # The metric rows up to the checkpoint are those of the uninterrupted run, and so is the number
    # of updates.
    assert int(resumed.agent.step) == int(full.agent.step) == 300
    first = [r for r in full.rows if r["step"] <= 200]
    assert resumed.rows[: len(first)] == first
    assert [r["env_step"] for r in resumed.train] == [100, 200, 300, 400]
    # The resumed run's λ trajectory continues from the checkpoint.
    assert resumed.train[2]["updates"] == 200


def test_non_finite_online_block_stops_with_the_last_good_state_saved(tmp_path, monkeypatch):
    import flowsoc as fs
    import flowsoc.rl._online as online_module

    offline = bandit_offline()
    original = online_module.fused_updates
    calls = []

    def nan_on_second_block(agent, *args):
        calls.append(1)
        new, metrics = original(agent, *args)
        if len(calls) == 2:
            metrics = {**metrics, "critic_loss": metrics["critic_loss"] * jnp.nan}
        return new, metrics

    monkeypatch.setattr(online_module, "fused_updates", nan_on_second_block)
    agent = TRQAM.create(jr.key(3), 3, 1, BANDIT_CONFIG)
    with pytest.raises(fs.NonFiniteError, match=r"critic_loss at update step 101;.*env step 200\) is saved in"):
        train_online(agent, offline, ONLINE.replace(checkpoint_every=0), BanditEnv, run_dir=tmp_path)
    folder = latest_online_checkpoint(tmp_path)
    assert folder.name == "ckpt-0000000200"  # the state before the bad block, its transitions intact
    rows = np.load(folder / "online_rows.npz")
    assert rows["rewards"].shape == (200,) and np.all(np.isfinite(rows["rewards"]))


def test_online_checkpoint_mismatch_is_refused(tmp_path):
    offline = bandit_offline()
    factory = functools.partial(CounterEnv, 7)
    agent = TRQAM.create(jr.key(2), 3, 1, BANDIT_CONFIG)
    config = ONLINE.replace(steps=100, start_training=100)  # collection only: nothing to compile
    train_online(agent, offline, config, factory, run_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"num_envs \(1 saved, 2 now\)"):
        train_online(agent, offline, config.replace(num_envs=2), factory, run_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match=r"different settings: offline_data\.sha256"):
        train_online(agent, bandit_offline(seed=1), config, factory, run_dir=tmp_path, resume=True)
    (latest_online_checkpoint(tmp_path) / "online_rows.npz").write_bytes(b"not an npz")
    with pytest.raises(CheckpointError, match="online_rows.npz does not match the checksum"):
        train_online(agent, offline, config, factory, run_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="No online checkpoint"):
        train_online(agent, offline, config, factory, run_dir=tmp_path / "empty", resume=True)


def test_online_kl_budget_switch_keeps_lambda():
    agent = TRQAM.create(jr.key(0), 3, 1, BANDIT_CONFIG)
    switched = with_kl_budget(agent, 0.3)
    assert switched.config == BANDIT_CONFIG.with_kl_budget(0.3) and switched.config.trust_region.step_size == 0.05
    for a, b in zip(jax.tree.leaves(agent), jax.tree.leaves(switched)):
        assert a is b
    assert with_kl_budget(agent, None) is agent


def test_online_config_validation():
    with pytest.raises(ValueError, match="multiple of num_envs"):
        OnlineConfig(steps_per_dispatch=100, num_envs=3)
    with pytest.raises(ValueError, match="start_training=150 must be a non-negative multiple"):
        OnlineConfig(start_training=150)
    with pytest.raises(ValueError, match="utd must be a positive integer"):
        OnlineConfig(utd=0)
    with pytest.raises(ValueError, match="kl_budget must be > 0"):
        OnlineConfig(kl_budget=-1.0)


# ---------------------------------------------------------------------------------- sparse rewards online


def test_online_sparse_rewards_follow_the_offline_data():
    import dataclasses

    from flowsoc.rl._online import online_sparse_rewards

    dense = bandit_offline()
    assert dense.sparse_rewards is None  # nothing recorded
    recorded = {flag: dataclasses.replace(dense, sparse_rewards=flag) for flag in (True, False)}
    assert OnlineConfig().sparse_rewards is None  # the default: follow the offline data
    follow = OnlineConfig()
    assert online_sparse_rewards(follow, recorded[True]) is True
    assert online_sparse_rewards(follow, recorded[False]) is False
    assert online_sparse_rewards(follow, dense) is False  # dense when nothing is recorded
    for flag in (True, False):
        explicit = OnlineConfig(sparse_rewards=flag)
        assert online_sparse_rewards(explicit, recorded[flag]) is flag  # a matching setting is respected
        assert online_sparse_rewards(explicit, dense) is flag  # nothing recorded: the setting decides
        with pytest.raises(ValueError, match=rf"sparse_rewards={flag}\).*loaded with sparse rewards {not flag}"):
            online_sparse_rewards(explicit, recorded[not flag])
    # load_transitions records the rule.
    arrays = {k: np.asarray(getattr(dense, k)) for k in ("observations", "actions", "rewards", "masks", "terminals")}
    arrays["next_observations"] = np.asarray(dense.next_observations)
    assert load_transitions(arrays, "bandit", sparse_rewards=True).sparse_rewards is True


def test_online_collection_applies_the_offline_reward_rule():
    import dataclasses

    offline = dataclasses.replace(bandit_offline(), sparse_rewards=True)
    agent = TRQAM.create(jr.key(0), 3, 1, BANDIT_CONFIG)
    config = ONLINE.replace(steps=100, start_training=100)  # collection only: no update to compile
    result = train_online(agent, offline, config, BanditEnv)
    online = np.asarray(result.buffer.data.rewards[offline.size : offline.size + config.steps])
    # BanditEnv's dense reward 1 - 4 (a - best)² is non-zero: sparse, -1[r != 0], gives -1 everywhere.
    np.testing.assert_array_equal(online, -np.ones(config.steps, np.float32))
    dense = train_online(agent, dataclasses.replace(offline, sparse_rewards=False), config, BanditEnv)
    assert np.all(np.asarray(dense.buffer.data.rewards[offline.size : offline.size + config.steps]) != -1.0)
    with pytest.raises(ValueError, match="sparse_rewards=False"):
        train_online(agent, offline, config.replace(sparse_rewards=False), BanditEnv)
