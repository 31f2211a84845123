"""The data layer: resolver, OGBench loading and relabelling, chunk sampler against a
brute-force loop, replay buffer, and every bad-data error."""

import os
import re
import shutil

import equinox as eqx
import gymnasium
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import ogbench
import pytest
from ogbench.relabel_utils import relabel_dataset

from flowsoc.rl.ogbench._data import (
    add_transitions,
    chunk_start_indices,
    ChunkBatch,
    DATA_DIR_ENV,
    DatasetError,
    DatasetMismatchError,
    DatasetNotFoundError,
    gather_chunks,
    load_ogbench,
    load_replay_buffer,
    ReplayBuffer,
    resolve_dataset,
    sample_chunks,
    save_replay_buffer,
    Transitions,
    UnknownDatasetError,
    UnsupportedDatasetError,
    validate_dataset_file,
)


# --------------------------------------------------------------------------------------
# Single-task rewards
# --------------------------------------------------------------------------------------


def _ogbench_relabelled(path, name, env):
    """OGBench's own single-task relabelling of the raw file, done by hand (`env`: the single-task
    environment, made once for the training and validation files as OGBench does)."""
    parsed_env = name.replace("-play", "").replace("-navigate", "")
    data = ogbench.load_dataset(str(path), add_info=True)
    relabel_dataset(parsed_env, env, data)
    return data


@pytest.mark.parametrize(
    "stem, name",
    [
        ("cube-single-play-v0", "cube-single-play-singletask-task1-v0"),
        ("cube-single-play-v0", "cube-single-play-singletask-task5-v0"),
        ("scene-play-v0", "scene-play-singletask-task2-v0"),
        ("puzzle-3x3-play-v0", "puzzle-3x3-play-singletask-task4-v0"),
        ("pointmaze-medium-navigate-v0", "pointmaze-medium-navigate-singletask-task1-v0"),
    ],
)
def test_singletask_rewards_equal_ogbench_relabelling(data_root, stem, name):
    _, train, val = load_ogbench(name, data_root, sparse=False, action_clip_eps=None)
    env = gymnasium.make(name.replace("-play", "").replace("-navigate", ""))
    for data, path in ((train, data_root / f"{stem}.npz"), (val, data_root / f"{stem}-val.npz")):
        ref = _ogbench_relabelled(path, name, env)
        np.testing.assert_array_equal(data["rewards"], ref["rewards"])
        np.testing.assert_array_equal(data["masks"], ref["masks"])
        np.testing.assert_array_equal(data["observations"], ref["observations"])
        np.testing.assert_array_equal(data["actions"], ref["actions"])
        assert data["rewards"].dtype == np.float32


def test_cube_reward_formula_by_hand(data_root):
    """reward = #cubes within 0.04 of their target - #cubes; mask = 0 iff all are."""
    name = "cube-single-play-singletask-task2-v0"
    env, train, _ = load_ogbench(name, data_root, action_clip_eps=None)
    env.reset()
    target = env.unwrapped._data.mocap_pos[0].copy()
    raw = ogbench.load_dataset(str(data_root / "cube-single-play-v0.npz"), add_info=True)
    ok = np.linalg.norm(raw["qpos"][:, 14:17] - target, axis=-1) <= 0.04
    np.testing.assert_array_equal(train["rewards"], ok.astype(np.float32) - 1.0)
    np.testing.assert_array_equal(train["masks"], 1.0 - ok.astype(np.float32))


def test_bare_singletask_is_the_default_task(data_root):
    _, bare, _ = load_ogbench("puzzle-3x3-play-singletask-v0", data_root)
    _, task4, _ = load_ogbench("puzzle-3x3-play-singletask-task4-v0", data_root)
    np.testing.assert_array_equal(bare["rewards"], task4["rewards"])


