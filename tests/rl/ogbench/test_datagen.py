"""The generator: official file format, OGBench's loader, determinism, atomic writes,
refusals."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from flowsoc.rl.ogbench import _datagen as datagen
from flowsoc.rl.ogbench._datagen import generate, GenerateOptions
from flowsoc.rl.ogbench._datagen_recipes import (
    official_recipe,
    parse_dataset_name,
    UnknownDatasetError,
    UnsupportedDatasetError,
)
from flowsoc.rl.ogbench._datagen_rollout import scene_is_healthy


EPISODE_LENGTH = 101  # as in conftest.py
SMALL = {
    "cube-single-play-v0": 3,
    "scene-play-v0": 2,
    "puzzle-3x3-play-v0": 2,
    "pointmaze-medium-navigate-v0": 3,
    "antmaze-medium-navigate-v0": 2,
}


@pytest.fixture(autouse=True, scope="module")
def _same_sizes_as_conftest(small):
    assert small.episodes == SMALL and small.length == EPISODE_LENGTH


# stem -> (observation dim, action dim, has button_states)
SHAPES = {
    "cube-single-play-v0": (28, 5, False),
    "scene-play-v0": (40, 5, True),
    "puzzle-3x3-play-v0": (55, 5, True),
    "pointmaze-medium-navigate-v0": (2, 2, False),
    "antmaze-medium-navigate-v0": (29, 8, False),
}


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("stem", list(SMALL))
def test_raw_file_format(data_root, stem):
    obs_dim, act_dim, buttons = SHAPES[stem]
    for path, episodes in ((data_root / f"{stem}.npz", SMALL[stem]), (data_root / f"{stem}-val.npz", 1)):
        raw = _load(path)
        keys = {"observations", "actions", "terminals", "qpos", "qvel"} | ({"button_states"} if buttons else set())
        assert set(raw) == keys
        n = episodes * EPISODE_LENGTH
        assert raw["observations"].shape == (n, obs_dim) and raw["observations"].dtype == np.float32
        assert raw["actions"].shape == (n, act_dim) and raw["actions"].dtype == np.float32
        assert raw["terminals"].dtype == np.bool_
        expected_terminals = np.zeros(n, bool)
        expected_terminals[EPISODE_LENGTH - 1 :: EPISODE_LENGTH] = True
        np.testing.assert_array_equal(raw["terminals"], expected_terminals)
        assert raw["qpos"].dtype == np.float32 and raw["qvel"].dtype == np.float32
        if buttons:
            assert raw["button_states"].dtype == np.int64
        assert np.all(np.abs(raw["actions"]) <= 1.0)
    meta = (data_root / f"{stem}.json").read_text()
    assert '"generator": "flowsoc.rl.datagen"' in meta


@pytest.mark.parametrize("stem", list(SMALL))
def test_loads_through_ogbench(data_root, stem):
    """OGBench's own loader reads the files, with the official keys and shapes."""
    import ogbench

    obs_dim, act_dim, _ = SHAPES[stem]
    env, train, val = ogbench.make_env_and_datasets(stem, dataset_path=str(data_root / f"{stem}.npz"))
    assert env.observation_space.shape == (obs_dim,)
    assert set(train) == set(val) == {"observations", "actions", "terminals", "next_observations"}
    for data, episodes in ((train, SMALL[stem]), (val, 1)):
        n = episodes * (EPISODE_LENGTH - 1)  # the loader drops each episode's last state
        assert data["observations"].shape == data["next_observations"].shape == (n, obs_dim)
        assert data["actions"].shape == (n, act_dim)
        assert data["terminals"].sum() == episodes
    raw = _load(data_root / f"{stem}.npz")
    np.testing.assert_array_equal(
        train["observations"][: EPISODE_LENGTH - 1], raw["observations"][: EPISODE_LENGTH - 1]
    )
    np.testing.assert_array_equal(
        train["next_observations"][: EPISODE_LENGTH - 1], raw["observations"][1:EPISODE_LENGTH]
    )


