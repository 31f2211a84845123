"""The locomotion experts: the exported NumPy actor equals the SAC actor, the loader rejects bad
files, antmaze data generate with an expert and load through OGBench's loader, and the shipped ant
expert walks to a nearby goal in a maze."""

import json

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowsoc.rl.ogbench._datagen as datagen
from flowsoc.rl.ogbench._datagen import generate, GenerateOptions
from flowsoc.rl.ogbench._expert_actor import file_sha256, subgoal_direction
from flowsoc.rl.ogbench._experts import ExpertError, export_actor, load_expert, reach_in_xy_env, SHIPPED
from flowsoc.rl.ogbench._sac import SAC, SACConfig


@pytest.fixture(scope="module")
def random_ant(tmp_path_factory):
    """An untrained ant-sized SAC agent and its exported actor file."""
    agent = SAC.create(jr.key(0), 29, 8, SACConfig(actor_final_scale=1.0))
    path = tmp_path_factory.mktemp("expert") / "actor.npz"
    export_actor(agent, path)
    return agent, path


def _generate(env, expert, episodes, length, **options):
    """A small dataset of `episodes` (+1 validation) episodes of `length` steps made with `expert`."""
    return generate(
        GenerateOptions(
            env=env,
            episodes=episodes,
            val_episodes=1,
            episode_length=length,
            expert=str(expert),
            progress=False,
            **options,
        )
    )


def test_numpy_actor_equals_the_sac_actor(random_ant):
    agent, path = random_ant
    actor = load_expert(path, obs_dim=29, action_dim=8)
    obs = np.asarray(jr.normal(jr.key(1), (16, 29)), np.float32)
    expected = np.asarray(agent.sample_actions(jnp.asarray(obs), jr.key(0), deterministic=True))
    assert np.abs(expected).max() > 0.3  # a non-trivial check: actions are far from zero
    np.testing.assert_allclose(actor(obs), expected, atol=2e-6)
    np.testing.assert_allclose(actor(obs[3]), expected[3], atol=2e-6)


