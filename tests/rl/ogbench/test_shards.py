"""Large datasets as folders of shards: names and recipes, generation shard by shard (resumable, byte-identical),
the folder checks, the shard reader against OGBench's loader, rotation, and the stream and memory modes."""

import os
import shutil
import threading
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from flowsoc.rl import IndexedTransitions, overwrite_rows, ReplayBuffer, sample_chunks, ShardedDataset, Transitions
from flowsoc.rl._train import OfflineTrainer, TrainConfig
from flowsoc.rl.ogbench import _datagen as datagen
from flowsoc.rl.ogbench._data import DatasetError
from flowsoc.rl.ogbench._datagen import generate, GenerateOptions, OptionError
from flowsoc.rl.ogbench._datagen_recipes import parse_dataset_name, shard_recipe
from flowsoc.rl.ogbench._shards import check_shard_folder, load_shard, open_shards, shard_files


NAME = "cube-single-play-10m-v0"
ENV = "cube-single-play-singletask-task1-v0"
TINY = dict(env=NAME, shards=3, episodes=2, val_episodes=1, episode_length=21, seed=0, progress=False)


def _tiny(root, **kw):
    return generate(GenerateOptions(**{**TINY, "data_dir": str(root), **kw}))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three tiny shards (2 episodes of 20 transitions each), generated uninterrupted."""
    return _tiny(tmp_path_factory.mktemp("shards")).folder


@pytest.fixture(scope="module")
def opened(folder):
    """The tiny folder opened in stream and in memory mode."""
    stream = open_shards(ENV, folder, interval=10, mode="stream")
    memory = open_shards(ENV, folder, interval=10, mode="memory")
    yield stream, memory
    stream.close()
    memory.close()


_sample = eqx.filter_jit(sample_chunks)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.npz"))}


def test_names_and_upstream_recipes():
    parsed = parse_dataset_name("cube-triple-play-10m-v0")
    assert (parsed.sharded, parsed.size, parsed.transitions) == (True, "10m", 10_000_000)
    assert (parsed.env_id, parsed.shard_stem) == ("cube-triple-v0", "cube-triple-play-v0")
    expected = {
        "cube-triple-play-10m-v0": (10, 1000, 1001),
        "puzzle-4x4-play-10m-v0": (10, 1000, 1001),
        "cube-quadruple-play-100m-v0": (100, 1000, 1001),
        "antmaze-giant-navigate-10m-v0": (10, 500, 2001),
        "humanoidmaze-giant-navigate-100m-v0": (25, 1000, 4001),
    }
    for name, (shards, episodes, length) in expected.items():
        r = shard_recipe(parse_dataset_name(name))
        assert (r.shards, r.recipe.episodes, r.recipe.episode_length) == (shards, episodes, length), name
    assert not parse_dataset_name("cube-triple-play-singletask-task2-v0").sharded


def test_layout_and_record(folder):
    names = sorted(p.name for p in folder.iterdir())
    stems = [f"cube-single-play-v0-{i:03d}" for i in range(3)]
    assert names == sorted([f"{NAME}.json"] + [f"{s}.npz" for s in stems] + [f"{s}-val.npz" for s in stems])
    assert [p.name for p in shard_files(folder)] == [f"{s}.npz" for s in stems]
    with np.load(folder / f"{stems[1]}.npz") as f:
        assert f["terminals"].sum() == 2 and len(f["terminals"]) == 42
    # shards are different episodes (seeded by shard), and validation episodes are new ones
    a, b = (np.load(folder / f"{s}.npz")["actions"] for s in stems[:2])
    assert not np.array_equal(a, b)


def test_killed_generation_resumes_to_identical_files(folder, tmp_path, monkeypatch):
    real = datagen.atomic_savez
    written = []

    def dies_after_the_first_shard(path, arrays):
        if "-001." in path.name:
            raise KeyboardInterrupt  # killed while making shard 1
        written.append(path.name)
        real(path, arrays)

    monkeypatch.setattr(datagen, "atomic_savez", dies_after_the_first_shard)
    with pytest.raises(KeyboardInterrupt):
        _tiny(tmp_path)
    monkeypatch.setattr(datagen, "atomic_savez", real)
    # killed while writing shard 1's training file, after its validation file: shard 1 is not finished
    assert written == [
        "cube-single-play-v0-000-val.npz",
        "cube-single-play-v0-000.npz",
        "cube-single-play-v0-001-val.npz",
    ]
    with pytest.raises(DatasetError, match=r"1 of its 3 shards .* python -m flowsoc.rl.datagen cube-single-play-10m"):
        check_shard_folder(tmp_path / NAME, ENV)  # a run refuses the incomplete folder at its start
    before = (tmp_path / NAME / "cube-single-play-v0-000.npz").stat().st_mtime_ns
    result = _tiny(tmp_path)
    assert (result.made, result.shards) == (2, 3)  # the finished shard is not regenerated
    assert (tmp_path / NAME / "cube-single-play-v0-000.npz").stat().st_mtime_ns == before
    assert _files(tmp_path / NAME) == _files(folder)  # byte for byte
    assert _tiny(tmp_path).made == 0
    with pytest.raises(DatasetError, match="episodes 2 .asked: 3"):
        _tiny(tmp_path, episodes=3)  # a resumed generation with other settings is refused
    with pytest.raises(OptionError, match="--shards applies to large"):
        generate(GenerateOptions(env="cube-single-play-v0", shards=2, data_dir=str(tmp_path)))


def test_shards_load_exactly_as_ogbench_loads_them(folder, opened):
    import ogbench

    from flowsoc.rl import clip_actions

    data = opened[0]
    assert (data.num_shards, data.sizes, data.state_rows) == (3, [40, 40, 40], [42, 42, 42])
    env = None
    for k in range(3):
        path = str(folder / f"cube-single-play-v0-{k:03d}.npz")
        if env is None:
            env, train, _ = ogbench.make_env_and_datasets(ENV, dataset_path=path)
        else:
            train, _ = ogbench.make_env_and_datasets(ENV, dataset_path=path, dataset_only=True, cur_env=env)
        shard = data.shard_data(k)
        assert isinstance(shard, IndexedTransitions) and shard.states.shape == (42, 28)  # each state once
        for field in ("observations", "next_observations", "terminals", "rewards", "masks"):
            np.testing.assert_array_equal(np.asarray(getattr(shard, field)), train[field])
        np.testing.assert_array_equal(np.asarray(shard.actions), clip_actions(train["actions"]))


def _tagged(shards=3, n=30, episode=10, sizes=None, delay=0.0):
    """Synthetic shards whose states and actions hold their shard number (+ the row / 1000); `sizes`: transitions
    per shard (default `n` each); `delay`: seconds each read takes; each read records its thread's priority."""
    sizes = [n] * shards if sizes is None else list(sizes)
    niceness = []

    def loader(k):
        def load():
            niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            time.sleep(delay)
            n = sizes[k]
            rows = n + n // episode
            terminals = np.zeros(rows, bool)
            terminals[episode :: episode + 1] = True
            raw = dict(
                observations=k + np.arange(rows, dtype=np.float32)[:, None] / 1000 * np.ones((1, 3), np.float32),
                actions=np.full((rows, 2), k, np.float32),
                terminals=terminals,
            )
            from flowsoc.rl import indexed_from_raw

            return indexed_from_raw(raw, np.zeros(n, np.float32), np.ones(n, np.float32))

        return load

    return dict(
        loaders=[loader(k) for k in range(len(sizes))],
        names=[f"s{k}" for k in range(len(sizes))],
        sizes=sizes,
        state_rows=[m + m // episode for m in sizes],
        obs_shape=(3,),
        action_dim=2,
    ), niceness


@pytest.mark.parametrize("mode", ["stream", "memory"])
def test_rotation_visits_every_shard_in_order_and_samples_only_the_current_one(mode):
    data = ShardedDataset(**_tagged()[0], interval=20, mode=mode)
    for step in range(0, 140, 10):
        shard = data.data_at(step, 10)
        expected = (step // 20) % 3
        batch = _sample(shard, jr.key(step), 64, 3, 0.9)
        assert np.all(np.floor(np.asarray(batch.observations)) == expected), (step, mode)
        assert np.all(np.asarray(batch.actions) == expected)
        assert np.all(np.floor(np.asarray(batch.next_observations)) == expected)
    assert data.loads[:4] == ([0, 1, 2, 0] if mode == "stream" else [0, 1, 2])  # the next one read ahead
    with pytest.raises(ValueError, match="span two shards"):
        data.data_at(15, 10)
    data.close()


def test_memory_and_stream_modes_give_the_same_batches(opened):
    stream, memory = opened
    assert memory.mode == "memory" and memory.shard_data(2).states.shape == (3 * 42, 28)  # all shards, once
    for k in (0, 1, 2, 1):
        a = _sample(stream.shard_data(k), jr.key(k), 32, 5, 0.99)
        b = _sample(memory.shard_data(k), jr.key(k), 32, 5, 0.99)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert memory.loads == [0, 1, 2]  # read once, at the start
    assert ShardedDataset(**_tagged()[0], mode="auto").mode == "memory"  # a few KB fit any machine


def test_shards_of_different_sizes_share_one_compiled_sampler_and_loads_are_timed():
    """Stream mode pads every shard to the largest one's shapes (rows past the window never sampled): one
    compilation of the sampler, the same batches as memory mode; the background read runs at nice 19 and a read
    done before its shard is due costs the training no wait."""
    kwargs, niceness = _tagged(sizes=[30, 20, 40], delay=0.2)
    stream = ShardedDataset(**kwargs, interval=20, mode="stream")
    memory = ShardedDataset(**_tagged(sizes=[30, 20, 40])[0], interval=20, mode="memory")
    traces = []

    @eqx.filter_jit
    def sample(*args):
        traces.append(args[0].states.shape)  # once per compilation
        return sample_chunks(*args)

    shapes = set()
    for step in (0, 20, 40, 60, 20):
        shard = stream.data_at(step, 10)
        k = stream.shard_at(step)
        shapes.add(tuple(x.shape for x in jax.tree.leaves(shard)))
        a, b = sample(shard, jr.key(step), 64, 3, 0.9), _sample(memory.data_at(step, 10), jr.key(step), 64, 3, 0.9)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.all(np.floor(np.asarray(a.observations)) == k) and np.all(np.asarray(a.actions) == k)
    assert len(shapes) == 1 and len(traces) == 1
    assert stream.wait_seconds >= 0.2  # the first read, before any training, waited
    stream._next[1].result()  # the next shard's read is done ...
    assert len(stream.load_seconds) == len(stream.loads) and min(stream.load_seconds) >= 0.2
    waited = stream.wait_seconds
    assert stream._next[0] == 2 and stream.shard_at(40) == 2
    stream.data_at(40, 10)
    assert stream.wait_seconds - waited < 0.1  # ... so rotating to it does not wait for the 0.2 s read
    if hasattr(os, "getpriority"):
        assert niceness[0] == os.getpriority(os.PRIO_PROCESS, 0) and set(niceness[1:]) == {19}
    stream.close()
    memory.close()


def test_online_shard_tables_are_read_ahead():
    data = ShardedDataset(**_tagged(delay=0.2)[0], interval=20)
    first = data.transitions(1, prefetch=True)
    assert np.all(np.asarray(first.actions) == 1) and data.loads == [1]
    data._next_host[1].result()
    waited = data.wait_seconds
    second = data.transitions(2, prefetch=True)  # read in the background already
    assert np.all(np.asarray(second.actions) == 2) and data.wait_seconds - waited < 0.1
    np.testing.assert_array_equal(np.asarray(second.next_observations)[:9], np.asarray(second.observations)[1:10])
    assert data.loads[:2] == [1, 2]
    data.close()


class _Counter:
    """A stand-in agent: the step, and the shard of every update."""

    def __init__(self, step, seen=()):
        self.step, self.seen = jnp.asarray(step), tuple(seen)


def test_trainer_rotates_by_step_and_a_resumed_run_continues_on_the_same_shard(monkeypatch):
    from flowsoc.rl import _train

    def fake_updates(agent, data, seed, n, batch_size):
        shard = int(np.floor(np.asarray(data.states)[int(data.state_index[data.offset]), 0]))
        return _Counter(int(agent.step) + n, agent.seen + (shard,) * n), {"loss": jnp.zeros(n)}

    monkeypatch.setattr(_train, "fused_updates", fake_updates)
    config = TrainConfig(steps=100, steps_per_dispatch=10, eval_every=0, checkpoint_every=0, progress=False)
    data = ShardedDataset(**_tagged()[0], interval=20, mode="stream")
    result = _train.drive_offline(OfflineTrainer(data, config, {"agent": "fake"}, None, ""), _Counter(0), config)
    assert result.state.seen == tuple((s // 20) % 3 for s in range(100))
    resumed = ShardedDataset(**_tagged()[0], interval=20, mode="stream")
    later = _train.drive_offline(OfflineTrainer(resumed, config, {"agent": "fake"}, None, ""), _Counter(50), config)
    assert later.state.seen == result.state.seen[50:] and resumed.loads[0] == 2  # step 50 is on shard 2


def test_truncated_missing_or_corrupt_shards_are_refused_by_name(folder, tmp_path):
    bad = tmp_path / NAME
    shutil.copytree(folder, bad)
    shard = bad / "cube-single-play-v0-001.npz"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cube-single-play-v0-001\.npz: cannot read .* truncated.*datagen"):
        check_shard_folder(bad, ENV)
    shard.unlink()
    with pytest.raises(DatasetError, match=r"shard\(s\) 001 missing.*python -m flowsoc.rl.datagen cube-single-play"):
        check_shard_folder(bad, ENV)
    # values are checked when a shard is first read
    with np.load(folder / "cube-single-play-v0-001.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["observations"][3, 0] = np.nan
    datagen.atomic_savez(shard, arrays)
    check_shard_folder(bad, ENV)  # headers fine
    with pytest.raises(DatasetError, match=r"cube-single-play-v0-001\.npz: array 'observations' holds NaN"):
        load_shard(shard, ENV, None)
    with pytest.raises(DatasetError, match="does not exist"):
        check_shard_folder(tmp_path / "nowhere", ENV)


def test_online_rotation_overwrites_the_first_rows():
    def table(value, n):
        f = lambda *s: jnp.full((n, *s), value, jnp.float32)  # noqa: E731
        return Transitions(f(3), f(2), f(), f(), f(), f(3))

    buffer = ReplayBuffer.from_transitions(table(0.0, 4), capacity=10)
    buffer = overwrite_rows(buffer, table(7.0, 4))
    assert np.asarray(buffer.data.actions)[:, 0].tolist() == [7.0] * 4 + [0.0] * 6
    assert (int(buffer.size), int(buffer.pointer)) == (4, 4)
    data = ShardedDataset(**_tagged()[0], interval=20)
    assert [data.shard_at(s, start=2) for s in (0, 19, 20, 40, 60)] == [2, 2, 0, 1, 2]  # from the offline shard on


def test_experiment_uses_the_paper_datasets_of_the_large_domains(tmp_path):
    from flowsoc.rl.ogbench._experiment import OfflineArgs, plan

    args = OfflineArgs(env="cube-triple-play-singletask-task2-v0", preset="paper", data_dir=str(tmp_path))
    assert plan(args).dataset_dir == tmp_path / "cube-triple-play-10m-v0"
    assert plan(
        OfflineArgs(**{**args.__dict__, "agent": "qam", "env": "puzzle-4x4-play-singletask-task4-v0"})
    ).dataset_dir == (tmp_path / "puzzle-4x4-play-100m-v0")
    assert plan(OfflineArgs(**{**args.__dict__, "standard_data": True})).dataset_dir is None
    assert plan(OfflineArgs(env="cube-double-play-singletask-task2-v0", preset="paper")).dataset_dir is None
    with pytest.raises(ValueError, match="--shard-interval 150 must be a multiple of --steps-per-dispatch 100"):
        plan(OfflineArgs(**{**args.__dict__, "shard_interval": 150}))
