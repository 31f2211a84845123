"""Session fixtures: tiny OGBench datasets generated once with flowsoc's generator.

Each dataset has a few short episodes (`EPISODE_LENGTH` env steps), enough to exercise
the file format, OGBench's loader and relabelling, and the chunk sampler in seconds.
"""

import os
import types
import warnings

import pytest


os.environ.setdefault("MUJOCO_GL", "egl")
warnings.filterwarnings("ignore", message=".*DISPLAY.*")

EPISODE_LENGTH = 101  # env steps per episode; OGBench's loader keeps 100 transitions each

# dataset stem -> training episodes (one validation episode each)
SMALL = {
    "cube-single-play-v0": 3,
    "scene-play-v0": 2,
    "puzzle-3x3-play-v0": 2,
    "pointmaze-medium-navigate-v0": 3,
    "antmaze-medium-navigate-v0": 2,  # with the shipped ant expert
}


@pytest.fixture(scope="session")
def small():
    """The sizes of the session datasets: `small.episodes[stem]`, `small.length`."""
    return types.SimpleNamespace(episodes=dict(SMALL), length=EPISODE_LENGTH)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A session-wide data directory holding the SMALL datasets."""
    from flowsoc.rl.ogbench._datagen import generate, GenerateOptions

    root = tmp_path_factory.mktemp("ogbench-data")
    for stem, episodes in SMALL.items():
        generate(
            GenerateOptions(
                env=stem,
                episodes=episodes,
                val_episodes=1,
                episode_length=EPISODE_LENGTH,
                workers=1,
                seed=0,
                data_dir=str(root),
                progress=False,
            )
        )
    return root


def pytest_collection_modifyitems(items):
    # OGBench's ManipSpace builds its action Box from float64 bounds on every access.
    for item in items:
        if "tests/rl/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.filterwarnings("ignore:.*precision lowered by casting.*:UserWarning"))