def test_sparse_rewards_and_action_clipping(data_root):
    name = "puzzle-3x3-play-singletask-task4-v0"
    _, dense, _ = load_ogbench(name, data_root, sparse=False, action_clip_eps=None)
    _, default, _ = load_ogbench(name, data_root)  # puzzle: sparse by default, clipped
    assert dense["rewards"].min() < -1  # several unmet buttons: the dense reward is graded
    np.testing.assert_array_equal(default["rewards"], -(dense["rewards"] != 0).astype(np.float32))
    np.testing.assert_array_equal(default["masks"], dense["masks"])
    eps = 1e-5
    np.testing.assert_array_equal(default["actions"], np.clip(dense["actions"], -1 + eps, 1 - eps))
    assert np.abs(dense["actions"]).max() == 1.0 and np.abs(default["actions"]).max() <= 1 - eps
    # cube keeps OGBench's dense reward by default
    _, cube, _ = load_ogbench("cube-single-play-singletask-task2-v0", data_root)
    _, cube_dense, _ = load_ogbench("cube-single-play-singletask-task2-v0", data_root, sparse=False)
    np.testing.assert_array_equal(cube["rewards"], cube_dense["rewards"])


# --------------------------------------------------------------------------------------
# Resolver
# --------------------------------------------------------------------------------------


def test_resolver_env_var_and_missing_files(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(data_root))
    assert resolve_dataset("scene-play-singletask-task3-v0") == data_root / "scene-play-v0.npz"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as e:
        resolve_dataset("cube-double-play-singletask-task2-v0")
    msg = str(e.value)
    assert str(tmp_path / "cube-double-play-v0.npz") in msg
    assert "python -m flowsoc.rl.datagen cube-double-play-v0" in msg
    with pytest.raises(DatasetNotFoundError, match="expert"):
        resolve_dataset("humanoidmaze-large-navigate-singletask-v0")
    with pytest.raises(UnsupportedDatasetError, match="expert"):
        resolve_dataset("humanoidmaze-large-navigate-singletask-v0", generate=True)


def test_datasets_to_copy_in_name_the_data_directory(tmp_path):
    """Where generation is impossible (antsoccer), both the resolver's and the generator's refusal name the
    directory to copy the official files into, and the flag that picks another."""
    with pytest.raises(DatasetNotFoundError) as e:
        resolve_dataset("antsoccer-arena-navigate-singletask-v0", tmp_path)
    assert f"copy them into {tmp_path} (the data directory; --data-dir DIR picks another)" in str(e.value)
    with pytest.raises(UnsupportedDatasetError) as e:
        resolve_dataset("antsoccer-medium-stitch-v0", tmp_path / "d", generate=True)
    assert "antsoccer-medium-stitch-v0-val.npz on a machine with internet access" in str(e.value)
    assert f"copy them into {tmp_path / 'd'} " in str(e.value)


def test_resolver_generates_when_asked(tmp_path):
    path = resolve_dataset(
        "pointmaze-medium-stitch-singletask-task2-v0", tmp_path, generate=True, episodes=2, episode_length=21
    )
    assert path == tmp_path / "pointmaze-medium-stitch-v0.npz"
    assert (tmp_path / "pointmaze-medium-stitch-v0-val.npz").exists()
    env, train, _ = load_ogbench("pointmaze-medium-stitch-singletask-task2-v0", tmp_path)
    assert train["observations"].shape == (40, 2) and set(np.unique(train["rewards"])) <= {-1.0, 0.0}


