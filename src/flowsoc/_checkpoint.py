"""Checkpoints: one folder per checkpoint, switched in by one rename, the last few kept.

Layout of a checkpoint directory (e.g. `run/checkpoint/`):

- `ckpt-0000000040/`, `ckpt-0000000060/`: complete checkpoints, each a folder holding `state.eqx` (the
  array leaves of the saved pytree), any extra files, and `meta.json` (what wrote it, its step, and the
  SHA-256 of every other file, checked on load: a damaged or swapped-in file is refused);
- `LATEST`: the name of the newest one (a convenience for people and tools; readers also find it by
  scanning).

A checkpoint is written into a hidden temporary folder, every file and the folder fsynced, then renamed
into place in one step, and only then are checkpoints beyond the newest `keep` deleted. A crash at any
instant therefore leaves the previous checkpoints intact and the new one either complete or absent;
after a power loss the folder renamed last may be missing (the rename itself is fsynced through the
parent folder, but a file system may still lose it), and the one before it is there. Temporary folders
and files left by a killed writer are removed at the next start (`remove_debris`).

Readers of the earlier single-slot layout (`state.eqx` and `meta.json` directly in the directory) keep
working: such a directory reads as one checkpoint.
"""

import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.random as jr
import numpy as np


_T = TypeVar("_T")

