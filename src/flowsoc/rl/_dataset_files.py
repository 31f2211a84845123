"""Where dataset files live and the command that makes them: what the data layer (`flowsoc.rl.data`)
needs from the generator without importing it.

Kept free of JAX, MuJoCo, tyro and multiprocessing, so that importing the agents (which import
`flowsoc.rl.data`) does not import the generator; `flowsoc.rl.datagen` re-exports these names.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._datagen_recipes import parse_dataset_name


DATA_DIR_ENV = "FLOWSOC_DATA_DIR"
DEFAULT_DATA_DIR = "~/.ogbench/data"


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The dataset directory: `path` if given, else `$FLOWSOC_DATA_DIR`, else
    `~/.ogbench/data`.
    """
    if path is None:
        path = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(path).expanduser()


def generate_command(name: str, episodes: int | None = None, workers: int | None = None) -> str:
    """The shell command that generates dataset `name` (used in error messages)."""
    stem = parse_dataset_name(name).file_stem
    parts = ["python -m flowsoc.rl.datagen", stem]
    if episodes is not None:
        parts += ["--episodes", str(episodes)]
    if workers is not None:
        parts += ["--workers", str(workers)]
    return " ".join(parts)
