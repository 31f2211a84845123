"""Large OGBench datasets as a folder of shards (upstream's 10M/100M/1B layout): find and check the folder, read a
shard, and open it as a [`flowsoc.rl.ShardedDataset`][].

A folder `cube-triple-play-10m-v0/` holds `cube-triple-play-v0-000.npz`, `-001.npz`, ... (about 1M transitions
each, in OGBench's raw format), each with its `-val.npz` beside it; the official codes train on the files
`sorted(glob("*.npz"))` without `-val.npz`, and so does `open_shards`. `python -m flowsoc.rl.datagen
cube-triple-play-10m-v0` makes such a folder (`FOLDER/FOLDER.json` records how).

The folder is checked for completeness when it is opened (every shard present, numbered without gaps, as many as
the generator's record says, each a readable npz with the arrays and shapes training needs), so that a missing or
truncated shard stops a run at its start, not when rotation reaches it; each shard's values (finite, 0/1
terminals, closed episodes) are checked when it is first read.
"""

import hashlib
import json
import os
import re
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._buffers import ACTION_CLIP_EPS, clip_actions, indexed_from_raw, sparsify_rewards
from .._sharded import DataMode, ShardedDataset
from ._data import _READ_ERRORS, check_dataset_arrays, DatasetNotFoundError, read_dataset_arrays, required_keys
from ._datagen_recipes import DatasetError, parse_dataset_name


__all__ = ["ShardInfo", "check_shard_folder", "load_shard", "open_shards", "shard_files"]


class ShardInfo:
    """What a shard's headers say: its path, stored states (`rows`), transitions, widths, and the checksums of its
    members (from the zip directory; what the dataset's fingerprint hashes)."""

    def __init__(self, path: Path, rows: int, transitions: int, obs_shape: tuple, action_dim: int, crcs: tuple):
        self.path, self.rows, self.transitions = path, rows, transitions
        self.obs_shape, self.action_dim, self.crcs = obs_shape, action_dim, crcs


def shard_files(folder: Path) -> list[Path]:
    """The training shards of `folder` as the official codes list them: `sorted(glob("*.npz"))` without
    `-val.npz` files (and without the generator's hidden temporaries)."""
    return sorted(p for p in folder.glob("*.npz") if not p.name.endswith("-val.npz") and not p.name.startswith("."))


def _dataset_name(folder: Path) -> str | None:
    """The large dataset's name when `folder` is named like one (`cube-triple-play-10m-v0`), else `None`."""
    try:
        return folder.name if parse_dataset_name(folder.name).sharded else None
    except DatasetError:
        return None


def regenerate_hint(folder: Path) -> str:
    """What to do about a bad or missing shard of `folder`: rerun the generator, which makes only the missing
    shards (or, for a folder it cannot make, copy the official files)."""
    name = _dataset_name(folder)
    if name is None:
        return f"Copy the complete set of shard files into {folder} again."
    record = folder / f"{folder.name}.json"
    shards = ""
    try:
        shards = f" --shards {int(json.loads(record.read_text())['shards'])}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return (
        f"Regenerate the missing shards (finished ones are kept): python -m flowsoc.rl.datagen {name}{shards} "
        f"--workers {os.cpu_count() or 1} --data-dir {folder.parent}"
    )


def _bad_shard_hint(path: Path) -> str:
    return f"Delete it and regenerate it: {regenerate_hint(path.parent)}"