PREFIX = "ckpt-"
_NAME = re.compile(r"^ckpt-(\d+)$")
_TMP_DIR = re.compile(r"^\.ckpt-\d+\..*\.(tmp|old)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, or written with other settings."""


# --------------------------------------------------------------------------------- atomic files


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _unwritable(path: pathlib.Path, err: OSError) -> CheckpointError:
    return CheckpointError(
        f"cannot write in {path} ({err.strerror or err}); choose a directory you can write to, or free some space."
    )


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, rename it onto `path` and fsync the
    folder: readers see the old file or the new one, never half of one, and the new one survives a crash
    once this returns. The file is readable by others as the umask allows (not `mkstemp`'s 0600)."""
    path = pathlib.Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as err:
        raise _unwritable(path.parent, err) from err
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write` of a text file."""
    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(text))


def remove_debris(directory: str | os.PathLike) -> list[pathlib.Path]:
    """Remove what killed writers left in `directory`: `*.tmp` files of `atomic_write` and the hidden
    temporary folders of `save_checkpoint`. Returns what was removed."""
    directory = pathlib.Path(directory)
    removed: list[pathlib.Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if entry.is_file() and entry.name.endswith(".tmp"):
            entry.unlink(missing_ok=True)
            removed.append(entry)
        elif entry.is_dir() and _TMP_DIR.match(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


# --------------------------------------------------------------------------------- pytrees


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _raw_keys(tree: _T) -> _T:
    """Typed PRNG keys do not serialise; replace them by their raw data."""
    return jax.tree.map(lambda x: jr.key_data(x) if _is_key(x) else x, tree)


def _write_tree(file: str, tree) -> None:
    with open(file, "wb") as f:
        eqx.tree_serialise_leaves(f, _raw_keys(eqx.filter(tree, eqx.is_array)))


def save_tree(path: str | os.PathLike, tree) -> None:
    """Write the array leaves of `tree` (PRNG keys included) to `path` atomically."""
    atomic_write(path, lambda tmp: _write_tree(tmp, tree))


def load_tree(path: str | os.PathLike, like: _T) -> _T:
    """Read a tree saved by `save_tree` into the structure, shapes and dtypes of `like` (its
    non-array leaves are kept). Raises `CheckpointError` if the file is missing, truncated or
    holds another structure."""
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist.")
    arrays, static = eqx.partition(like, eqx.is_array)
    try:
        with open(path, "rb") as f:
            raw = eqx.tree_deserialise_leaves(f, _raw_keys(arrays))
            if f.read(1):
                raise ValueError("trailing bytes after the last leaf")
    except Exception as err:  # truncated files, wrong shapes, bad pickles...
        raise CheckpointError(
            f"{path} cannot be read ({type(err).__name__}: {err}); it is corrupt or was written by another "
            "model or configuration."
        ) from err
    restored = jax.tree.map(lambda r, x: jr.wrap_key_data(r, impl=jr.key_impl(x)) if _is_key(x) else r, raw, arrays)
    return eqx.combine(restored, static)


# --------------------------------------------------------------------------------- checkpoints


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint at `step`."""
    return f"{PREFIX}{int(step):010d}"


def list_checkpoints(directory: str | os.PathLike) -> list[pathlib.Path]:
    """The checkpoint folders in `directory`, oldest first (a single-slot directory of the earlier
    layout is its own only checkpoint)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := _NAME.match(p.name)))
    if not found and (directory / "meta.json").exists():
        return [directory]
    return [p for _, p in found]


def latest_checkpoint(directory: str | os.PathLike) -> pathlib.Path | None:
    """The newest checkpoint folder in `directory`, or `None`."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    tree,
    meta: Mapping[str, Any],
    files: Mapping[str, Callable[[str], None]] | None = None,
    *,
    keep: int = 2,
) -> pathlib.Path:
    """Write one checkpoint of `tree` at `step` as a unit: `state.eqx`, every `files[name](path)` and
    `meta.json` (with `step` added) into a temporary folder, fsynced, then renamed to
    `directory/ckpt-<step>`; then `LATEST` names it and all but the newest `keep` are deleted. A
    checkpoint already at `step` is replaced (the old one is kept until the new one is in place).
    Returns the folder."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}.")
    directory = pathlib.Path(directory)
    name = checkpoint_name(step)
    final = directory / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(dir=directory, prefix=f".{name}.", suffix=".tmp"))
    except OSError as err:
        raise _unwritable(directory, err) from err
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        writers = {"state.eqx": lambda path: _write_tree(path, tree), **(files or {})}
        digests = {}
        for file, write in writers.items():
            write(str(tmp / file))
            _fsync_file(tmp / file)
            digests[file] = _sha256(tmp / file)
        payload = json.dumps({**meta, "step": int(step), "files": digests}, indent=2, default=str)
        (tmp / "meta.json").write_text(payload)
        _fsync_file(tmp / "meta.json")
        fsync_dir(tmp)
        old = None
        if final.exists():
            old = directory / f".{name}.{os.getpid()}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise _unwritable(directory, err) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_text(directory / "LATEST", name)
    for stale in list_checkpoints(directory)[:-keep]:
        if stale != final:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(folder: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Check every file of a checkpoint folder against the SHA-256 recorded in its `meta.json` (checkpoints
    of the earlier layout record none); `CheckpointError` names a missing, damaged or replaced file."""
    folder = pathlib.Path(folder)
    for name, expected in (meta.get("files") or {}).items():
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"{path} is missing from the checkpoint.")
        if _sha256(path) != expected:
            raise CheckpointError(
                f"{path} does not match the checksum in {folder / 'meta.json'}: it was damaged or replaced by another "
                "file after the checkpoint was written."
            )


def read_meta(folder: str | os.PathLike) -> dict:
    """The `meta.json` of a checkpoint folder (with an integer `step`); `CheckpointError` if it is
    missing or corrupt."""
    path = pathlib.Path(folder) / "meta.json"
    if not path.exists():
        raise CheckpointError(f"No checkpoint in {path.parent} (missing meta.json). Start without resume.")
    try:
        meta = json.loads(path.read_text())
        meta["step"] = int(meta["step"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupt ({type(err).__name__}: {err}).") from err
    return meta


def compare_meta(saved: Mapping[str, Any], mine: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """The entries `keys` that differ between a saved and a current metadata dictionary, each as
    `"path (saved value saved, current value now)"`; dictionaries are compared recursively, each difference
    named by its dotted path (`agent_config.trust_region.kl_budget`). A key the saved metadata lacks, at any
    depth (written before it was recorded), is not compared."""
    mine = json.loads(json.dumps(dict(mine), default=str))
    detail: list[str] = []

    def walk(path: str, a: Any, b: Any) -> None:
        if a == b:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for f in dict.fromkeys([*b, *a]):
                if f in a:
                    walk(f"{path}.{f}", a[f], b.get(f))
        else:
            detail.append(f"{path} ({a!r} saved, {b!r} now)")

    for k in keys:
        if k in saved:
            walk(k, saved[k], mine.get(k))
    return detail


def load_checkpoint(
    directory: str | os.PathLike,
    like: _T,
    *,
    meta: Mapping[str, Any] | None = None,
    keys: Sequence[str] = (),
    step_of: Callable[[_T], Any] | None = None,
    folder: str | os.PathLike | None = None,
) -> tuple[_T, dict, pathlib.Path]:
    """Restore the newest readable checkpoint of `directory` into the structure of `like`.

    With `meta`, a checkpoint whose `keys` differ from `meta`'s is refused, naming each difference.
    `step_of(tree)` (e.g. `lambda a: a.step`; returning `None`: no check) is checked against the step in
    `meta.json`. When the newest checkpoint is unreadable (a disk error, a file damaged by hand), the
    previous one is used with a warning naming both. `folder` reads that folder only. Returns
    `(tree, saved meta, folder)`; raises `CheckpointError` naming the problem."""
    directory = pathlib.Path(directory)
    candidates = [pathlib.Path(folder)] if folder is not None else list_checkpoints(directory)
    if not candidates:
        raise CheckpointError(f"No checkpoint in {directory} (missing meta.json). Start without resume.")
    errors: list[str] = []
    for candidate in reversed(candidates):
        try:
            saved = read_meta(candidate)
            if meta is not None:
                detail = compare_meta(saved, meta, keys)
                if detail:  # not a damaged file: the same settings would fail in every checkpoint
                    raise _Mismatch(
                        f"The checkpoint in {candidate} was written with different settings: {', '.join(detail)}. "
                        "Resume with the same settings or use a new run directory."
                    )
            verify_files(candidate, saved)
            tree = load_tree(candidate / "state.eqx", like)
            held = None if step_of is None else step_of(tree)
            if held is not None:
                held = np.asarray(jax.device_get(held))
                if not np.all(held == saved["step"]):
                    raise CheckpointError(
                        f"The checkpoint in {candidate} is inconsistent: meta.json says step {saved['step']}, "
                        f"state.eqx holds {held.tolist()}."
                    )
        except _Mismatch as err:
            raise CheckpointError(str(err)) from None
        except CheckpointError as err:
            errors.append(str(err))
            continue
        if errors:
            warnings.warn(
                f"the newest checkpoint could not be read ({errors[0]}); resuming from the previous one, "
                f"{candidate.name}.",
                stacklevel=2,
            )
        return tree, saved, candidate
    raise CheckpointError(errors[0] if len(errors) == 1 else " ".join(f"({i + 1}) {e}" for i, e in enumerate(errors)))


class _Mismatch(Exception):
    pass