def test_scene_episodes_pass_health_check(data_root):
    raw = _load(data_root / "scene-play-v0.npz")
    for episode in np.split(raw["qpos"], np.nonzero(raw["terminals"])[0][:-1] + 1):
        assert scene_is_healthy(episode)


def _small(stem, root, **kw):
    opts = dict(env=stem, episodes=3, val_episodes=1, episode_length=41, seed=0, progress=False)
    opts.update(data_dir=None if root is None else str(root))
    opts.update(kw)
    return generate(GenerateOptions(**opts))


def test_deterministic_for_a_seed(tmp_path):
    a = _small("cube-single-noisy-v0", tmp_path / "a")
    b = _small("cube-single-noisy-v0", tmp_path / "b")
    c = _small("cube-single-noisy-v0", tmp_path / "c", seed=1)
    for path_a, path_b, path_c in ((a.train_path, b.train_path, c.train_path), (a.val_path, b.val_path, c.val_path)):
        ra, rb, rc = _load(path_a), _load(path_b), _load(path_c)
        assert set(ra) == set(rb)
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k])
        assert not np.array_equal(ra["actions"], rc["actions"])
    # Validation episodes are new episodes, not copies of training ones.
    assert not np.array_equal(_load(a.val_path)["actions"], _load(a.train_path)["actions"][:41])


def test_deterministic_across_worker_counts(tmp_path):
    """Per-episode seeding: 1 and 2 worker processes write identical files (cube-double
    noisy exercises markov oracles, random actions and stacking probabilities)."""
    one = _small("cube-double-noisy-v0", tmp_path / "w1", workers=1, episodes=4)
    two = _small("cube-double-noisy-v0", tmp_path / "w2", workers=2, episodes=4)
    for p1, p2 in ((one.train_path, two.train_path), (one.val_path, two.val_path)):
        r1, r2 = _load(p1), _load(p2)
        assert set(r1) == set(r2)
        for k in r1:
            np.testing.assert_array_equal(r1[k], r2[k])
    assert one.train_steps == 4 * 41 and one.val_steps == 41


