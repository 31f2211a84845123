"""
Generate OGBench datasets locally, with OGBench's own environments and scripted oracles.

    python -m flowsoc.rl.datagen cube-double-play-v0 --episodes 1000 --workers 8

writes `cube-double-play-v0.npz` (training episodes) and `cube-double-play-v0-val.npz`
(`episodes // 10` more, at least one) into the data directory (`--data-dir`, else
`$FLOWSOC_DATA_DIR`, else `~/.ogbench/data`), in the official raw file format, so that
`ogbench.make_env_and_datasets(name, dataset_path=...)` loads them exactly as a
download.

The protocol follows upstream OGBench's `data_gen_scripts/` (see `_datagen_rollout`).
Data depend only on the options and `--seed`: each episode is seeded from `(seed,
episode index)`, so any worker count gives identical files. Files are written to a
temporary name in the same directory and renamed, so a file under the final name is
always complete.

Antmaze data are rollouts of the ant expert that ships with flowsoc (trained by
`python -m flowsoc.rl.experts`, SAC with upstream's recipe) following the maze's oracle
subgoals; humanoidmaze needs a humanoid expert trained the same way and passed as
`--expert DIR/actor.npz`. Antsoccer is refused (its second expert, the ant dribbling a
ball, is not trained here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, TYPE_CHECKING

import numpy as np

from ._datagen_recipes import (
    DatasetName,
    EXPERT_DOMAINS,
    official_recipe,
    parse_dataset_name,
    require_generatable,
    shard_file_name,
    shard_recipe,
)
from ._datagen_rollout import GOALS_KEY, rollout_episode, RolloutConfig, worker_episode
from ._dataset_files import (
    check_cached,
    data_dir as data_dir,
    DATA_DIR_ENV as DATA_DIR_ENV,
    data_dir_source,
    dataset_contents,
    DEFAULT_DATA_DIR as DEFAULT_DATA_DIR,
    describe_contents,
    directory_problem,
    generate_command as generate_command,
    record_path,
    remove_stale_temporaries,
    temporary_path,
)


if TYPE_CHECKING:
    # Only the CLI needs tyro: `main` imports it and binds it here, where tyro looks up the name
    # `tyro` in `GenerateOptions`' (string) annotations. Importing this module stays tyro-free.
    import tyro


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """
    Generate one OGBench dataset (training file and `-val.npz`) with OGBench's scripted
    oracles.

    Unset numbers take OGBench's official values for the dataset (e.g. 1000 episodes of
    1001 steps for cube-double-play, 3000 for cube-triple; p_random_action 0.1/0.2 for
    noisy sets).
    """

    env: Annotated[str, tyro.conf.arg(metavar="ENV")]
    """Dataset name, e.g. cube-double-play-v0 (a -singletask[-taskN] or -oraclerep name generates its data
    file); --list shows every one."""
    # Fields whose docstring states their default: `help_behavior_hint=""` drops tyro's
    # "(default: None)" after it, and names the value (N, X, DIR) instead of "{None}|INT".
    episodes: Annotated[int | None, tyro.conf.arg(metavar="N", help_behavior_hint="")] = None
    """Training episodes (default: OGBench's official count; --list shows it)."""
    val_episodes: Annotated[int | None, tyro.conf.arg(metavar="N", help_behavior_hint="")] = None
    """Validation episodes (default: episodes // 10, at least 1)."""
    episode_length: Annotated[int | None, tyro.conf.arg(metavar="N", help_behavior_hint="")] = None
    """Env steps per episode (default: OGBench's, e.g. 1001; 201 for stitch, 2001 for pointmaze-giant)."""
    workers: int = 1
    """Worker processes (MuJoCo is single-threaded; use about one per core)."""
    seed: Annotated[int | None, tyro.conf.arg(metavar="N", help_behavior_hint="")] = None
    """Base seed, a non-negative integer (default 0); episode i uses a seed derived from (seed, i) only."""
    data_dir: Annotated[str | None, tyro.conf.arg(metavar="DIR", help_behavior_hint="")] = None
    """Output directory (default: $FLOWSOC_DATA_DIR or ~/.ogbench/data)."""
    out: Annotated[str | None, tyro.conf.arg(metavar="FILE.npz", help_behavior_hint="")] = None
    """Explicit training-file path ending in .npz, instead of --data-dir (-val.npz and .json go beside it)."""
    noise: Annotated[float | None, tyro.conf.arg(metavar="X", help_behavior_hint="")] = None
    """Plan-oracle noise / markov noise ceiling (default 0.1), or a maze's action noise std (0.5; 0.2 ant)."""
    p_random_action: Annotated[float | None, tyro.conf.arg(metavar="P", help_behavior_hint="")] = None
    """Probability of a uniform random action (default: 0 for play, 0.1 noisy, 0.2 puzzle noisy)."""
    expert: Annotated[str | None, tyro.conf.arg(metavar="FILE", help_behavior_hint="")] = None
    """antmaze / humanoidmaze: the walking expert's actor.npz (default for antmaze: the shipped ant expert)."""
    shards: Annotated[int | None, tyro.conf.arg(metavar="K", help_behavior_hint="")] = None
    """Large datasets (NAME-10m-v0, ...): make only the first K shards (default: all; --episodes then counts
    episodes per shard). Rerunning resumes at the first missing shard."""
    overwrite: bool = False
    """Regenerate even if both files exist (without it, files holding other data than asked for are refused)."""
    progress: bool = True
    """Show a progress bar."""


class OptionError(ValueError):
    """An option of `GenerateOptions` is out of range or contradicts another; the message names the
    command-line flag (`--workers`) and what to give instead."""


MIN_EPISODE_LENGTH = 2
"""An episode of L env steps holds L - 1 transitions (OGBench's loader drops each episode's last state, which
only serves as the previous transition's next observation): 2 steps hold one."""


def check_options(options: GenerateOptions) -> None:
    """Refuse out-of-range or contradictory options before any work, with an `OptionError` naming the flag
    as typed on the command line (`--workers must be at least 1, got 0 ...`)."""

    def at_least(flag: str, value: int | None, low: int, what: str) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise OptionError(f"{flag} must be an integer of at least {low}, got {value!r}: {what}.")

    cores = os.cpu_count() or 1
    at_least("--workers", options.workers, 1, f"the number of worker processes (about one per core; {cores} here)")
    at_least("--episodes", options.episodes, 1, "the number of training episodes (omit it for OGBench's count)")
    at_least("--val-episodes", options.val_episodes, 1, "the number of validation episodes (omit it for 10%)")
    at_least(
        "--episode-length",
        options.episode_length,
        MIN_EPISODE_LENGTH,
        f"env steps per episode; an episode of L steps holds L - 1 transitions, so {MIN_EPISODE_LENGTH} is the "
        "shortest that holds one (omit it for OGBench's length)",
    )
    at_least("--seed", options.seed, 0, "episode seeds are derived from it (numpy SeedSequence takes no sign)")
    at_least("--shards", options.shards, 1, "how many of a large dataset's shards to make (omit it for all)")
    sharded = parse_dataset_name(options.env).sharded
    if options.shards is not None and not sharded:
        raise OptionError(
            f"--shards applies to large sharded datasets (a size before -v0, e.g. cube-triple-play-10m-v0); "
            f"{options.env} is one file: drop --shards."
        )
    if options.out is not None and sharded:
        raise OptionError(
            f"--out names one file, but {options.env} is a folder of shards: give --data-dir DIR instead (the folder "
            f"DIR/{options.env} is made)."
        )
    for flag, value, high in (("--noise", options.noise, math.inf), ("--p-random-action", options.p_random_action, 1)):
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= high and math.isfinite(value)):
            bound = "a probability in [0, 1]" if high == 1 else "a finite number >= 0"
            raise OptionError(f"{flag} must be {bound}, got {value!r}.")
    if options.out is not None:
        if options.data_dir is not None:
            raise OptionError(
                f"--out ({options.out}) and --data-dir ({options.data_dir}) both say where to write: --out names "
                "the training file itself; give one of them."
            )
        out = Path(options.out).expanduser()
        if out.suffix != ".npz" or out.name == ".npz":
            raise OptionError(
                f"--out must be a file name ending in .npz, got {options.out!r}: the training file "
                "(NAME.npz; NAME-val.npz and NAME.json are written beside it)."
            )
        if out.is_dir():
            raise OptionError(f"--out {options.out} is an existing directory; give a file path ending in .npz.")
        problem = directory_problem(out.parent)
        if problem is not None:
            raise OptionError(f"--out {options.out}: {problem}; give a path in a writable directory.")
    else:
        problem = directory_problem(data_dir(options.data_dir))
        if problem is not None:
            source = data_dir_source(options.data_dir)
            raise OptionError(f"{source}: {problem}; give a writable directory (it is created if missing).")


