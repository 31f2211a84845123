"""OGBench data for offline and online RL: find or generate the official files and load them
through OGBench's own loader (the device side, `Transitions` and chunk sampling, is
in `flowsoc.rl`: `Transitions`, `sample_chunks`, `ReplayBuffer`).

The pipeline:

1. `resolve_dataset(name)` finds `<stem>.npz` and `<stem>-val.npz` in the data
   directory (argument, else `$FLOWSOC_DATA_DIR`, else `~/.ogbench/data`); if absent it
   generates them (`generate=True`) or raises `DatasetNotFoundError` with the exact
   command. Single-task names map to their data file:
   `cube-double-play-singletask-task2-v0` -> `cube-double-play-v0.npz`.
2. `validate_dataset_file(path)` refuses unreadable, truncated or inconsistent files
   with a `DatasetError` that names the file and the problem.
3. `load_ogbench(name)` calls `ogbench.make_env_and_datasets(name, dataset_path=...)`
   (so `next_observations`, `terminals` and the single-task `rewards`/`masks` are
   OGBench's own), then clips actions to +-(1 - 1e-5) and, for puzzle and scene, makes
   rewards sparse, as the QAM reference runs do.
4. `Transitions.from_numpy(train)` puts the arrays on the device; `sample_chunks`
   draws a batch of action chunks with discounted chunk returns, jittable, with QAM's
   `sample_sequence` semantics; `ReplayBuffer` adds online transitions.
"""

import json
import os
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from .._buffers import (  # re-exported: the device side of the data, for the agents and the loops
    _FIELDS as _FIELDS,
    ACTION_CLIP_EPS as ACTION_CLIP_EPS,
    add_transitions as add_transitions,
    append_transitions as append_transitions,
    chunk_start_indices as chunk_start_indices,
    ChunkBatch as ChunkBatch,
    clip_actions as clip_actions,
    gather_chunks as gather_chunks,
    ReplayBuffer as ReplayBuffer,
    sample_chunks as sample_chunks,
    sparsify_rewards as sparsify_rewards,
    Transitions as Transitions,
)
from ._datagen_recipes import (
    DatasetError,
    parse_dataset_name,
    require_generatable,
    UnknownDatasetError,
    UnsupportedDatasetError,
)
from ._dataset_files import (
    check_cached,
    data_dir as resolve_data_dir,
    DATA_DIR_ENV,
    data_dir_source,
    DatasetMismatchError,
    directory_problem,
    generate_command,
    temporary_path,
)


__all__ = [
    "DATA_DIR_ENV",
    "DatasetError",
    "DatasetMismatchError",
    "DatasetNotFoundError",
    "UnknownDatasetError",
    "UnsupportedDatasetError",
    "resolve_data_dir",
    "dataset_paths",
    "load_ogbench",
    "load_replay_buffer",
    "parse_dataset_name",
    "resolve_dataset",
    "save_replay_buffer",
    "validate_dataset_file",
]


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset files are not in the data directory (the message gives the command
    that generates them)."""


# --------------------------------------------------------------------------------------
# Finding, validating and loading files
# --------------------------------------------------------------------------------------


def dataset_paths(name: str, data_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The official training and validation file paths of dataset `name`.

    **Arguments:**

    - `name`: an OGBench dataset name; `-singletask[-taskN]` and `-oraclerep` names map
      to their base data file.
    - `data_dir`: the data directory (default: `$FLOWSOC_DATA_DIR`, else
      `~/.ogbench/data`).

    **Returns:** `(dir/<stem>.npz, dir/<stem>-val.npz)`.
    """
    stem = parse_dataset_name(name).file_stem
    root = resolve_data_dir(data_dir)
    return root / f"{stem}.npz", root / f"{stem}-val.npz"