def test_existing_files_are_kept(tmp_path):
    first = _small("pointmaze-medium-stitch-v0", tmp_path, episodes=2)
    mtime = os.path.getmtime(first.train_path)
    again = _small("pointmaze-medium-stitch-v0", tmp_path, episodes=2)
    assert again.skipped and os.path.getmtime(first.train_path) == mtime
    forced = _small("pointmaze-medium-stitch-v0", tmp_path, episodes=2, overwrite=True)
    assert not forced.skipped


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x.npz"
    datagen.atomic_savez(target, {"a": np.arange(3)})
    assert sorted(os.listdir(tmp_path)) == ["x.npz"]

    real = datagen.savez_reproducible

    def dies_midway(f, arrays):
        real(f, arrays)
        f.truncate(10)  # a partly written file ...
        raise KeyboardInterrupt  # ... when the process is interrupted

    monkeypatch.setattr(datagen, "savez_reproducible", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        datagen.atomic_savez(target, {"a": np.arange(5)})
    with pytest.raises(KeyboardInterrupt):
        datagen.atomic_savez(tmp_path / "new.npz", {"a": np.arange(5)})
    assert sorted(os.listdir(tmp_path)) == ["x.npz"]  # no temp file, no new.npz
    np.testing.assert_array_equal(np.load(target)["a"], np.arange(3))  # old file intact


@pytest.mark.parametrize(
    "name, needle",
    [
        ("humanoidmaze-medium-navigate-singletask-task1-v0", "expert"),
        ("antmaze-giant-explore-v0", "no such dataset"),
        ("antsoccer-arena-navigate-v0", "expert"),
        ("visual-cube-single-play-v0", "visual"),
        ("powderworld-easy-play-v0", "powderworld"),
        ("cube-octuple-play-v0", "octuple"),
    ],
)
def test_refused_datasets(tmp_path, name, needle, capsys):
    with pytest.raises(UnsupportedDatasetError, match=needle):
        generate(GenerateOptions(env=name, data_dir=str(tmp_path)))
    assert datagen.main([name, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert name in err and needle in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "name", ["cube-single-v0", "foo-play-v0", "cube-single-play", "cube-single-play-singletask-task7-v0"]
)
def test_unknown_names(name):
    with pytest.raises(UnknownDatasetError, match=name):
        generate(GenerateOptions(env=name))


def test_cli(tmp_path, capsys):
    assert datagen.main(["--help"]) == 0
    help_text = capsys.readouterr().out
    for flag in ("ENV", "--episodes", "--workers", "--seed", "--episode-length", "--data-dir", "--overwrite"):
        assert flag in help_text
    args = ["pointmaze-medium-navigate-v0", "--episodes", "2", "--episode-length", "21", "--data-dir", str(tmp_path)]
    assert datagen.main(args + ["--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path)) == [
        "pointmaze-medium-navigate-v0-val.npz",
        "pointmaze-medium-navigate-v0.json",
        "pointmaze-medium-navigate-v0.npz",
    ]
    assert _load(tmp_path / "pointmaze-medium-navigate-v0.npz")["terminals"].shape == (42,)


def test_out_path_and_singletask_name(tmp_path):
    out = tmp_path / "sub" / "mine.npz"
    res = _small("cube-single-play-singletask-task3-v0", None, out=str(out), episodes=1, episode_length=11)
    assert res.train_path == out and res.val_path == tmp_path / "sub" / "mine-val.npz"
    assert shutil.disk_usage(out) and out.exists() and res.val_path.exists()


def test_names_and_recipes():
    p = parse_dataset_name("cube-double-play-singletask-task2-v0")
    assert (p.env_id, p.file_stem, p.task, p.dataset_type) == ("cube-double-v0", "cube-double-play-v0", 2, "play")
    assert parse_dataset_name("cube-double-play-singletask-v0").task == 2
    assert parse_dataset_name("puzzle-4x4-play-singletask-v0").task == 4
    assert parse_dataset_name("puzzle-4x6-noisy-singletask-v0").task == 2
    assert parse_dataset_name("scene-play-oraclerep-v0").file_stem == "scene-play-v0"
    assert parse_dataset_name("antmaze-large-navigate-singletask-task3-v0").file_stem == "antmaze-large-navigate-v0"
    # upstream commands.sh
    assert official_recipe(parse_dataset_name("cube-triple-play-v0")).episodes == 3000
    assert official_recipe(parse_dataset_name("cube-quadruple-noisy-v0")).p_random_action == 0.1
    assert official_recipe(parse_dataset_name("puzzle-4x4-noisy-v0")).p_random_action == 0.2
    assert official_recipe(parse_dataset_name("scene-play-v0")).episode_length == 1001
    assert official_recipe(parse_dataset_name("pointmaze-giant-navigate-v0")).episode_length == 2001
    assert official_recipe(parse_dataset_name("pointmaze-large-stitch-v0")).episodes == 5000
    # The locomotion mazes (upstream commands.sh): expert rollouts with action noise 0.2 (explore: 1.0).
    recipes = {
        "antmaze-large-navigate-v0": (1000, 1001, 0.2),
        "antmaze-giant-navigate-v0": (500, 2001, 0.2),
        "antmaze-medium-stitch-v0": (5000, 201, 0.2),
        "antmaze-large-explore-v0": (10000, 501, 1.0),
        "humanoidmaze-medium-navigate-v0": (1000, 2001, 0.2),
        "humanoidmaze-giant-navigate-v0": (1000, 4001, 0.2),
        "humanoidmaze-large-stitch-v0": (5000, 401, 0.2),
    }
    for name, (episodes, length, noise) in recipes.items():
        recipe = official_recipe(parse_dataset_name(name))
        assert (recipe.episodes, recipe.episode_length, recipe.noise) == (episodes, length, noise)
        assert recipe.oracle == "expert"
    assert datagen.rollout_config(GenerateOptions(env="puzzle-4x5-play-v0"))[2:] == (3000, 300)


def test_navigate_records_goals_reached(tmp_path):
    """The maze oracle reaches and replaces goal after goal in a navigate episode; the generator
    records how many in the dataset's JSON record (not in the data file)."""
    result = _small("pointmaze-medium-navigate-v0", tmp_path, episodes=2, episode_length=1001)
    meta = json.loads(result.train_path.with_suffix(".json").read_text())
    goals = meta["goals_reached"]
    assert goals["per_episode"] >= 2 and goals["episodes_with_a_goal"] == 1.0
    assert goals["total"] == round(2 * goals["per_episode"])
    assert "_goals_reached" not in np.load(result.train_path).files


def test_maze_stats_on_a_hand_made_file(tmp_path):
    """Coverage, speed and episode counts of a file whose path is known cell by cell."""
    import gymnasium
    import ogbench  # noqa: F401

    u = gymnasium.make("antmaze-medium-v0").unwrapped
    free = int((np.asarray(u.maze_map) == 0).sum())
    cells = [(1, 1), (1, 2), (2, 2), (1, 1), (6, 6), (6, 5)]  # two episodes of three steps, five cells
    xy = np.array([u.ij_to_xy(c) for c in cells])
    qpos = np.zeros((6, 15), np.float32)
    qpos[:, :2], qpos[:, 2] = xy, [0.5, 0.5, 0.5, 0.5, 0.1, 0.5]  # one step with the torso on the ground
    terminals = np.array([0, 0, 1, 0, 0, 1], bool)
    np.savez(tmp_path / "antmaze-medium-navigate-v0.npz", qpos=qpos, terminals=terminals)
    stats = datagen.maze_stats(tmp_path / "antmaze-medium-navigate-v0.npz")
    steps = [np.linalg.norm(xy[1] - xy[0]), np.linalg.norm(xy[2] - xy[1])]
    steps += [np.linalg.norm(xy[4] - xy[3]), np.linalg.norm(xy[5] - xy[4])]
    assert stats["episodes"] == 2 and stats["steps"] == 6 and stats["mean_episode_length"] == 3.0
    assert stats["coverage"] == pytest.approx(5 / free)
    assert stats["mean_xy_step"] == pytest.approx(np.mean(steps))
    assert stats["upright"] == pytest.approx(5 / 6)


# --------------------------------------------------------------------------------------
# Bad input: one line naming the flag, exit 2, nothing written
# --------------------------------------------------------------------------------------

MAZE = "pointmaze-medium-navigate-v0"


def _cli_refuses(argv, capsys):
    """`main(argv)` exits 2 with one line `error: ...` and no traceback; returns that line."""
    assert datagen.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--workers", "0"], "--workers must be an integer of at least 1, got 0"),
        (["--workers", "-2"], "--workers must be an integer of at least 1, got -2"),
        (["--episodes", "0"], "--episodes must be an integer of at least 1, got 0"),
        (["--episodes", "-3"], "--episodes must be an integer of at least 1, got -3"),
        (["--val-episodes", "0"], "--val-episodes must be an integer of at least 1, got 0"),
        (["--episode-length", "1"], "--episode-length must be an integer of at least 2, got 1"),
        (["--episode-length", "-5"], "--episode-length must be an integer of at least 2, got -5"),
        (["--seed", "-1"], "--seed must be an integer of at least 0, got -1"),
        (["--noise", "-0.5"], "--noise must be a finite number >= 0, got -0.5"),
        (["--noise", "nan"], "--noise must be a finite number >= 0, got nan"),
        (["--p-random-action", "1.5"], "--p-random-action must be a probability in [0, 1], got 1.5"),
        (["--expert", "actor.npz"], "--expert applies to antmaze and humanoidmaze only"),
    ],
)
def test_bad_numbers_are_usage_errors(tmp_path, capsys, args, needle):
    line = _cli_refuses([MAZE, "--data-dir", str(tmp_path / "d"), *args], capsys)
    assert needle in line
    assert not (tmp_path / "d").exists()  # refused before anything is written
    with pytest.raises(datagen.OptionError, match=re.escape(args[0])):
        generate(GenerateOptions(env=MAZE, data_dir=str(tmp_path / "d"), **{_field(args[0]): _value(args[1])}))


def _field(flag):
    return flag[2:].replace("-", "_")


def _value(text):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def test_p_random_action_is_refused_on_mazes(tmp_path, capsys):
    line = _cli_refuses([MAZE, "--p-random-action", "0.3", "--data-dir", str(tmp_path)], capsys)
    assert "--p-random-action applies to manipulation datasets only" in line and "--noise" in line


def test_bad_output_paths_are_usage_errors(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    cases = [
        (["--out", str(tmp_path / "x.txt")], "--out must be a file name ending in .npz, got"),
        (["--out", str(tmp_path / "x")], "--out must be a file name ending in .npz, got"),
        (["--out", str(a_file / "x.npz")], f"x.npz: {a_file} is an existing file, not a directory"),
        (["--out", str(tmp_path / "x.npz"), "--data-dir", str(tmp_path)], "--out (" + str(tmp_path / "x.npz")),
        (["--data-dir", str(a_file)], f"--data-dir: {a_file} is an existing file, not a directory"),
        (["--data-dir", str(a_file / "sub")], f"lies under {a_file}, which is an existing file"),
    ]
    for args, needle in cases:
        assert needle in _cli_refuses([MAZE, "--episodes", "1", *args], capsys)
    monkeypatch.setenv(datagen.DATA_DIR_ENV, str(a_file))
    assert f"$FLOWSOC_DATA_DIR: {a_file} is an existing file" in _cli_refuses([MAZE, "--episodes", "1"], capsys)
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_shortest_episode_length_holds_one_transition(tmp_path):
    """`--episode-length 2` (the minimum) gives one transition per episode through OGBench's loader."""
    from flowsoc.rl.ogbench._data import load_ogbench

    _small(MAZE, tmp_path, episodes=3, episode_length=datagen.MIN_EPISODE_LENGTH)
    _, train, val = load_ogbench("pointmaze-medium-navigate-singletask-task1-v0", tmp_path)
    assert train["observations"].shape == (3, 2) and train["terminals"].sum() == 3 and len(val["rewards"]) == 1


def test_unknown_task_number_names_the_valid_ones(tmp_path, capsys):
    name = "cube-single-play-singletask-task9-v0"
    line = _cli_refuses([name, "--data-dir", str(tmp_path)], capsys)
    assert name in line and "there is no task9" in line and "tasks 1 to 5" in line
    assert "cube-single-play-singletask-v0 for the default, task2" in line
    with pytest.raises(UnknownDatasetError, match="there is no task0"):
        parse_dataset_name("scene-play-singletask-task0-v0")


def test_existing_dataset_with_other_numbers_is_refused(tmp_path, capsys):
    """A present dataset is not silently taken for one of another size or seed: the CLI names what the file
    holds and what was asked, and regenerates only with --overwrite."""
    base = [MAZE, "--episode-length", "11", "--data-dir", str(tmp_path), "--no-progress"]
    assert datagen.main([*base, "--episodes", "3"]) == 0
    capsys.readouterr()
    train = tmp_path / f"{MAZE}.npz"
    line = _cli_refuses([*base, "--episodes", "50"], capsys)
    assert f"{train} holds 3 episodes of 11 steps, 1 validation episode, seed 0, but --episodes 50" in line
    assert "--overwrite" in line
    assert "--seed 1 was asked for" in _cli_refuses([*base, "--episodes", "3", "--seed", "1"], capsys)
    assert "--val-episodes 2 was asked for" in _cli_refuses([*base, "--val-episodes", "2"], capsys)
    assert "noise 0.5, but --noise 0.3 was asked for" in _cli_refuses([*base, "--noise", "0.3"], capsys)
    assert datagen.main([*base[:-1], "--episodes", "3"]) == 0  # the same numbers: nothing to do
    assert "(cached: 3 episodes of 11 steps, 1 validation episode, seed 0;" in capsys.readouterr().out
    assert datagen.main([*base, "--episodes", "5", "--overwrite"]) == 0
    assert _load(train)["terminals"].sum() == 5


# --------------------------------------------------------------------------------------
# Debris of a killed generator, workers of a killed generator, file modes
# --------------------------------------------------------------------------------------


def _dead_pid():
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_leftover_temporary_files_are_removed_at_the_next_start(tmp_path):
    stem = "pointmaze-medium-stitch-v0"
    dead = _dead_pid()
    stale = [f".{stem}.npz.{dead}.0123abcd.tmp.npz", f".{stem}-val.npz.{dead}.89abcdef.tmp.npz"]
    stale.append(f".{stem}.json.{dead}.00ff00ff.tmp")
    kept = [
        f".{stem}.npz.{os.getpid()}.0123abcd.tmp.npz",  # a live writer's (this process)
        f".other-v0.npz.{dead}.0123abcd.tmp.npz",  # another file's
        f".{stem}.npz.notes",  # not the generator's pattern
        f"{stem}.npz.{dead}.0123abcd.tmp.npz",  # not hidden: not the generator's pattern
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"partial")
    _small(stem, tmp_path, episodes=1, episode_length=11)
    names = set(os.listdir(tmp_path))
    assert not names & set(stale) and set(kept) <= names
    # also when the dataset is already complete (the generator has nothing to do)
    (tmp_path / stale[0]).write_bytes(b"partial")
    assert _small(stem, tmp_path, episodes=1, episode_length=11).skipped
    assert stale[0] not in os.listdir(tmp_path)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_workers_end_with_a_killed_parent(tmp_path):
    """A generator killed outright (kill -9) takes its worker processes with it within a second, instead of
    leaving them to finish their episode (the task below would sleep a minute)."""
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "worker.pid"
    script = (
        "import multiprocessing as mp, os, time\n"
        "from flowsoc.rl.ogbench._datagen_rollout import exit_with_parent\n"
        "def task(_):\n"
        f"    open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        "ctx = mp.get_context('fork')\n"
        "with ctx.Pool(1, initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:\n"
        "    pool.map(task, [0])\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            assert parent.poll() is None
            time.sleep(0.05)
        worker = int(marker.read_text())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()

    def running(pid):
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"  # a zombie has ended (its new parent may not reap it)

    killed = time.monotonic()
    while running(worker) and time.monotonic() - killed < 5:
        time.sleep(0.05)
    assert not running(worker), "the worker outlived its killed parent"


def test_dataset_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        result = _small("pointmaze-medium-stitch-v0", tmp_path / "a", episodes=1, episode_length=11)
        os.umask(0o077)
        private = _small("pointmaze-medium-stitch-v0", tmp_path / "b", episodes=1, episode_length=11)
    finally:
        os.umask(old)
    for path in (result.train_path, result.val_path, result.train_path.with_suffix(".json")):
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o644), path
    for path in (private.train_path, private.val_path, private.train_path.with_suffix(".json")):
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o600), path


# --------------------------------------------------------------------------------------
# What the command line tells a new user: where the files are, what can be generated
# --------------------------------------------------------------------------------------


def test_cli_says_where_it_wrote_or_found_the_dataset(tmp_path, capsys):
    args = [MAZE, "--episodes", "2", "--episode-length", "21", "--data-dir", str(tmp_path), "--no-progress"]
    assert datagen.main(args) == 0
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(
        rf"dataset {MAZE[:-3]}-v0 in {re.escape(str(tmp_path))} \(generated in [0-9.]+ s: {MAZE}.npz 42 steps, "
        rf"{MAZE[:-3]}-v0-val.npz 21 steps, [0-9]+ steps/s\)",
        line,
    ), line
    assert datagen.main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line == (
        f"dataset {MAZE[:-3]}-v0 in {tmp_path} (cached: 2 episodes of 21 steps, 1 validation episode, seed 0; "
        "--overwrite regenerates it)"
    )


def test_help_states_each_default_once(capsys):
    assert datagen.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "{None}|" not in text
    assert text.count("(default: OGBench's official count") == 1 and "--episodes N" in text
    assert "(default: 1)" in text  # --workers: a default that is a value is still shown
    assert "python -m flowsoc.rl.datagen --list" in text


def test_list_shows_every_dataset_what_it_needs_and_its_size(tmp_path, capsys):
    from flowsoc.rl.ogbench._datagen_recipes import generatable_datasets, require_generatable

    assert datagen.main(["--list", "--data-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line for line in text.splitlines() if line.endswith(("oracle", "flowsoc", "below)"))}
    every = generatable_datasets()
    assert sorted(rows) == sorted(p.file_stem for p in every) and len(every) == 43
    for parsed in every:
        require_generatable(parsed, expert="any")  # each listed one can be generated (humanoid: given an expert)
    assert "antmaze-giant-explore-v0" not in rows and "humanoidmaze-teleport-navigate-v0" not in rows
    # Official sizes: episodes x steps = transitions of the training file, and a bound on both files on disk.
    assert "1000 episodes x 1001 steps = 1.0M transitions" in rows["cube-single-play-v0"]
    assert "5000 episodes x 201 steps = 1.0M transitions" in rows["antmaze-large-stitch-v0"]
    assert "1000 episodes x 4001 steps = 4.0M transitions" in rows["humanoidmaze-giant-navigate-v0"]
    assert "<= 327 MB" in rows["cube-single-play-v0"] and "<= 36 MB" in rows["pointmaze-medium-navigate-v0"]
    # What each needs: nothing, the shipped ant expert, or a humanoid expert to train first.
    assert rows["cube-single-play-v0"].endswith("OGBench's scripted oracle")
    assert rows["antmaze-medium-navigate-v0"].endswith("the ant expert shipped with flowsoc")
    assert rows["humanoidmaze-medium-navigate-v0"].endswith("a humanoid expert you train (see below)")
    assert "python -m flowsoc.rl.experts --expert humanoid --out DIR" in text
    assert "cube-double-play-singletask-task2-v0" in text  # how a file's name relates to the --env names
    assert f"into {tmp_path}" in text and "antsoccer-{arena,medium}-{navigate,stitch}-v0" in text


def test_listed_size_bounds_a_generated_file(tmp_path):
    """The per-step bytes behind --list's sizes equal those of a generated file, uncompressed."""
    from flowsoc.rl.ogbench._datagen_recipes import bytes_per_step

    res = _small(MAZE, tmp_path, episodes=2, episode_length=21)
    with np.load(res.train_path) as f:
        raw = sum(f[k].nbytes for k in f.files)
    assert raw == res.train_steps * bytes_per_step(parse_dataset_name(MAZE))


def test_copy_the_files_refusals_name_the_data_directory(tmp_path, capsys, monkeypatch):
    line = _cli_refuses(["antsoccer-arena-navigate-v0", "--data-dir", str(tmp_path / "d")], capsys)
    assert f"copy them into {tmp_path / 'd'} (the data directory; --data-dir DIR picks another)" in line
    monkeypatch.setenv("FLOWSOC_DATA_DIR", str(tmp_path / "env"))
    line = _cli_refuses(["powderworld-easy-play-v0"], capsys)
    assert f"copy them into {tmp_path / 'env'} " in line
    line = _cli_refuses(["visual-cube-single-play-v0", "--out", str(tmp_path / "o" / "x.npz")], capsys)
    assert f"copy them into {tmp_path / 'o'} " in line


def test_unknown_name_shows_the_format_the_domains_and_the_list(capsys):
    line = _cli_refuses(["cube-singel-play-v0"], capsys)
    assert "'cube-singel-play-v0' is not a known OGBench dataset" in line
    assert "e.g. cube-double-play-singletask-task2-v0" in line and "cube-{single,double,triple,quadruple}" in line
    assert line.endswith("python -m flowsoc.rl.datagen --list")