@dataclasses.dataclass(frozen=True)
class GeneratedDataset:
    """What `generate` wrote (or found already present)."""

    train_path: Path
    val_path: Path
    train_steps: int
    val_steps: int
    seconds: float
    skipped: bool  # True: both files existed and `overwrite` was off


def output_paths(options: GenerateOptions) -> tuple[Path, Path]:
    """The training and validation file paths `options` writes to."""
    parsed = parse_dataset_name(options.env)
    if options.out is not None:
        train = Path(options.out).expanduser()
        if train.suffix != ".npz":
            raise OptionError(f"--out must be a file name ending in .npz, got {options.out!r}.")
    else:
        train = data_dir(options.data_dir) / f"{parsed.file_stem}.npz"
    return train, train.with_name(train.name[: -len(".npz")] + "-val.npz")


def rollout_config(
    options: GenerateOptions,
) -> tuple[DatasetName, RolloutConfig, int, int]:
    """
    Resolve defaults: `(parsed name, per-episode config, train episodes, val episodes)`.

    Raises `OptionError` (see `check_options`) for bad numbers, and for options that do not apply to the
    dataset (`--expert` outside antmaze / humanoidmaze, `--p-random-action` on a maze).
    """
    check_options(options)
    parsed = parse_dataset_name(options.env)
    directory = Path(options.out).expanduser().parent if options.out is not None else data_dir(options.data_dir)
    require_generatable(parsed, options.expert, directory)  # a refusal names where to copy official files
    if options.expert is not None and parsed.domain not in EXPERT_DOMAINS:
        raise OptionError(
            f"--expert applies to antmaze and humanoidmaze only (their data are rollouts of a locomotion expert); "
            f"{parsed.file_stem} is generated by OGBench's scripted oracles: drop --expert."
        )
    if options.p_random_action and "maze" in parsed.domain:
        raise OptionError(
            f"--p-random-action applies to manipulation datasets only; {parsed.file_stem}'s randomness is its "
            "action noise: use --noise (the noise's standard deviation) instead."
        )
    recipe = shard_recipe(parsed).recipe if parsed.sharded else official_recipe(parsed)
    episodes = recipe.episodes if options.episodes is None else options.episodes
    val = max(1, episodes // 10) if options.val_episodes is None else options.val_episodes
    length = recipe.episode_length if options.episode_length is None else options.episode_length
    cfg = RolloutConfig(
        env_id=parsed.env_id,
        domain=parsed.domain,
        variant=parsed.variant,
        dataset_type=parsed.dataset_type,
        seed=0 if options.seed is None else options.seed,
        episode_length=length,
        p_random_action=recipe.p_random_action if options.p_random_action is None else options.p_random_action,
        noise=recipe.noise if options.noise is None else options.noise,
        expert=expert_file(parsed, options.expert),
    )
    return parsed, cfg, episodes, val


def expert_file(parsed: DatasetName, expert: str | None) -> str | None:
    """The expert actor file the rollouts of `parsed` use (`None` for oracle-driven domains),
    checked here, before any worker starts: raises `ExpertError` if it is unusable."""
    if parsed.domain not in EXPERT_DOMAINS:
        return None
    from ._expert_actor import EXPERT_ACTION_DIM, EXPERT_OBS_DIM, load_expert, SHIPPED

    name = expert if expert is not None else EXPERT_DOMAINS[parsed.domain]
    load_expert(name, obs_dim=EXPERT_OBS_DIM[parsed.domain], action_dim=EXPERT_ACTION_DIM[parsed.domain])
    return str(SHIPPED[name]) if name in SHIPPED else str(Path(name).expanduser().resolve())


def _episodes(
    cfg: RolloutConfig, total: int, workers: int, shard: int | None = None, pool: Any = None
) -> Iterator[dict[str, np.ndarray]]:
    """
    Episodes 0..total-1 (of shard `shard`, or of a standard file) in order, from `workers` processes (in-process
    when workers == 1; `pool`: a running pool of `_worker_pool` to use instead of starting one).
    """
    if workers == 1:
        for i in range(total):
            yield rollout_episode(cfg, i, shard)
        return
    if pool is None:
        with _worker_pool(min(workers, total)) as own:
            yield from _episodes(cfg, total, workers, shard, own)
        return
    for i, (episode, arrays) in enumerate(pool.imap(worker_episode, ((cfg, j, shard) for j in range(total)))):
        assert episode == i
        yield arrays


def _worker_pool(workers: int) -> Any:
    """A pool of `workers` rollout processes."""
    import multiprocessing

    from ._datagen_rollout import exit_with_parent

    ctx = multiprocessing.get_context(_start_method())
    # Pool workers are daemons (ended when this process exits normally); `exit_with_parent` also ends them
    # when it is killed outright (kill -9), instead of leaving them to finish their episode.
    return ctx.Pool(workers, initializer=exit_with_parent, initargs=(os.getpid(),))


def _start_method() -> str:
    """The multiprocessing start method: "spawn", so that no process holding JAX/XLA
    threads is forked; "fork" only when the main module is not a file that spawn could
    re-import (`python - <script`), which is safe as the workers never touch JAX.
    """
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is not None and not os.path.exists(main_file) and sys.platform != "win32":
        return "fork"
    return "spawn"


def _concat(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}


def savez_reproducible(file: Any, arrays: Mapping[str, Any]) -> None:
    """`np.savez_compressed` with a fixed time stamp on every member (numpy stamps the current time): the same
    arrays give the same bytes, so a regenerated or resumed dataset is byte-identical to an uninterrupted one."""
    import zipfile

    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def atomic_savez(path: Path, arrays: Mapping[str, Any]) -> None:
    """
    `np.savez_compressed` (reproducibly, `savez_reproducible`) to a temporary file in the same directory, then
    `os.replace`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)  # `.NAME.PID.RANDOM.tmp.npz`: a killed writer's leftover is recognised by its PID
    try:
        # Created with mode 0666 less the umask (0644 under 022), as `open` does; unlike `tempfile.mkstemp`'s
        # 0600, which the rename would keep.
        with open(tmp, "xb") as f:
            savez_reproducible(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate(options: GenerateOptions) -> GeneratedDataset | GeneratedShards:
    """Generate the dataset described by `options`; return the paths and step counts (for a large dataset,
    `NAME-10m-v0`, its folder and shards: `generate_shards`).

    Raises `UnknownDatasetError` / `UnsupportedDatasetError` (subclasses of
    `DatasetError`) for names that are not OGBench datasets or cannot be generated here.
    """
    parsed, cfg, n_train, n_val = rollout_config(options)
    if parsed.sharded:
        return generate_shards(options, parsed, cfg, n_train, n_val)
    train_path, val_path = output_paths(options)
    meta_path = record_path(train_path)
    # A generator killed mid-write (kill -9) leaves its temporary files; remove those of dead writers.
    remove_stale_temporaries(train_path, val_path, meta_path)
    if not options.overwrite and train_path.exists() and val_path.exists():
        requested = dict(
            episodes=options.episodes,
            val_episodes=options.val_episodes,
            episode_length=options.episode_length,
            seed=options.seed,
            noise=options.noise,
            p_random_action=options.p_random_action,
        )
        where = f"--out {options.out}" if options.out is not None else f"--data-dir {train_path.parent}"
        check_cached(
            train_path,
            requested,
            f"Pass --overwrite to regenerate it, or write elsewhere (another --data-dir or --out) instead of {where}.",
        )
        return GeneratedDataset(train_path, val_path, 0, 0, 0.0, skipped=True)

    from tqdm.auto import tqdm

    total = n_train + n_val
    start = time.perf_counter()
    collected: list[dict[str, np.ndarray]] = []
    bar = tqdm(
        total=total * cfg.episode_length,
        unit="step",
        unit_scale=True,
        desc=f"{parsed.file_stem} ({options.workers} worker(s))",
        disable=not options.progress,
        file=sys.stderr,
    )
    goals: list[int] = []
    with bar:
        for arrays in _episodes(cfg, total, options.workers):
            if GOALS_KEY in arrays:
                goals.append(int(arrays.pop(GOALS_KEY)[0]))
            collected.append(arrays)
            bar.update(len(arrays["terminals"]))
    seconds = time.perf_counter() - start
    train, val = _concat(collected[:n_train]), _concat(collected[n_train:])
    # Validation first: the training file appearing last marks the pair complete.
    atomic_savez(val_path, val)
    atomic_savez(train_path, train)
    meta = dict(
        dataset=parsed.file_stem,
        generator="flowsoc.rl.datagen",
        options=dataclasses.asdict(options),
        resolved=dataclasses.asdict(cfg),
        expert_sha256=None if cfg.expert is None else _sha256(cfg.expert),
        train_episodes=n_train,
        val_episodes=n_val,
        goals_reached=_goal_stats(goals[:n_train]) if goals else None,
        seconds=round(seconds, 2),
        versions=_versions(),
    )
    tmp = temporary_path(meta_path)
    try:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, meta_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return GeneratedDataset(
        train_path,
        val_path,
        len(train["terminals"]),
        len(val["terminals"]),
        seconds,
        False,
    )


@dataclasses.dataclass(frozen=True)
class GeneratedShards:
    """What `generate` wrote for a large dataset: its folder, the shards made now and those found finished."""

    folder: Path
    shards: int  # shards of the dataset now present (the first `shards`)
    made: int  # shards generated by this call (the others were already finished)
    transitions: int  # training transitions generated by this call
    seconds: float


_RECORD_KEYS = ("episodes", "val_episodes", "episode_length", "seed", "noise", "p_random_action", "expert_sha256")
"""What every shard of a folder shares: a resumed generation with other values is refused."""


def shard_record_path(folder: Path) -> Path:
    """A sharded dataset's generator record: `FOLDER/FOLDER.json` (beside the shards; upstream's readers glob
    `*.npz` only)."""
    return folder / f"{folder.name}.json"


def generate_shards(
    options: GenerateOptions, parsed: DatasetName, cfg: RolloutConfig, n_train: int, n_val: int
) -> GeneratedShards:
    """Generate the large dataset `parsed` shard by shard into `DATA_DIR/<name>/`, in upstream's layout: shard `i`
    is `<stem>-<i:03d>.npz` with `n_train` episodes and `<stem>-<i:03d>-val.npz` with `n_val` more, every episode
    seeded from `(seed, i, episode)` alone. A shard appears atomically (validation file first, the training file
    last); finished shards are never regenerated, so a stopped generation resumes at its first missing shard."""
    from tqdm.auto import tqdm

    folder = data_dir(options.data_dir) / parsed.file_stem
    total = shard_recipe(parsed).shards if options.shards is None else options.shards
    record_path = shard_record_path(folder)
    expert_sha = None if cfg.expert is None else _sha256(cfg.expert)
    settings = dict(
        episodes=n_train,
        val_episodes=n_val,
        episode_length=cfg.episode_length,
        seed=cfg.seed,
        noise=cfg.noise,
        p_random_action=cfg.p_random_action,
        expert_sha256=expert_sha,
    )
    names = [shard_file_name(parsed, i) for i in range(total)]
    paths = [(folder / n, folder / n.replace(".npz", "-val.npz")) for n in names]
    remove_stale_temporaries(record_path, *(p for pair in paths for p in pair))
    if options.overwrite:
        for pair in paths:
            for p in pair:
                p.unlink(missing_ok=True)
    elif record_path.exists():
        try:
            saved = json.loads(record_path.read_text())["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            saved = {}
        differ = [k for k in _RECORD_KEYS if k in saved and saved[k] != settings[k]]
        if differ:
            from ._dataset_files import DatasetMismatchError

            what = ", ".join(f"{k.replace('_', ' ')} {saved[k]} (asked: {settings[k]})" for k in differ)
            raise DatasetMismatchError(
                f"{folder} holds shards made with {what}; every shard of a dataset is made alike. Pass --overwrite "
                "to regenerate every shard, or write elsewhere (another --data-dir)."
            )
    todo = [i for i, (train, val) in enumerate(paths) if not (train.exists() and val.exists())]
    record = dict(
        dataset=parsed.file_stem,
        generator="flowsoc.rl.datagen",
        layout=f"{parsed.shard_stem}-NNN.npz (+ -val.npz), upstream's per-shard generation commands",
        shards=total,
        settings=settings,
        options=dataclasses.asdict(options),
        resolved=dataclasses.asdict(cfg),
        versions=_versions(),
    )
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(record_path, record)
    per_shard = (n_train + n_val) * (cfg.episode_length - 1)
    bar = tqdm(
        total=len(todo) * per_shard,
        unit="transition",
        unit_scale=True,
        desc=f"{parsed.file_stem} ({options.workers} worker(s))",
        disable=not options.progress,
        file=sys.stderr,
    )
    start, made = time.perf_counter(), 0
    workers = min(options.workers, n_train + n_val)
    with bar, contextlib.ExitStack() as stack:
        pool = stack.enter_context(_worker_pool(workers)) if workers > 1 else None
        for done, i in enumerate(todo):
            bar.set_postfix_str(f"shard {i + 1}/{total} ({done} of {len(todo)} to make done)")
            episodes = []
            for arrays in _episodes(cfg, n_train + n_val, workers, shard=i, pool=pool):
                arrays.pop(GOALS_KEY, None)
                episodes.append(arrays)
                bar.update(len(arrays["terminals"]) - 1)
            train_path, val_path = paths[i]
            atomic_savez(val_path, _concat(episodes[n_train:]))  # the training file, written last, marks it done
            atomic_savez(train_path, _concat(episodes[:n_train]))
            made += 1
    seconds = time.perf_counter() - start
    transitions = made * n_train * (cfg.episode_length - 1)
    if made:
        rate = made * per_shard / max(seconds, 1e-9)
        _write_json(
            record_path,
            {
                **record,
                "last_run": dict(
                    shards_made=made, seconds=round(seconds, 2), transitions_per_s=round(rate, 1), workers=workers
                ),
            },
        )
    return GeneratedShards(folder, total, made, transitions, seconds)


def _write_json(path: Path, value: Any) -> None:
    tmp = temporary_path(path)
    try:
        tmp.write_text(json.dumps(value, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def maze_stats(path: str | os.PathLike, env_id: str | None = None) -> dict[str, Any]:
    """Statistics of a maze dataset file (ours or an official one): episodes, steps, the share of
    the maze's free cells that the agent's x-y visits (coverage), the mean x-y speed per step, and
    for the ant and humanoid the share of steps with the torso at a walking height (ant
    0.2 < z < 1, the gym Ant's healthy range; humanoid z > 1)."""
    import gymnasium
    import ogbench  # noqa: F401  (registers the environments)

    path = Path(path)
    env_id = env_id or parse_dataset_name(path.name[: -len(".npz")].removesuffix("-val")).env_id
    with np.load(path) as f:
        qpos, terminals = f["qpos"], f["terminals"]
    u = gymnasium.make(env_id).unwrapped
    maze = np.asarray(u.maze_map)
    free = {(i, j) for i in range(maze.shape[0]) for j in range(maze.shape[1]) if maze[i, j] == 0}
    visited = {u.xy_to_ij(xy) for xy in np.unique(np.round(qpos[:, :2], 1), axis=0)} & free
    ends = np.flatnonzero(terminals)
    starts = np.concatenate([[0], ends[:-1] + 1])
    within = np.ones(len(qpos) - 1, bool)
    within[ends[ends < len(within)]] = False  # no step across an episode boundary
    speed = np.linalg.norm(np.diff(qpos[:, :2], axis=0), axis=1)[within]
    out: dict[str, Any] = dict(
        episodes=int(len(ends)),
        steps=int(len(qpos)),
        mean_episode_length=float(np.mean(ends - starts + 1)),
        coverage=len(visited) / len(free),
        mean_xy_step=float(np.mean(speed)),
    )
    if "antmaze" in env_id:
        out["upright"] = float(np.mean((qpos[:, 2] > 0.2) & (qpos[:, 2] < 1.0)))
    elif "humanoidmaze" in env_id:
        out["upright"] = float(np.mean(qpos[:, 2] > 1.0))
    return out


def _goal_stats(goals: list[int]) -> dict[str, int | float]:
    """Commanded goals reached by the training episodes (navigate: goals per episode)."""
    g = np.asarray(goals, float)
    return dict(total=int(g.sum()), per_episode=round(float(g.mean()), 3), episodes_with_a_goal=float(np.mean(g > 0)))


def _sha256(path: str) -> str:
    from ._expert_actor import file_sha256

    return file_sha256(Path(path))


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("ogbench", "mujoco", "gymnasium", "numpy", "flowsoc"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "?"
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (`python -m flowsoc.rl.datagen --help`)."""
    import tyro

    from ._datagen_recipes import DatasetError
    from ._expert_actor import ExpertError

    globals()["tyro"] = tyro  # resolves the `tyro.conf.arg` in GenerateOptions' annotations (see the top)
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--list" in argv:
        from ._datagen_recipes import dataset_listing

        print(dataset_listing(data_dir(_flag_value(argv, "--data-dir"))))
        return 0
    Cli = Annotated[GenerateOptions, tyro.conf.arg(name="")]
    try:
        options = tyro.cli(
            Cli,
            args=argv,
            prog="python -m flowsoc.rl.datagen",
            config=(tyro.conf.PositionalRequiredArgs,),
            description=(
                "Generate an OGBench dataset locally with OGBench's own oracles, in the official file format "
                "(NAME.npz + NAME-val.npz). `python -m flowsoc.rl.datagen --list` shows every dataset it generates, "
                "what each needs and its size."
            ),
        )
    except SystemExit as e:
        return int(e.code or 0)
    try:
        result = generate(options)
    except (OptionError, DatasetError, ExpertError) as e:  # usage: a bad flag, dataset name or expert file
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system failed us (disk full, permissions changed mid-run)
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    print(location_line(result) if isinstance(result, GeneratedDataset) else shards_line(result))
    return 0


def location_line(result: GeneratedDataset) -> str:
    """One line saying where the dataset is and whether it was cached or made now: `dataset cube-single-play-v0
    in /data (cached: 50 episodes of 1001 steps, ...)` or `... (generated in 12.3 s: ...)`."""
    stem = result.train_path.name[: -len(".npz")]
    where = f"dataset {stem} in {result.train_path.parent}"
    if result.skipped:
        held = describe_contents(dataset_contents(result.train_path))
        return f"{where} (cached: {held}; --overwrite regenerates it)"
    steps = result.train_steps + result.val_steps
    return (
        f"{where} (generated in {result.seconds:.1f} s: {result.train_path.name} {result.train_steps} steps, "
        f"{result.val_path.name} {result.val_steps} steps, {steps / max(result.seconds, 1e-9):.0f} steps/s)"
    )


def shards_line(result: GeneratedShards) -> str:
    """One line for a large dataset: `dataset cube-triple-play-10m-v0 in /data: 10 shards (3 generated in 812.4 s,
    1,231 transitions/s; 7 were already finished)`."""
    where = f"dataset {result.folder.name} in {result.folder.parent}: {result.shards} shard(s)"
    if not result.made:
        return f"{where} (all already finished; --overwrite regenerates them)"
    rate = result.transitions / max(result.seconds, 1e-9)
    kept = result.shards - result.made
    return f"{where} ({result.made} generated in {result.seconds:.1f} s, {rate:,.0f} training transitions/s" + (
        f"; {kept} were already finished)" if kept else ")"
    )


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value given to `flag` in `argv` (`--flag VALUE` or `--flag=VALUE`), `None` if absent."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
