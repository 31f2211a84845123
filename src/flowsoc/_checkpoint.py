"""Atomic files and pytree serialisation shared by the trainers' checkpoints."""

import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import TypeVar

import equinox as eqx
import jax
import jax.random as jr


_T = TypeVar("_T")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, or from another configuration."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it onto `path`: readers
    see the old file or the new one, never half of one."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _raw_keys(tree: _T) -> _T:
    """Typed PRNG keys do not serialise; replace them by their raw data."""
    return jax.tree.map(lambda x: jr.key_data(x) if _is_key(x) else x, tree)


def save_tree(path: str | os.PathLike, tree) -> None:
    """Write the array leaves of `tree` (PRNG keys included) to `path` atomically."""

    def write(tmp):
        with open(tmp, "wb") as f:
            eqx.tree_serialise_leaves(f, _raw_keys(eqx.filter(tree, eqx.is_array)))

    atomic_write(path, write)


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