def test_cached_dataset_of_another_size_is_refused(data_root):
    """A cached 3-episode dataset asked for with 50 episodes (as `examples/ogbench_offline.py --episodes 50
    --data-dir ...` asks) is refused, naming the file, both counts and how to regenerate; matching numbers
    pass."""
    name, train = "cube-single-play-singletask-task2-v0", data_root / "cube-single-play-v0.npz"
    assert resolve_dataset(name, data_root, episodes=3, episode_length=101, seed=0) == train
    with pytest.raises(DatasetMismatchError) as e:
        load_ogbench(name, data_root, generate=True, episodes=50)
    msg = str(e.value)
    assert f"{train} holds 3 episodes of 101 steps, 1 validation episode, seed 0, but --episodes 50" in msg
    assert "delete cube-single-play-v0.npz, cube-single-play-v0-val.npz and cube-single-play-v0.json" in msg
    assert "another --data-dir" in msg and "--episodes 50 --data-dir" in msg and "--overwrite" in msg
    assert "\n" not in msg
    with pytest.raises(DatasetMismatchError, match=r"--episode-length 51 was asked for"):
        resolve_dataset(name, data_root, episode_length=51)
    with pytest.raises(DatasetMismatchError, match=r"--seed 1 was asked for"):
        resolve_dataset(name, data_root, seed=1)
    assert (data_root / "cube-single-play-v0.npz").exists()  # nothing was touched


def test_data_directory_that_is_a_file(tmp_path):
    a_file = tmp_path / "data"
    a_file.write_text("")
    with pytest.raises(DatasetError, match=re.escape(f"{a_file} is an existing file, not a directory")):
        resolve_dataset("cube-single-play-v0", a_file, generate=True, episodes=1)


# --------------------------------------------------------------------------------------
# Bad data
# --------------------------------------------------------------------------------------


@pytest.fixture
def bad_dir(data_root, tmp_path):
    for f in ("cube-single-play-v0.npz", "cube-single-play-v0-val.npz"):
        shutil.copy(data_root / f, tmp_path / f)
    return tmp_path


def _rewrite(path, **changes):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez_compressed(path, **arrays)
    return arrays


NAME = "cube-single-play-singletask-task2-v0"


def test_nan_values(bad_dir):
    path = bad_dir / "cube-single-play-v0.npz"
    with np.load(path) as f:
        obs = f["observations"].copy()
    obs[7, 3] = np.nan
    _rewrite(path, observations=obs)
    with pytest.raises(DatasetError, match=r"cube-single-play-v0\.npz.*'observations'.*NaN.*\(7, 3\)"):
        load_ogbench(NAME, bad_dir)


def test_inf_values_in_val_file(bad_dir):
    path = bad_dir / "cube-single-play-v0-val.npz"
    with np.load(path) as f:
        act = f["actions"].copy()
    act[2, 0] = np.inf
    _rewrite(path, actions=act)
    with pytest.raises(DatasetError, match=r"cube-single-play-v0-val\.npz.*'actions'.*inf"):
        load_ogbench(NAME, bad_dir)


def test_mismatched_lengths(bad_dir):
    path = bad_dir / "cube-single-play-v0.npz"
    with np.load(path) as f:
        act = f["actions"][:-5]
    _rewrite(path, actions=act)
    with pytest.raises(DatasetError, match=r"cube-single-play-v0\.npz.*mismatched lengths.*'actions': 298"):
        load_ogbench(NAME, bad_dir)


def test_missing_key(bad_dir):
    _rewrite(bad_dir / "cube-single-play-v0.npz", qpos=None)
    with pytest.raises(DatasetError, match=r"cube-single-play-v0\.npz.*missing array.*qpos"):
        load_ogbench(NAME, bad_dir)


def test_cut_off_episode(bad_dir):
    path = bad_dir / "cube-single-play-v0.npz"
    with np.load(path) as f:
        arrays = {k: f[k][:-10] for k in f.files}
    np.savez_compressed(path, **arrays)
    with pytest.raises(DatasetError, match=r"cube-single-play-v0\.npz.*last step is not terminal"):
        load_ogbench(NAME, bad_dir)


def test_missing_val_file(bad_dir):
    (bad_dir / "cube-single-play-v0-val.npz").unlink()
    with pytest.raises(DatasetError, match=r"cube-single-play-v0-val\.npz.*validation file is missing"):
        load_ogbench(NAME, bad_dir)


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "garbage"])
def test_truncated_or_corrupt_npz(bad_dir, damage):
    path = bad_dir / "cube-single-play-v0.npz"
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "corrupt":
        mid = len(blob) // 3
        path.write_bytes(blob[:mid] + bytes(b ^ 0xFF for b in blob[mid : mid + 64]) + blob[mid + 64 :])
    else:
        path.write_bytes(b"definitely not a zip archive")
    with pytest.raises(DatasetError, match=r"cube-single-play-v0\.npz: cannot read.*truncated or corrupt.*regenerate"):
        load_ogbench(NAME, bad_dir)