def test_loader_rejects_bad_expert_files(random_ant, tmp_path):
    _, good = random_ant
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}

    def write(name, **changes):
        path = tmp_path / name
        np.savez(path, **{k: v for k, v in {**arrays, **changes}.items() if v is not None})
        return path

    with pytest.raises(ExpertError, match="no expert file"):
        load_expert(tmp_path / "absent.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ExpertError, match="not a readable expert file"):
        load_expert(corrupt)
    with pytest.raises(ExpertError, match="expected arrays"):
        load_expert(write("missing.npz", bias_1=None))
    with pytest.raises(ExpertError, match="do not chain"):
        load_expert(write("chain.npz", weight_1=arrays["weight_1"][:, :10]))
    with pytest.raises(ExpertError, match="NaN"):
        load_expert(write("nan.npz", bias_0=np.full_like(arrays["bias_0"], np.nan)))
    with pytest.raises(ExpertError, match="gives 69"):
        load_expert(good, obs_dim=69)
    with pytest.raises(ExpertError, match="takes 21"):
        load_expert(good, action_dim=21)
    # A record beside the file pins its checksum.
    pinned = write("pinned.npz")
    (tmp_path / "pinned.json").write_text(json.dumps({"actor_sha256": file_sha256(pinned)}))
    assert load_expert(pinned).obs_dim == 29
    np.savez(pinned, **{**arrays, "bias_0": arrays["bias_0"] + 1})
    with pytest.raises(ExpertError, match="SHA-256 differs"):
        load_expert(pinned)


def test_antmaze_generates_with_an_expert_and_loads_through_ogbench(random_ant, tmp_path):
    import ogbench

    _, expert = random_ant
    result = _generate("antmaze-medium-navigate-v0", expert, 2, 31, data_dir=str(tmp_path))
    assert (result.train_steps, result.val_steps) == (62, 31)
    raw = np.load(result.train_path)
    assert set(raw.files) == {"observations", "actions", "terminals", "qpos", "qvel"}
    assert raw["observations"].shape == (62, 29) and raw["qpos"].shape == (62, 15) and raw["qvel"].shape == (62, 14)
    assert raw["actions"].shape == (62, 8) and np.abs(raw["actions"]).max() <= 1.0
    env, train, val = ogbench.make_env_and_datasets("antmaze-medium-navigate-v0", dataset_path=str(result.train_path))
    assert env.observation_space.shape == (29,)
    assert train["observations"].shape == (60, 29) and val["actions"].shape == (30, 8)
    assert train["terminals"].sum() == 2
    meta = json.loads(result.train_path.with_suffix(".json").read_text())
    assert meta["resolved"]["expert"] == str(expert.resolve()) and meta["expert_sha256"] == file_sha256(expert)
    # The same file from the same seed, with two workers.
    again = _generate("antmaze-medium-navigate-v0", expert, 2, 31, workers=2, out=str(tmp_path / "again" / "a.npz"))
    np.testing.assert_array_equal(np.load(again.train_path)["actions"], raw["actions"])


def test_humanoidmaze_generates_with_a_humanoid_expert_only(random_ant, tmp_path, capsys):
    _, ant = random_ant
    with pytest.raises(ExpertError, match="29-dimensional observations but this environment gives 69"):
        generate(GenerateOptions(env="humanoidmaze-medium-navigate-v0", expert=str(ant), data_dir=str(tmp_path)))
    args = ["humanoidmaze-medium-navigate-v0", "--expert", str(tmp_path / "none.npz"), "--data-dir", str(tmp_path)]
    assert datagen.main(args) == 2
    assert "no expert file" in capsys.readouterr().err
    humanoid = export_actor(SAC.create(jr.key(0), 69, 21, SACConfig(actor_hidden=(32,))), tmp_path / "h.npz").path
    result = _generate("humanoidmaze-medium-navigate-v0", humanoid, 1, 21, data_dir=str(tmp_path))
    raw = np.load(result.train_path)
    assert raw["observations"].shape == (21, 69) and raw["actions"].shape == (21, 21)


def test_session_antmaze_data_use_the_shipped_expert(data_root):
    meta = json.loads((data_root / "antmaze-medium-navigate-v0.json").read_text())
    assert meta["resolved"]["expert"] == str(SHIPPED["ant"])
    assert meta["expert_sha256"] == json.loads(SHIPPED["ant"].with_suffix(".json").read_text())["actor_sha256"]


def test_shipped_ant_expert_walks_to_a_nearby_goal():
    """In antmaze-medium, from a cell next to the goal cell, the shipped expert following the maze's
    oracle subgoals (no action noise) reaches the goal within 200 steps in most trials."""
    import gymnasium
    import ogbench  # noqa: F401

    actor = load_expert("ant", obs_dim=29, action_dim=8)
    env = gymnasium.make("antmaze-medium-v0", terminate_at_goal=True, max_episode_steps=200)
    u = env.unwrapped
    pairs = [((1, 1), (1, 2)), ((1, 2), (2, 2)), ((3, 2), (3, 3)), ((4, 4), (4, 5)), ((6, 6), (6, 5))]
    reached = 0
    for seed, (init_ij, goal_ij) in enumerate(pairs):
        assert u.maze_map[init_ij] == 0 and u.maze_map[goal_ij] == 0
        env.reset(seed=seed, options=dict(task_info=dict(init_ij=init_ij, goal_ij=goal_ij)))
        for _ in range(200):
            _, _, terminated, truncated, info = env.step(actor.walk(u, subgoal_direction(u)))
            if terminated or truncated:
                break
        reached += bool(info["success"])
    assert reached >= 4, f"reached {reached} of {len(pairs)} nearby goals"


def test_shipped_ant_expert_reaches_commanded_goals_in_the_xy_environment():
    """In the directional environment it was trained in, steered towards a goal 4 units away in a
    random direction, the expert comes within 0.5 of it in 200 steps in most trials."""
    reached = reach_in_xy_env(load_expert("ant"), "ant", trials=5, seed=1)
    assert sum(reached) >= 4, reached


def test_cached_data_of_an_earlier_shipped_expert_warn(tmp_path, recwarn):
    from flowsoc.rl.ogbench._data import resolve_dataset

    stem = "antmaze-medium-navigate-v0"
    for name in (f"{stem}.npz", f"{stem}-val.npz"):
        np.savez(tmp_path / name, terminals=np.ones(1, bool))
    current = file_sha256(SHIPPED["ant"])
    meta = {"resolved": {"expert": str(SHIPPED["ant"])}, "expert_sha256": current}
    (tmp_path / f"{stem}.json").write_text(json.dumps(meta))
    assert resolve_dataset(stem, tmp_path) == tmp_path / f"{stem}.npz"
    assert not [w for w in recwarn if "earlier version" in str(w.message)]
    (tmp_path / f"{stem}.json").write_text(json.dumps({**meta, "expert_sha256": "0" * 64}))
    with pytest.warns(UserWarning, match="earlier version of flowsoc's shipped ant expert.*--overwrite"):
        resolve_dataset(stem, tmp_path)


def test_training_figure_reads_the_driver_rows_or_an_earlier_train_jsonl(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from flowsoc.rl.ogbench._experts import plot_training

    plotted = []
    monkeypatch.setattr(plt.Axes, "plot", lambda self, x, y, *a, **k: plotted.append((list(x), list(y))))
    rows = [{"step": 100, "updates": 0, "return": 1.0}, {"step": 200, "updates": 50, "return": 2.0, "alpha": 0.5}]
    old = tmp_path / "old"
    old.mkdir()
    (old / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_training(old).exists() and plotted[0] == ([100, 200], [1.0, 2.0])
    new = tmp_path / "new"
    new.mkdir()
    rows = [{"kind": "train", **r, "return": 3 * r["return"]} for r in rows] + [
        {"kind": "eval", "step": 200, "return": 9}
    ]
    (new / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (new / "train.jsonl").write_text("")  # ignored beside metrics.jsonl
    assert plot_training(new).exists() and plotted[2] == ([100, 200], [3.0, 6.0])
