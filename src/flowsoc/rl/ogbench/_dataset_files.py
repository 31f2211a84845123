"""Where dataset files live and the command that makes them: what the data layer (`load_ogbench`)
needs from the generator without importing it.

Kept free of JAX, MuJoCo, tyro and multiprocessing, so that importing the agents (which import
`load_ogbench`) does not import the generator.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._datagen_recipes import DatasetError, parse_dataset_name


DATA_DIR_ENV = "FLOWSOC_DATA_DIR"
DEFAULT_DATA_DIR = "~/.ogbench/data"


class DatasetMismatchError(DatasetError):
    """A dataset file is present but holds other data than asked for (another episode count, episode
    length or seed); the message names both and how to regenerate."""


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The dataset directory: `path` if given, else `$FLOWSOC_DATA_DIR`, else
    `~/.ogbench/data`.
    """
    if path is None:
        path = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(path).expanduser()


def data_dir_source(path: str | os.PathLike | None) -> str:
    """How the user named the data directory, for messages: `--data-dir`, `$FLOWSOC_DATA_DIR` or the default."""
    if path is not None:
        return "--data-dir"
    return f"${DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV) else f"the default data directory {DEFAULT_DATA_DIR}"


def directory_problem(directory: Path) -> str | None:
    """Why `directory` cannot hold dataset files (it, or the nearest part of its path that exists, is not a
    directory, or that directory is not writable), or `None` if it can (it will be created as needed)."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "is" if probe == directory else f"lies under {probe}, which is"
        return f"{directory} {what} an existing file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable" if probe == directory else f"{directory}: {probe} is not writable"
    return None


def generate_command(name: str, episodes: int | None = None, workers: int | None = None) -> str:
    """The shell command that generates dataset `name` (used in error messages)."""
    stem = parse_dataset_name(name).file_stem
    parts = ["python -m flowsoc.rl.datagen", stem]
    if episodes is not None:
        parts += ["--episodes", str(episodes)]
    if workers is not None:
        parts += ["--workers", str(workers)]
    return " ".join(parts)


# --------------------------------------------------------------------------------------
# Temporary files of the writers, and their leftovers
# --------------------------------------------------------------------------------------

_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{8}\.tmp(?:\.npz)?")


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside `path` for an atomic write (`.NAME.PID.RANDOM.tmp[.npz]`); the writer's
    process id in the name lets `remove_stale_temporaries` tell a dead writer's leftovers from a live one's."""
    suffix = ".tmp.npz" if path.suffix == ".npz" else ".tmp"
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process (or an unanswerable question): leave its file alone
    return True


def remove_stale_temporaries(*paths: Path) -> list[Path]:
    """Delete the temporary files that a killed writer left beside `paths`: only names of the form
    `temporary_path` makes for one of `paths` (`.NAME.PID.RANDOM.tmp[.npz]`) and only when no process `PID`
    runs on this machine (a concurrent writer's file is kept). Returns the files removed."""
    removed = []
    for path in paths:
        try:
            entries = list(os.scandir(path.parent))
        except OSError:
            continue
        for entry in entries:
            match = _TEMP.fullmatch(entry.name)
            if match is None or match["name"] != path.name or not entry.is_file(follow_symlinks=False):
                continue
            if _alive(int(match["pid"])):
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(Path(entry.path))
    return removed


# --------------------------------------------------------------------------------------
# What a dataset file on disk holds, against what is asked for
# --------------------------------------------------------------------------------------


def record_path(train: Path) -> Path:
    """The generator's JSON record beside training file `train` (`NAME.npz` -> `NAME.json`)."""
    return train.with_name(train.name[: -len(".npz")] + ".json")


def val_path(train: Path) -> Path:
    """The validation file beside training file `train` (`NAME.npz` -> `NAME-val.npz`)."""
    return train.with_name(train.name[: -len(".npz")] + "-val.npz")


def _episodes_in(path: Path) -> tuple[int, int | None] | None:
    """`(episodes, steps per episode or None if they differ)` counted from `path`'s terminals; `None` when
    the file cannot be read (the file checks name that problem later)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            ends = np.flatnonzero(np.asarray(f["terminals"]))
    except Exception:  # noqa: BLE001 - unreadable here means "not known"; validate_dataset_file reports it
        return None
    lengths = np.diff(np.concatenate([[-1], ends]))
    same = len(lengths) > 0 and bool((lengths == lengths[0]).all())
    return len(ends), int(lengths[0]) if same else None


def dataset_contents(train: Path) -> dict[str, Any]:
    """What the dataset pair at `train` holds, as far as known: `episodes`, `episode_length` (counted from
    the files' terminals), `val_episodes`, and `seed`, `noise`, `p_random_action` (from the generator's JSON
    record `NAME.json`, when it exists). Unknown entries are absent."""
    out: dict[str, Any] = {}
    counted = _episodes_in(train)
    if counted is not None:
        out["episodes"] = counted[0]
        if counted[1] is not None:
            out["episode_length"] = counted[1]
    counted_val = _episodes_in(val_path(train))
    if counted_val is not None:
        out["val_episodes"] = counted_val[0]
    try:
        resolved = json.loads(record_path(train).read_text())["resolved"]
        out.update({k: resolved[k] for k in ("seed", "noise", "p_random_action") if k in resolved})
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no record (an official file copied in) or not the generator's: only the counts are known
    return out


def describe_contents(contents: Mapping[str, Any], also: tuple[str, ...] = ()) -> str:
    """`3 episodes of 101 steps, 1 validation episode, seed 0` (what is known of it), plus the entries named in
    `also` (`noise 0.1`)."""
    parts = []
    if "episodes" in contents:
        n, length = contents["episodes"], contents.get("episode_length")
        parts.append(f"{n} episode{'s' if n != 1 else ''}" + (f" of {length} steps" if length else ""))
    if "val_episodes" in contents:
        n = contents["val_episodes"]
        parts.append(f"{n} validation episode{'s' if n != 1 else ''}")
    if contents.get("seed") is not None:
        parts.append(f"seed {contents['seed']}")
    extra = [k for k in also if k in contents and k in ("noise", "p_random_action")]
    parts += [f"{k.replace('_', ' ')} {contents[k]}" for k in extra]
    return ", ".join(parts) or "unknown contents"


def check_cached(train: Path, requested: Mapping[str, Any], fix: str) -> None:
    """Raise `DatasetMismatchError` when the dataset at `train` holds other data than `requested` (keys of
    `dataset_contents`, e.g. `episodes=50`; `None` values are not checked, nor values the files do not
    record). The message names the file, what it holds, the flags asked for (`--episodes 50`) and `fix`."""
    wanted = {k: v for k, v in requested.items() if v is not None}
    if not wanted:
        return
    have = dataset_contents(train)
    differ = [k for k, v in wanted.items() if k in have and have[k] != v]
    if not differ:
        return
    asked = " ".join(f"--{k.replace('_', '-')} {wanted[k]}" for k in differ)
    raise DatasetMismatchError(
        f"{train} holds {describe_contents(have, tuple(differ))}, but {asked} was asked for; an existing "
        f"dataset is never regenerated on its own. {fix}"
    )