def test_file_of_another_environment(bad_dir):
    for suffix in ("", "-val"):
        (bad_dir / f"cube-single-play-v0{suffix}.npz").rename(bad_dir / f"cube-double-play-v0{suffix}.npz")
    with pytest.raises(DatasetError, match=r"cube-double-play-v0\.npz.*\(28,\).*\(37,\)"):
        load_ogbench("cube-double-play-v0", bad_dir)


@pytest.mark.parametrize("suffix", ["", "-val"])
def test_actions_of_another_width(bad_dir, suffix):
    """A file whose actions are not the environment's width is refused on load (not by a JAX broadcast
    error at the first update)."""
    path = bad_dir / f"cube-single-play-v0{suffix}.npz"
    with np.load(path) as f:
        act = f["actions"][:, :4]
    _rewrite(path, actions=act)
    pattern = rf"{re.escape(str(path))}: actions are 4-dimensional but cube-single-v0 takes 5-dimensional actions"
    with pytest.raises(DatasetError, match=pattern + ".*regenerate"):
        load_ogbench(NAME, bad_dir)


@pytest.mark.parametrize("name", ["cube-single-v0", "cube-pentuple-play-v0", "hello", "scene-play-singletask-task0-v0"])
def test_unknown_environment_name(data_root, name):
    with pytest.raises(UnknownDatasetError, match=name):
        load_ogbench(name, data_root)


def test_validate_reports_summary(data_root):
    info = validate_dataset_file(data_root / "scene-play-v0.npz", "scene-play-singletask-v0")
    assert info == dict(steps=202, episodes=2, obs_dim=40, action_dim=5)


def test_goal_conditioned_data_has_no_rewards(data_root):
    _, train, _ = load_ogbench("cube-single-play-v0", data_root)
    with pytest.raises(DatasetError, match="singletask"):
        Transitions.from_numpy(train)


# --------------------------------------------------------------------------------------
# Chunk sampler vs a brute-force loop
# --------------------------------------------------------------------------------------


def brute_force_chunks(data, starts, horizon, discount):
    """QAM's `sample_sequence`, step by step in float64 over the raw numpy arrays."""
    B = len(starts)
    obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
    out = dict(
        observations=np.zeros((B, obs_dim)),
        actions=np.zeros((B, horizon, act_dim)),
        rewards=np.zeros((B, horizon)),
        masks=np.zeros((B, horizon)),
        terminals=np.zeros((B, horizon)),
        valid=np.zeros((B, horizon)),
        next_observations=np.zeros((B, horizon, obs_dim)),
    )
    for b, t in enumerate(starts):
        out["observations"][b] = data["observations"][t]
        ret, mask, ended, last_next = 0.0, None, 0.0, None
        for i in range(horizon):
            row = t + i
            valid = 1.0 if i == 0 else 1.0 - ended  # no episode end strictly before step i
            if valid:
                ret += discount**i * float(data["rewards"][row])
                mask = float(data["masks"][row]) if mask is None else min(mask, float(data["masks"][row]))
                last_next = data["next_observations"][row]
            ended = max(ended, float(data["terminals"][row]))
            out["actions"][b, i] = data["actions"][row]
            out["rewards"][b, i] = ret
            out["masks"][b, i] = mask
            out["terminals"][b, i] = ended
            out["valid"][b, i] = valid
            out["next_observations"][b, i] = last_next
    return out