def _header(archive: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of member `key` of an npz from its npy header alone (nothing else decompressed)."""
    with archive.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(member)
    return tuple(shape), dtype


def shard_info(path: Path, name: str | None) -> ShardInfo:
    """Read `path`'s zip directory, npy headers and terminals (small): refuse a truncated or unreadable file, a
    missing array or arrays of different lengths with a `DatasetError` naming the shard and the fix."""
    hint = _bad_shard_hint(path)
    try:
        with zipfile.ZipFile(path) as archive:
            keys = {n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")}
            missing = [k for k in required_keys(name) if k not in keys]
            if missing:
                raise DatasetError(f"{path}: missing array(s) {missing}; found {sorted(keys)}. {hint}")
            shapes = {k: _header(archive, k)[0] for k in sorted(keys)}
            with archive.open("terminals.npy") as member:
                terminals = np.lib.format.read_array(member, allow_pickle=False)
            crcs = tuple((info.filename, info.CRC, info.file_size) for info in archive.infolist())
    except DatasetError:
        raise
    except (*_READ_ERRORS, RuntimeError) as e:
        raise DatasetError(
            f"{path}: cannot read the shard ({type(e).__name__}: {e}); it is truncated or corrupt. {hint}"
        )
    rows = len(terminals)
    lengths = {k: s[0] if s else -1 for k, s in shapes.items()}
    if any(n != rows for n in lengths.values()) or rows == 0:
        raise DatasetError(f"{path}: arrays have mismatched or zero lengths {lengths}. {hint}")
    if not terminals[-1]:
        raise DatasetError(f"{path}: the last step is not terminal (a truncated shard?). {hint}")
    episodes = int(np.count_nonzero(terminals))
    action = shapes["actions"]
    return ShardInfo(path, rows, rows - episodes, shapes["observations"][1:], action[1] if len(action) > 1 else 1, crcs)


def check_shard_folder(folder: str | os.PathLike, name: str | None = None) -> list[ShardInfo]:
    """Check that `folder` holds a complete sharded dataset for `name` (an OGBench name, for the arrays its
    single-task rewards need), before training starts: shards present, numbered `000`, `001`, ... without a gap,
    as many as the generator's record asks for, each readable with the same widths (`shard_info`). Raises
    `DatasetNotFoundError` / `DatasetError` naming the folder or the shard and how to complete it."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise DatasetNotFoundError(f"--dataset-dir {folder} {what}. {regenerate_hint(folder)}")
    files = shard_files(folder)
    if not files:
        raise DatasetNotFoundError(f"--dataset-dir {folder} holds no shard files (*.npz). {regenerate_hint(folder)}")
    numbers = []
    for path in files:
        match = re.fullmatch(r".*-(\d+)\.npz", path.name)
        numbers.append(int(match[1]) if match else None)
    if None not in numbers:
        gaps = sorted(set(range(max(numbers) + 1)) - set(numbers))
        if gaps:
            listed = ", ".join(f"{g:03d}" for g in gaps[:5]) + (", ..." if len(gaps) > 5 else "")
            raise DatasetError(
                f"{folder}: shard(s) {listed} missing (the folder is incomplete). {regenerate_hint(folder)}"
            )
    record = folder / f"{folder.name}.json"
    if record.exists():
        try:
            expected = int(json.loads(record.read_text())["shards"])
        except (OSError, ValueError, KeyError, TypeError):
            expected = None
        if expected is not None and len(files) < expected:
            raise DatasetError(
                f"{folder}: {len(files)} of its {expected} shards are finished (a generation was stopped). "
                f"{regenerate_hint(folder)}"
            )
    infos = [shard_info(path, name) for path in files]
    first = infos[0]
    for info in infos[1:]:
        if (info.obs_shape, info.action_dim) != (first.obs_shape, first.action_dim):
            raise DatasetError(
                f"{info.path}: observations {info.obs_shape} and actions {info.action_dim} per step, but "
                f"{first.path.name} has {first.obs_shape} and {first.action_dim}; the shards belong to different "
                f"datasets. {_bad_shard_hint(info.path)}"
            )
    return infos


def fingerprint(folder: Path, infos: list[ShardInfo]) -> dict:
    """What identifies a sharded dataset in checkpoints: its folder name, shard count, transitions, and a hash of
    every shard's name and member checksums (read from the zip directories, not the data)."""
    digest = hashlib.sha256()
    for info in infos:
        digest.update(json.dumps([info.path.name, info.crcs]).encode())
    return {
        "folder": folder.name,
        "shards": len(infos),
        "transitions": int(sum(i.transitions for i in infos)),
        "sha256": digest.hexdigest()[:16],
    }


def single_task_env(parsed: Any) -> str:
    """The single-task environment of a parsed single-task dataset name: `cube-triple-singletask-task2-v0`."""
    return parsed.env_id.replace("-v0", f"-singletask-task{parsed.task}-v0")


def load_shard(
    path: Path,
    name: str,
    relabel_env: Any = None,
    *,
    sparse: bool = False,
    action_clip_eps: float | None = ACTION_CLIP_EPS,
) -> dict[str, np.ndarray]:
    """Read and check shard `path` of dataset `name` (a single-task name: its rewards and masks are OGBench's
    `relabel_dataset` with `relabel_env`, an environment of that task), clip its actions and make its rewards
    sparse as `load_ogbench` does; return the host arrays of an `IndexedTransitions` (each state stored once)."""
    hint = _bad_shard_hint(path)
    raw = read_dataset_arrays(path, name, hint=hint)
    check_dataset_arrays(path, raw, hint=hint)
    parsed = parse_dataset_name(name)
    keep = ~raw["terminals"].astype(bool)  # OGBench's transitions: every state but an episode's last
    if parsed.singletask:
        from ogbench.relabel_utils import relabel_dataset

        info = {k: raw[k][keep] for k in ("qpos", "qvel", "button_states") if k in raw}
        relabel_dataset(single_task_env(parsed), relabel_env, info)
        rewards, masks = info["rewards"], info["masks"]
    else:  # goal-conditioned data carry no reward: zeros, as chunk sampling needs the fields
        rewards = masks = np.zeros(int(keep.sum()), np.float32)
    if action_clip_eps is not None:
        raw["actions"] = clip_actions(np.asarray(raw["actions"], np.float32), action_clip_eps)
    if sparse:
        rewards = sparsify_rewards(rewards)
    return indexed_from_raw(raw, rewards, masks)


def open_shards(
    name: str,
    folder: str | os.PathLike,
    *,
    interval: int = 1000,
    mode: DataMode = "auto",
    sparse: bool | None = None,
    action_clip_eps: float | None = ACTION_CLIP_EPS,
    env_kwargs: Mapping[str, Any] | None = None,
) -> ShardedDataset:
    """The sharded dataset in `folder` for single-task dataset `name` (`cube-triple-play-singletask-task2-v0` with
    the folder `.../cube-triple-play-10m-v0`), checked for completeness now (`check_shard_folder`) and read shard
    by shard as training rotates (`interval` updates each; `mode`: see [`flowsoc.rl.ShardedDataset`][]).
    `sparse` (`None`: for puzzle and scene), `action_clip_eps` as in `load_ogbench`."""
    import gymnasium
    import ogbench  # noqa: F401  (registers the environments)

    parsed = parse_dataset_name(name)
    if not parsed.singletask:
        raise ValueError(
            f"--env {name}: training needs a single-task name "
            f"(e.g. {parsed.file_stem.replace('-v0', '-singletask-v0')})."
        )
    folder = Path(folder).expanduser()
    infos = check_shard_folder(folder, name)
    large = _dataset_name(folder)
    if large is not None and parse_dataset_name(large).env_id != parsed.env_id:
        raise DatasetError(f"--dataset-dir {folder} holds {large}, data of another environment than --env {name}.")
    env = gymnasium.make(single_task_env(parsed), **dict(env_kwargs or {}))
    expected = env.observation_space.shape
    if tuple(infos[0].obs_shape) != tuple(expected):
        raise DatasetError(
            f"{infos[0].path}: observations have shape {infos[0].obs_shape} per step but {parsed.env_id} produces "
            f"{tuple(expected)}; the folder belongs to another environment."
        )
    use_sparse = parsed.sparse_default if sparse is None else sparse
    lock = threading.Lock()  # the relabelling resets the environment: one shard at a time

    def loader(path: Path):
        def load():
            with lock:
                return load_shard(path, name, env, sparse=use_sparse, action_clip_eps=action_clip_eps)

        return load

    return ShardedDataset(
        [loader(i.path) for i in infos],
        [i.path.name for i in infos],
        [i.transitions for i in infos],
        [i.rows for i in infos],
        tuple(infos[0].obs_shape),
        infos[0].action_dim,
        interval=interval,
        mode=mode,
        fingerprint=fingerprint(folder, infos),
        sparse_rewards=use_sparse,
    )