def resolve_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    generate: bool = False,
    episodes: int | None = None,
    episode_length: int | None = None,
    workers: int = 1,
    seed: int | None = None,
    progress: bool = True,
) -> Path:
    """Find dataset `name`'s files, generating them first if asked (with a progress bar unless
    `progress=False`); return the training file path (its `-val.npz` lies beside it).

    `episodes`, `episode_length` and `seed` (`None`: the official counts, seed 0) say what to generate, and
    what files already present must hold: a present dataset of another episode count, episode length or
    seed raises `DatasetMismatchError` (never used or overwritten silently; its message says how to
    regenerate).

    Raises `DatasetNotFoundError` (with the generation command) when the files are absent
    and `generate` is off, `DatasetError` when only one of the pair exists or the data
    directory is not a usable directory, and
    `UnsupportedDatasetError` when generation is asked for a dataset that cannot be made
    here (humanoidmaze without a humanoid expert, antsoccer, visual datasets).
    """
    parsed = parse_dataset_name(name)
    train, val = dataset_paths(name, data_dir)
    problem = directory_problem(train.parent)
    if problem is not None:
        raise DatasetError(
            f"data directory: {problem} (from {data_dir_source(data_dir)}); give a directory for the dataset "
            "files (it is created if missing)."
        )
    if train.exists() and not val.exists():
        raise DatasetError(
            f"{val}: the validation file is missing (OGBench's loader needs both "
            f"{train.name} and {val.name}). Regenerate the pair: "
            f"{generate_command(parsed.file_stem)} --data-dir {train.parent} --overwrite"
        )
    if val.exists() and not train.exists():
        raise DatasetError(
            f"{train}: the training file is missing (only {val.name} is present). "
            f"Regenerate the pair: {generate_command(parsed.file_stem)} "
            f"--data-dir {train.parent} --overwrite"
        )
    if train.exists():
        requested = dict(episodes=episodes, episode_length=episode_length, seed=seed)
        again = [f"--{k.replace('_', '-')} {v}" for k, v in requested.items() if v is not None]
        check_cached(
            train,
            requested,
            f"To regenerate it, delete {train.name}, {val.name} and {train.stem}.json from {train.parent} (or "
            f"pass another --data-dir), or overwrite them: {generate_command(parsed.file_stem)} {' '.join(again)} "
            f"--data-dir {train.parent} --overwrite",
        )
        _warn_if_made_by_an_older_expert(train)
        return train
    if not generate:
        try:
            require_generatable(parsed, directory=train.parent)
        except UnsupportedDatasetError as e:
            raise DatasetNotFoundError(f"{train} not found. {e}") from None
        raise DatasetNotFoundError(
            f"{train} not found (OGBench's datasets cannot be downloaded here). Generate "
            f"it with OGBench's own oracles:\n    {generate_command(parsed.file_stem)} "
            f"--workers {os.cpu_count() or 1} --data-dir {train.parent}\n"
            f"or pass generate=True, or copy the official {train.name} and {val.name} "
            f"into {train.parent} (set ${DATA_DIR_ENV} to use another directory)."
        )
    # The generator (tyro, multiprocessing, its rollout workers) is imported only when asked for.
    from ._datagen import generate as _generate, GenerateOptions

    _generate(
        GenerateOptions(
            env=parsed.file_stem,
            episodes=episodes,
            episode_length=episode_length,
            workers=workers,
            seed=seed,
            data_dir=str(train.parent),
            progress=progress,
        )
    )
    return train


def _warn_if_made_by_an_older_expert(train: Path) -> None:
    """Warn when a maze dataset in the cache was generated with a shipped expert that has since been
    replaced (its record names the shipped file but another SHA-256)."""
    record = train.with_name(train.name[: -len(".npz")] + ".json")
    if not record.exists():
        return
    try:
        meta = json.loads(record.read_text())
        used, sha = meta["resolved"]["expert"], meta["expert_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not written by flowsoc's generator, or no expert: nothing to compare
    from ._expert_actor import file_sha256, SHIPPED

    for name, shipped in SHIPPED.items():
        # The shipped file of whichever installation made the data: the same last two path parts.
        if used is None or Path(used).parts[-2:] != shipped.parts[-2:] or not shipped.exists():
            continue
        current = file_sha256(shipped)
        if sha != current:
            warnings.warn(
                f"{train} was generated with an earlier version of flowsoc's shipped {name} expert "
                f"(SHA-256 {sha[:12]}…, now {current[:12]}…). Regenerate it to use the current one: "
                f"{generate_command(train.name[: -len('.npz')])} --data-dir {train.parent} --overwrite",
                stacklevel=3,
            )


_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, KeyError)


def _regen_hint(path: Path) -> str:
    stem = path.name[: -len(".npz")]
    if stem.endswith("-val"):
        stem = stem[: -len("-val")]
    try:
        cmd = f"{generate_command(stem)} --data-dir {path.parent} --overwrite"
    except DatasetError:
        return "Delete it and copy or generate it again."
    return f"Delete it and regenerate: {cmd}"