def _check_equal(batch: ChunkBatch, ref):
    for field in ("observations", "actions", "masks", "terminals", "valid", "next_observations"):
        got = np.asarray(getattr(batch, field))
        assert got.dtype == np.float32, field
        np.testing.assert_array_equal(got, ref[field].astype(np.float32), err_msg=field)
    np.testing.assert_allclose(np.asarray(batch.rewards), ref["rewards"], rtol=1e-6, atol=1e-6)


def _synthetic(seed=0, n=120, obs_dim=3, act_dim=2):
    """Episodes of random lengths 1..7 (many ends inside chunks), random rewards/masks."""
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < n:
        lengths.append(int(rng.integers(1, 8)))
    lengths[-1] -= sum(lengths) - n
    terminals = np.zeros(n, np.float32)
    terminals[np.cumsum([length for length in lengths if length > 0]) - 1] = 1.0
    return dict(
        observations=rng.normal(size=(n, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        masks=(rng.uniform(size=n) < 0.7).astype(np.float32),
        terminals=terminals,
        next_observations=rng.normal(size=(n, obs_dim)).astype(np.float32),
    )


@pytest.mark.parametrize("horizon", [1, 2, 5, 9])
def test_gather_chunks_equals_brute_force_synthetic(horizon):
    data = _synthetic()
    table = Transitions.from_numpy(data)
    starts = np.arange(len(data["terminals"]) - horizon + 1)  # every possible start
    batch = eqx.filter_jit(gather_chunks)(table, jnp.asarray(starts, jnp.int32), horizon, 0.9)
    _check_equal(batch, brute_force_chunks(data, starts, horizon, 0.9))


@pytest.mark.parametrize("name", ["cube-single-play-singletask-task2-v0", "scene-play-singletask-task2-v0"])
def test_gather_chunks_equals_brute_force_ogbench(data_root, name):
    _, train, _ = load_ogbench(name, data_root)
    table = Transitions.from_numpy(train)
    horizon = 5
    starts = np.arange(len(train["terminals"]) - horizon + 1)
    batch = gather_chunks(table, jnp.asarray(starts, jnp.int32), horizon, 0.99)
    _check_equal(batch, brute_force_chunks(train, starts, horizon, 0.99))
    # Chunks that cross an episode end: the observation after the chunk is the episode's last.
    end = int(np.nonzero(train["terminals"])[0][0])
    b = end - 1  # start two steps before the end: steps 0, 1 valid, 2.. invalid
    np.testing.assert_array_equal(np.asarray(batch.valid[b]), [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(batch.next_observations[b, -1]), train["next_observations"][end])


def test_sample_chunks_is_jittable_and_scannable(getkey):
    data = _synthetic(seed=1)
    table = Transitions.from_numpy(data)
    key = getkey()
    batch = eqx.filter_jit(sample_chunks)(table, key, 64, 5, 0.99)
    starts = chunk_start_indices(key, table.size, 64, 5)
    assert starts.dtype == jnp.int32
    _check_equal(batch, brute_force_chunks(data, np.asarray(starts), 5, 0.99))

    @jax.jit
    def many(table, key):
        def body(carry, k):
            b = sample_chunks(table, k, 32, 5, 0.99)
            return carry + b.rewards[:, -1].sum(), b.observations[0]

        return jax.lax.scan(body, jnp.float32(0.0), jr.split(key, 4))

    total, firsts = many(table, key)
    expected = sum(float(sample_chunks(table, k, 32, 5, 0.99).rewards[:, -1].sum()) for k in jr.split(key, 4))
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    assert firsts.shape == (4, 3)


def test_chunk_starts_cover_the_valid_range(getkey):
    starts = np.asarray(chunk_start_indices(getkey(), 20, 20000, 5))
    assert starts.min() == 0 and starts.max() == 15
    counts = np.bincount(starts, minlength=16)
    assert counts.min() > 0.8 * 20000 / 16 and counts.max() < 1.2 * 20000 / 16


# --------------------------------------------------------------------------------------
# Replay buffer
# --------------------------------------------------------------------------------------


def _rows(data, lo, hi):
    return Transitions.from_numpy({k: v[lo:hi] for k, v in data.items()})


def test_replay_buffer_matches_numpy_ring_buffer():
    data = _synthetic(seed=2, n=50)
    capacity = 64
    buffer = ReplayBuffer.from_transitions(_rows(data, 0, 30), capacity)
    ref = {k: np.zeros((capacity,) + v.shape[1:], np.float32) for k, v in data.items()}
    for k in ref:
        ref[k][:30] = data[k][:30]
    size, pointer = 30, 30
    add = eqx.filter_jit(add_transitions, donate="all-except-first")
    extra = _synthetic(seed=3, n=60)
    for lo, hi in ((0, 1), (1, 21), (21, 22), (22, 60)):  # single rows and batches; wraps around
        buffer = add(buffer, _rows(extra, lo, hi))
        for j in range(lo, hi):  # a ring buffer, one row at a time
            for k in ref:
                ref[k][pointer] = extra[k][j]
            pointer = (pointer + 1) % capacity
            # QAM's `size = max(pointer, size)` stops at capacity - 1 when the pointer wraps
            # to 0 (the last row is written but never sampled); we count filled rows.
            size = min(size + 1, capacity)
        assert int(buffer.size) == size and int(buffer.pointer) == pointer
        for k in ref:
            np.testing.assert_array_equal(np.asarray(getattr(buffer.data, k)), ref[k])
    assert int(buffer.size) == capacity and int(buffer.pointer) == (30 + 60) % capacity


def test_replay_buffer_samples_only_filled_rows(getkey):
    data = _synthetic(seed=4, n=40)
    buffer = ReplayBuffer.from_transitions(Transitions.from_numpy(data), 1000)
    key = getkey()
    batch = eqx.filter_jit(sample_chunks)(buffer, key, 256, 3, 0.99)
    starts = np.asarray(chunk_start_indices(key, 40, 256, 3))
    assert starts.max() <= 37
    _check_equal(batch, brute_force_chunks(data, starts, 3, 0.99))


def test_replay_buffer_save_and_restore(tmp_path, getkey):
    data = _synthetic(seed=5, n=80)
    buffer = ReplayBuffer.from_transitions(_rows(data, 0, 50), 70)
    buffer = add_transitions(buffer, _rows(data, 50, 80))  # wrapped: size 70, pointer 10
    assert int(buffer.size) == 70 and int(buffer.pointer) == 10
    key = getkey()
    before = sample_chunks(buffer, key, 128, 4, 0.95)

    path = save_replay_buffer(tmp_path / "ckpt" / "buffer.npz", buffer)
    assert sorted(p.name for p in path.parent.iterdir()) == ["buffer.npz"]
    restored = load_replay_buffer(path)
    eqx.tree_serialise_leaves(tmp_path / "buffer.eqx", buffer)
    like = ReplayBuffer.empty(70, (3,), 2)
    deserialised = eqx.tree_deserialise_leaves(tmp_path / "buffer.eqx", like)

    for other in (restored, deserialised):
        assert int(other.size) == 70 and int(other.pointer) == 10
        for a, b in zip(jax.tree.leaves(buffer), jax.tree.leaves(other)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        after = sample_chunks(other, key, 128, 4, 0.95)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_replay_buffer_file_follows_the_umask(tmp_path):
    buffer = ReplayBuffer.from_transitions(Transitions.from_numpy(_synthetic(seed=6, n=10)), 16)
    old = os.umask(0o022)
    try:
        path = save_replay_buffer(tmp_path / "buffer.npz", buffer)
    finally:
        os.umask(old)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)  # not mkstemp's 0600
    assert sorted(os.listdir(tmp_path)) == ["buffer.npz"]


def test_replay_buffer_file_errors(tmp_path):
    bad = tmp_path / "buffer.npz"
    bad.write_bytes(b"nope")
    with pytest.raises(DatasetError, match="buffer.npz"):
        load_replay_buffer(bad)
