"""OGBench data for offline and online RL: find or generate the official files, load
them through OGBench's own loader, put them on the device, and sample action chunks.

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

import dataclasses
import json
import os
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

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
    "ChunkBatch",
    "DatasetError",
    "DatasetMismatchError",
    "DatasetNotFoundError",
    "ReplayBuffer",
    "Transitions",
    "UnknownDatasetError",
    "UnsupportedDatasetError",
    "add_transitions",
    "append_transitions",
    "chunk_start_indices",
    "clip_actions",
    "resolve_data_dir",
    "dataset_paths",
    "gather_chunks",
    "load_ogbench",
    "load_replay_buffer",
    "parse_dataset_name",
    "resolve_dataset",
    "sample_chunks",
    "save_replay_buffer",
    "sparsify_rewards",
    "validate_dataset_file",
]

ACTION_CLIP_EPS = 1e-5


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
            require_generatable(parsed)
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
    from .datagen import generate as _generate, GenerateOptions

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
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: no such file.")
    parsed = parse_dataset_name(name) if name is not None else None
    required = ["observations", "actions", "terminals"]
    if parsed is not None and (parsed.singletask or parsed.oraclerep):
        required.append("qpos")
        if parsed.domain in ("puzzle", "scene"):
            required.append("button_states")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            missing = [k for k in required if k not in keys]
            if missing:
                raise DatasetError(
                    f"{path}: missing array(s) {missing}; found {sorted(keys)}. This is not "
                    f"an OGBench dataset file. {_regen_hint(path)}"
                )
            arrays = {k: f[k] for k in sorted(keys)}
    except DatasetError:
        raise
    except _READ_ERRORS as e:
        raise DatasetError(
            f"{path}: cannot read the npz file ({type(e).__name__}: {e}); it is truncated "
            f"or corrupt. {_regen_hint(path)}"
        ) from e

    n = len(arrays["terminals"])
    lengths = {k: len(v) if v.ndim else -1 for k, v in arrays.items()}
    if any(length != n for length in lengths.values()):
        raise DatasetError(
            f"{path}: arrays have mismatched lengths {lengths}; every array must have "
            f"one row per step. {_regen_hint(path)}"
        )
    if n == 0:
        raise DatasetError(f"{path}: the dataset is empty. {_regen_hint(path)}")
    for k, v in arrays.items():
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            bad = np.argwhere(~np.isfinite(v))[0]
            raise DatasetError(
                f"{path}: array {k!r} holds NaN or inf values (first at index "
                f"{tuple(int(i) for i in bad)}). {_regen_hint(path)}"
            )
    term = arrays["terminals"]
    if not np.isin(term, (0, 1)).all():
        raise DatasetError(f"{path}: 'terminals' must be 0/1. {_regen_hint(path)}")
    if term[-1] != 1:
        raise DatasetError(
            f"{path}: the last step is not terminal, so the final episode is cut off "
            f"(a truncated file?). {_regen_hint(path)}"
        )
    obs, act = arrays["observations"], arrays["actions"]
    return dict(
        steps=n,
        episodes=int(np.sum(term)),
        obs_dim=int(obs.shape[-1]) if obs.ndim == 2 else tuple(obs.shape[1:]),
        action_dim=int(act.shape[-1]) if act.ndim == 2 else 1,
    )


def clip_actions(actions: np.ndarray, eps: float = ACTION_CLIP_EPS) -> np.ndarray:
    """Clip dataset actions to `[-1 + eps, 1 - eps]` (the QAM reference does this so
    that `atanh` and log-densities stay finite)."""
    return np.clip(actions, -1.0 + eps, 1.0 - eps).astype(actions.dtype, copy=False)


def sparsify_rewards(rewards: np.ndarray) -> np.ndarray:
    """QAM's sparse reward: `-1` wherever OGBench's reward is non-zero (a sub-goal is
    unmet), `0` on success."""
    return -(np.asarray(rewards) != 0).astype(np.float32)


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
# Device-side transitions, chunk sampling, replay buffer
# --------------------------------------------------------------------------------------


class Transitions(eqx.Module):
    """A flat table of transitions on the device, in OGBench's layout (row t is
    `(s_t, a_t, r_t, s_{t+1})`; `terminals[t] = 1` at each episode's last transition).

    All fields are float32 arrays with the same leading length `n`.
    """

    observations: Float[Array, "n *obs"]
    actions: Float[Array, "n act"]
    rewards: Float[Array, " n"]
    masks: Float[Array, " n"]  # 0 where the step reaches the goal (no bootstrap), else 1
    terminals: Float[Array, " n"]  # 1 at the last transition of an episode
    next_observations: Float[Array, "n *obs"]
    sparse_rewards: bool | None = eqx.field(static=True, default=None)
    """Whether the rewards were made sparse when loaded (`None`: not recorded); the online phase applies the
    same rule to the rewards it collects."""

    @classmethod
    def from_numpy(cls, data: Mapping[str, Any], name: str = "", sparse_rewards: bool | None = None) -> "Transitions":
        """Device copy of an OGBench dataset dict (as from `load_ogbench`) in float32. `sparse_rewards`: whether
        its rewards were made sparse (recorded for the online phase).

        Needs `rewards` and `masks`, which only single-task datasets have.
        """
        missing = [f for f in _FIELDS if f not in data]
        if missing:
            where = f" of {name!r}" if name else ""
            raise DatasetError(
                f"the dataset{where} lacks {missing}: chunk sampling needs rewards and "
                f"masks, which OGBench adds only for single-task names "
                f"(e.g. 'cube-double-play-singletask-task2-v0')."
            )
        n = len(data["terminals"])
        bad = {f: len(data[f]) for f in _FIELDS if len(data[f]) != n}
        if bad:
            raise DatasetError(f"mismatched lengths {bad} (terminals: {n})")
        arrays = {f: jnp.asarray(np.asarray(data[f]), dtype=jnp.float32) for f in _FIELDS}
        return cls(**arrays, sparse_rewards=sparse_rewards)

    @property
    def size(self) -> int:
        return self.terminals.shape[0]


_FIELDS = ("observations", "actions", "rewards", "masks", "terminals", "next_observations")


class ReplayBuffer(eqx.Module):
    """A fixed-capacity, device-resident ring buffer of transitions.

    `data` holds `capacity` rows, of which the first `size` are filled; `pointer` is the
    row the next transition goes to. It starts from an offline dataset
    (`ReplayBuffer.from_transitions`, QAM's `create_from_initial_dataset`) and grows with
    `add_transitions`; once full, the oldest rows are overwritten. Being an
    `eqx.Module`, it can go into any checkpoint pytree (`eqx.tree_serialise_leaves`);
    `save_replay_buffer` / `load_replay_buffer` are self-describing npz alternatives.
    """

    data: Transitions
    size: Int[Array, ""]
    pointer: Int[Array, ""]

    @property
    def capacity(self) -> int:
        return self.data.terminals.shape[0]

    @classmethod
    def from_transitions(cls, initial: Transitions, capacity: int) -> "ReplayBuffer":
        """A buffer of `capacity` rows holding `initial` in its first rows."""
        n = initial.size
        if capacity < n:
            raise ValueError(f"capacity {capacity} < initial dataset size {n}")

        def grow(x):
            pad = jnp.zeros((capacity - n,) + x.shape[1:], x.dtype)
            return jnp.concatenate([x, pad])

        return cls(
            data=jax.tree.map(grow, initial),
            size=jnp.asarray(n, jnp.int32),
            pointer=jnp.asarray(n % capacity, jnp.int32),
        )

    @classmethod
    def empty(cls, capacity: int, obs_shape: tuple[int, ...], action_dim: int) -> "ReplayBuffer":
        """An empty buffer for observations of shape `obs_shape`."""
        z = lambda *s: jnp.zeros((capacity,) + s, jnp.float32)
        data = Transitions(z(*obs_shape), z(action_dim), z(), z(), z(), z(*obs_shape))
        return cls(data, jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32))


def add_transitions(buffer: ReplayBuffer, batch: Transitions) -> ReplayBuffer:
    """Write the `k` rows of `batch` at `pointer, pointer+1, ...` (mod capacity).

    Pure: returns the new buffer (`size = min(size + k, capacity)`). To add one
    transition, give each field a leading axis of length 1. Under `jax.jit` with the
    buffer donated, the update is in place.
    """
    k = batch.size
    # The rows take the buffer's record of the reward rule (a static field: the trees must match).
    batch = dataclasses.replace(batch, sparse_rewards=buffer.data.sparse_rewards)
    if k > buffer.capacity:
        raise ValueError(f"cannot add {k} rows to a buffer of capacity {buffer.capacity}")
    rows = (buffer.pointer + jnp.arange(k, dtype=jnp.int32)) % buffer.capacity
    data = jax.tree.map(lambda buf, new: buf.at[rows].set(new.astype(buf.dtype)), buffer.data, batch)
    return ReplayBuffer(
        data=data,
        size=jnp.minimum(buffer.size + k, buffer.capacity).astype(jnp.int32),
        pointer=((buffer.pointer + k) % buffer.capacity).astype(jnp.int32),
    )


@eqx.filter_jit(donate="all")
def append_transitions(buffer: ReplayBuffer, batch: Transitions) -> ReplayBuffer:
    """`add_transitions` compiled with `buffer` and `batch` donated: written in place, one
    compilation per batch shape (the online loop and the expert trainer append fixed-size blocks)."""
    return add_transitions(buffer, batch)


class ChunkBatch(eqx.Module):
    """A batch of length-`H` action chunks starting at `s_t` (QAM's `sample_sequence`).

    With `valid[:, i] = 1` while no episode end lies strictly before step `i`:

    - `observations` `(B, obs)`: `s_t`.
    - `actions` `(B, H, act)`: `a_t ... a_{t+H-1}` as stored (rows past an episode end
      belong to the next episode; mask them with `valid`).
    - `rewards` `(B, H)`: running discounted sums `sum_{k<=i} gamma^k r_{t+k} valid_k`;
      `rewards[:, -1]` is the chunk return `R_H`.
    - `masks` `(B, H)`: running minimum of the valid steps' masks; `masks[:, -1]`
      multiplies the bootstrap `gamma^H Q(s', a')`.
    - `terminals` `(B, H)`: running maximum of `terminals`.
    - `valid` `(B, H)`: 1 for steps inside the starting episode, 0 after its end.
    - `next_observations` `(B, H, obs)`: `s_{t+i+1}` for valid steps, repeated from the
      last valid step after an episode end; `next_observations[:, -1]` is the state after
      the chunk, `s'` of the critic target.
    """

    observations: Float[Array, "batch *obs"]
    actions: Float[Array, "batch horizon act"]
    rewards: Float[Array, "batch horizon"]
    masks: Float[Array, "batch horizon"]
    terminals: Float[Array, "batch horizon"]
    valid: Float[Array, "batch horizon"]
    next_observations: Float[Array, "batch horizon *obs"]


def chunk_start_indices(
    key: PRNGKeyArray, size: int | Int[Array, ""], batch_size: int, horizon: int
) -> Int[Array, " batch"]:
    """Uniform chunk starts in `[0, size - horizon]` (QAM: `randint(size - H + 1)`)."""
    return jr.randint(key, (batch_size,), 0, size - horizon + 1, dtype=jnp.int32)


def gather_chunks(
    data: Transitions,
    starts: Int[Array, " batch"],
    horizon: int,
    discount: float | Float[Array, ""],
) -> ChunkBatch:
    """The chunks of `horizon` steps starting at rows `starts` (see `ChunkBatch`).

    Pure and vectorised: one gather per field, no loop over steps, so it runs under
    `jax.jit`/`lax.scan` without host round trips. Rows `starts + horizon - 1` must
    exist.
    """
    steps = jnp.arange(horizon, dtype=jnp.int32)
    idx = starts[:, None] + steps[None, :]  # (B, H)
    term = data.terminals[idx]
    ended = jax.lax.cummax(term, axis=1)
    dtype = data.rewards.dtype
    valid = jnp.concatenate([jnp.ones_like(ended[:, :1]), 1.0 - ended[:, :-1]], axis=1).astype(dtype)
    gamma = jnp.asarray(discount, dtype) ** steps.astype(dtype)
    rewards = jnp.cumsum(data.rewards[idx] * gamma[None, :] * valid, axis=1)
    masks = jax.lax.cummin(jnp.where(valid > 0, data.masks[idx], jnp.inf), axis=1)
    # valid is a prefix of ones: the last valid step of row b is n_valid[b] - 1.
    n_valid = jnp.sum(valid, axis=1).astype(jnp.int32)
    last = starts[:, None] + jnp.minimum(steps[None, :], n_valid[:, None] - 1)
    return ChunkBatch(
        observations=data.observations[starts],
        actions=data.actions[idx],
        rewards=rewards,
        masks=masks,
        terminals=ended,
        valid=valid,
        next_observations=data.next_observations[last],
    )


def sample_chunks(
    data: Transitions | ReplayBuffer,
    key: PRNGKeyArray,
    batch_size: int,
    horizon: int,
    discount: float | Float[Array, ""],
) -> ChunkBatch:
    """Sample `batch_size` action chunks of length `horizon` uniformly (see
    `ChunkBatch` for the fields), from an offline `Transitions` table or the filled part
    of a `ReplayBuffer`.

    Jittable with `batch_size` and `horizon` static, e.g.
    `eqx.filter_jit(sample_chunks)(data, key, 256, 5, 0.99)`; semantics equal QAM's
    `Dataset.sample_sequence` (start `t ~ U{0, ..., size - H}`). As there, a buffer's
    chunks are not cut at the ring's write position.
    """
    if isinstance(data, ReplayBuffer):
        size, table = data.size, data.data
    else:
        size, table = data.size, data
        if size < horizon:
            raise ValueError(f"dataset of {size} rows is shorter than horizon {horizon}")
    starts = chunk_start_indices(key, size, batch_size, horizon)
    return gather_chunks(table, starts, horizon, discount)


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