def validate_dataset_file(path: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
    """Check that `path` is a complete, consistent OGBench raw dataset file.

    Checks: a readable npz (not truncated or corrupt); the keys `observations`,
    `actions`, `terminals` (and `qpos`, plus `button_states` for puzzle and scene, when
    `name` is a single-task or oraclerep name); equal lengths; finite float values;
    0/1 terminals ending with 1 (every episode is closed).

    **Returns:** a summary dict (`steps`, `episodes`, `obs_dim`, `action_dim`).
    **Raises:** `DatasetError` naming the file, the problem and the fix.
    """
    path = Path(path)
    arrays = read_dataset_arrays(path, name)
    return check_dataset_arrays(path, arrays)


def required_keys(name: str | None) -> list[str]:
    """The arrays a dataset file must hold for `name`: `observations`, `actions`, `terminals`, and `qpos` (plus
    `button_states` for puzzle and scene) for single-task and oraclerep names."""
    parsed = parse_dataset_name(name) if name is not None else None
    required = ["observations", "actions", "terminals"]
    if parsed is not None and (parsed.singletask or parsed.oraclerep):
        required.append("qpos")
        if parsed.domain in ("puzzle", "scene"):
            required.append("button_states")
    return required


def read_dataset_arrays(path: Path, name: str | None = None, hint: str | None = None) -> dict[str, np.ndarray]:
    """Every array of the npz file `path`, refusing a missing file, a missing required array (`required_keys`) or
    an unreadable (truncated, corrupt) file with a `DatasetError` naming it and `hint` (default: how to
    regenerate it)."""
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: no such file.")
    required = required_keys(name)
    hint = _regen_hint(path) if hint is None else hint
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            missing = [k for k in required if k not in keys]
            if missing:
                raise DatasetError(
                    f"{path}: missing array(s) {missing}; found {sorted(keys)}. This is not "
                    f"an OGBench dataset file. {hint}"
                )
            return {k: f[k] for k in sorted(keys)}
    except DatasetError:
        raise
    except _READ_ERRORS as e:
        raise DatasetError(
            f"{path}: cannot read the npz file ({type(e).__name__}: {e}); it is truncated or corrupt. {hint}"
        ) from e


def check_dataset_arrays(path: Path, arrays: Mapping[str, np.ndarray], hint: str | None = None) -> dict[str, Any]:
    """The checks of `validate_dataset_file` on arrays already read from `path` (see there); `hint`: what to do
    (default: how to regenerate the file)."""
    hint = _regen_hint(path) if hint is None else hint

    n = len(arrays["terminals"])
    lengths = {k: len(v) if v.ndim else -1 for k, v in arrays.items()}
    if any(length != n for length in lengths.values()):
        raise DatasetError(
            f"{path}: arrays have mismatched lengths {lengths}; every array must have one row per step. {hint}"
        )
    if n == 0:
        raise DatasetError(f"{path}: the dataset is empty. {hint}")
    for k, v in arrays.items():
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            bad = np.argwhere(~np.isfinite(v))[0]
            raise DatasetError(
                f"{path}: array {k!r} holds NaN or inf values (first at index {tuple(int(i) for i in bad)}). {hint}"
            )
    term = arrays["terminals"]
    if not np.isin(term, (0, 1)).all():
        raise DatasetError(f"{path}: 'terminals' must be 0/1. {hint}")
    if term[-1] != 1:
        raise DatasetError(
            f"{path}: the last step is not terminal, so the final episode is cut off (a truncated file?). {hint}"
        )
    obs, act = arrays["observations"], arrays["actions"]
    return dict(
        steps=n,
        episodes=int(np.sum(term)),
        obs_dim=int(obs.shape[-1]) if obs.ndim == 2 else tuple(obs.shape[1:]),
        action_dim=int(act.shape[-1]) if act.ndim == 2 else 1,
    )


def load_ogbench(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    generate: bool = False,
    episodes: int | None = None,
    episode_length: int | None = None,
    workers: int = 1,
    action_clip_eps: float | None = ACTION_CLIP_EPS,
    sparse: bool | None = None,
    compact_dataset: bool = False,
    env_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Resolve, validate and load dataset `name` through OGBench's own loader.

    **Arguments:**

    - `name`: e.g. `cube-double-play-singletask-task2-v0` (single-task names get
      OGBench's `rewards` and `masks`; goal-conditioned names do not).
    - `data_dir`, `generate`, `episodes`, `episode_length`, `workers`: as in
      `resolve_dataset`.
    - `action_clip_eps`: clip actions to `+-(1 - eps)`; `None` keeps them raw.
    - `sparse`: replace rewards by `sparsify_rewards`; `None` means "for puzzle and
      scene only", the QAM reference setting.
    - `compact_dataset`, `env_kwargs`: passed to `ogbench.make_env_and_datasets`.
    - `progress`: show the generator's progress bar.

    **Returns:** `(env, train, val)` as `ogbench.make_env_and_datasets` does, with numpy
    float32 arrays `observations`, `actions`, `next_observations`, `terminals` (1 at each
    episode's last transition) and, for single-task names, `rewards`, `masks`.
    """
    import ogbench

    parsed = parse_dataset_name(name)
    train_path = resolve_dataset(
        name,
        data_dir,
        generate=generate,
        episodes=episodes,
        episode_length=episode_length,
        workers=workers,
        progress=progress,
    )
    val_path = train_path.with_name(train_path.name[: -len(".npz")] + "-val.npz")
    for p in (train_path, val_path):
        validate_dataset_file(p, name)
    try:
        env, train, val = cast(Any, ogbench.make_env_and_datasets)(
            name,
            dataset_path=str(train_path),
            compact_dataset=compact_dataset,
            **dict(env_kwargs or {}),
        )
    except _READ_ERRORS as e:  # pragma: no cover - validate_dataset_file reads it first
        raise DatasetError(f"{train_path}: OGBench's loader failed: {e}") from e
    expected = env.observation_space.shape
    action_shape = getattr(env.action_space, "shape", None)
    for path, data in ((train_path, train), (val_path, val)):
        got = data["observations"].shape[1:]
        if tuple(got) != tuple(expected):
            raise DatasetError(
                f"{path}: observations have shape {tuple(got)} per step but "
                f"{parsed.env_id} produces {tuple(expected)}; the file belongs to another "
                f"environment. {_regen_hint(path)}"
            )
        got = data["actions"].shape[1:]
        if action_shape is not None and tuple(got) != tuple(action_shape):
            width = lambda shape: f"{shape[0]}-dimensional" if len(shape) == 1 else f"shape {tuple(shape)}"  # noqa: E731
            raise DatasetError(
                f"{path}: actions are {width(got)} but {parsed.env_id} takes {width(action_shape)} actions; "
                f"the file belongs to another environment. {_regen_hint(path)}"
            )
    use_sparse = parsed.sparse_default if sparse is None else sparse
    for data in (train, val):
        if action_clip_eps is not None:
            data["actions"] = clip_actions(data["actions"], action_clip_eps)
        if use_sparse and "rewards" in data:
            data["rewards"] = sparsify_rewards(data["rewards"])
    return env, train, val


# --------------------------------------------------------------------------------------
# Replay buffer files
# --------------------------------------------------------------------------------------


def save_replay_buffer(path: str | os.PathLike, buffer: ReplayBuffer) -> Path:
    """Write `buffer` to an npz file atomically (temporary file + `os.replace`).

    Only the filled rows are stored; `load_replay_buffer` restores the same capacity,
    size, pointer and contents, so sampling with the same key gives the same batch.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(buffer.size)
    arrays: dict[str, Any] = {f: np.asarray(getattr(buffer.data, f)[:n]) for f in _FIELDS}
    arrays.update(
        capacity=np.asarray(buffer.capacity, np.int64),
        size=np.asarray(n, np.int64),
        pointer=np.asarray(int(buffer.pointer), np.int64),
        obs_shape=np.asarray(buffer.data.observations.shape[1:], np.int64),
        action_dim=np.asarray(buffer.data.actions.shape[-1], np.int64),
    )
    # Not `tempfile.mkstemp`, whose 0600 mode the rename would keep: the file follows the umask (0644 under 022).
    tmp = temporary_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_replay_buffer(path: str | os.PathLike) -> ReplayBuffer:
    """Read a buffer written by `save_replay_buffer`; `DatasetError` if unreadable."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = {k: int(f[k]) for k in ("capacity", "size", "pointer", "action_dim")}
            obs_shape = tuple(int(d) for d in f["obs_shape"])
            rows = {k: f[k] for k in _FIELDS}
    except _READ_ERRORS as e:
        raise DatasetError(f"{path}: not a readable replay-buffer file ({type(e).__name__}: {e}).") from e
    buffer = ReplayBuffer.empty(meta["capacity"], obs_shape, meta["action_dim"])
    n = meta["size"]
    if any(len(v) != n for v in rows.values()):
        raise DatasetError(f"{path}: stored rows do not match size {n}.")
    data = jax.tree.map(
        lambda buf, new: buf.at[:n].set(jnp.asarray(new, buf.dtype)),
        buffer.data,
        Transitions(**{k: jnp.asarray(v, jnp.float32) for k, v in rows.items()}),
    )
    return ReplayBuffer(data, jnp.asarray(n, jnp.int32), jnp.asarray(meta["pointer"], jnp.int32))
