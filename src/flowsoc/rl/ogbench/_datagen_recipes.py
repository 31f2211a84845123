"""OGBench dataset names: parsing, official generation recipes, and what cannot be
generated.

Kept free of JAX and MuJoCo imports so that the generator's worker processes and the
resolver can both use it cheaply.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Literal

from .._errors import DatasetError


_CUBE_SIZES = ("single", "double", "triple", "quadruple")
_PUZZLE_SIZES = ("3x3", "4x4", "4x5", "4x6")
_MAZE_SIZES = ("medium", "large", "giant", "teleport")
_MANIP_TYPES = ("play", "noisy")
_MAZE_TYPES = ("navigate", "stitch")

# domain -> (variants or None, dataset types). Generation covers cube/scene/puzzle/pointmaze,
# antmaze (with the shipped ant expert) and humanoidmaze (given a humanoid expert); the rest only
# parse, so that their official files (copied in by hand) still load.
_GRAMMAR: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...]]] = {
    "cube": (_CUBE_SIZES + ("octuple",), _MANIP_TYPES),
    "scene": (None, _MANIP_TYPES),
    "puzzle": (_PUZZLE_SIZES, _MANIP_TYPES),
    "pointmaze": (_MAZE_SIZES, _MAZE_TYPES),
    "antmaze": (_MAZE_SIZES, _MAZE_TYPES + ("explore",)),
    "humanoidmaze": (_MAZE_SIZES, _MAZE_TYPES),
    "antsoccer": (("arena", "medium"), _MAZE_TYPES),
    "powderworld": (("easy", "medium", "hard"), ("play",)),
}
_GENERATABLE = ("cube", "scene", "puzzle", "pointmaze", "antmaze", "humanoidmaze")
EXPERT_DOMAINS = {"antmaze": "ant", "humanoidmaze": "humanoid"}
"""Maze domains whose data are rollouts of a locomotion expert, and which expert."""

N_TASKS = 5
"""Single-task datasets per domain: OGBench registers `-singletask-task1` ... `-task5` for every one."""

# The task a bare `-singletask-` name stands for (OGBench's registration defaults).
DEFAULT_TASK = {
    "cube": 2,
    "scene": 2,
    "puzzle-3x3": 4,
    "puzzle-4x4": 4,
    "puzzle": 2,
    "pointmaze": 1,
    "antmaze": 1,
    "humanoidmaze": 1,
    "antsoccer": 4,
}

SUPPORTED_HELP = (
    "Dataset names read <domain>-<type>[-singletask-task1..5]-v0, e.g. cube-double-play-singletask-task2-v0; "
    "generated here for the domains cube-{single,double,triple,quadruple}, scene, puzzle-{3x3,4x4,4x5,4x6} "
    "(types play, noisy), pointmaze-{medium,large,giant,teleport}, antmaze-{medium,large,giant,teleport} and "
    "humanoidmaze-{medium,large,giant} (types navigate, stitch; antmaze also explore); large sharded datasets put "
    "their size before -v0 (cube-triple-play-10m-v0, cube-quadruple-play-100m-v0). "
    "Every dataset, what it needs and its size: python -m flowsoc.rl.datagen --list"
)
"""The end of every unknown-name message: the name format with a real example, the domains generated here
and where to see them all."""

DATA_DIR_HINT = "--data-dir DIR, else $FLOWSOC_DATA_DIR, else ~/.ogbench/data"
"""How the data directory is chosen, for messages (the constants live in `_dataset_files`)."""


class UnknownDatasetError(DatasetError):
    """The name is not an OGBench dataset this project knows how to load or generate."""


class UnsupportedDatasetError(DatasetError):
    """A real OGBench dataset that cannot be generated on this machine (for example, no
    expert policy).
    """


@dataclasses.dataclass(frozen=True)
class DatasetName:
    """A parsed OGBench dataset name.

    `cube-double-play-singletask-task2-v0` parses to domain `cube`,
    `env_id="cube-double-v0"`, `dataset_type="play"`, `file_stem="cube-double-play-v0"`,
    `task=2`.
    """

    name: str  # the name as given
    visual: bool  # a 'visual-' (pixel observation) dataset
    # cube / scene / puzzle / pointmaze / antmaze / humanoidmaze / antsoccer /
    # powderworld
    domain: str
    variant: str  # "double", "3x3", "medium", "" for scene
    dataset_type: str  # play / noisy / navigate / stitch
    env_id: str  # the goal-conditioned environment used for generation: "cube-double-v0"
    file_stem: str  # official data file name without ".npz": "cube-double-play-v0"
    task: int | None  # None: goal-conditioned; else the single task (bare "singletask" -> default)
    oraclerep: bool
    size: str = ""  # a large sharded dataset's size ("10m", "100m", "1b"), "" for a standard file

    @property
    def singletask(self) -> bool:
        return self.task is not None

    @property
    def sharded(self) -> bool:
        """A large dataset (`cube-triple-play-10m-v0`): a folder of shard files, not one file."""
        return bool(self.size)

    @property
    def shard_stem(self) -> str:
        """The stem of a sharded dataset's files: `cube-triple-play-v0` (files `cube-triple-play-v0-000.npz`, ...
        in the folder `cube-triple-play-10m-v0`); the file stem itself for a standard dataset."""
        return self.file_stem.replace(f"-{self.size}-", "-") if self.size else self.file_stem

    @property
    def transitions(self) -> int | None:
        """A sharded dataset's nominal size in transitions (`10m`: 10,000,000), `None` for a standard file."""
        if not self.size:
            return None
        return int(self.size[:-1]) * {"m": 10**6, "b": 10**9}[self.size[-1]]

    @property
    def sparse_default(self) -> bool:
        """Whether QAM's reference runs make this domain's reward sparse (puzzle and
        scene).
        """
        return self.domain in ("puzzle", "scene")


def copy_hint(file_stem: str, directory: str | os.PathLike | None = None) -> str:
    """What to do with a dataset flowsoc cannot generate: where to copy the official files (`directory`, the
    data directory in use, when known) and how another directory is chosen."""
    where = (
        f"into {directory} (the data directory; --data-dir DIR picks another)"
        if directory is not None
        else f"into the data directory ({DATA_DIR_HINT})"
    )
    return (
        f"Download {file_stem}.npz and {file_stem}-val.npz on a machine with internet access "
        f"(ogbench.download_datasets) and copy them {where}; flowsoc then loads them as usual."
    )


def require_generatable(
    parsed: DatasetName, expert: str | None = None, directory: str | os.PathLike | None = None
) -> None:
    """Raise `UnsupportedDatasetError`, naming what is missing, if `parsed` cannot be generated
    here (`expert`: the expert actor file given for antmaze / humanoidmaze, if any; `directory`: the data
    directory, named in the message as where to copy the official files).
    """
    name, domain = parsed.name, parsed.domain
    hint = copy_hint(parsed.file_stem, directory)
    if parsed.visual:
        raise UnsupportedDatasetError(
            f"{name!r}: pixel-observation ('visual-') datasets are not generated by "
            "flowsoc: rendering runs "
            "at about 5 env steps/s on CPU (1M steps would take days). Use the "
            "state-based dataset "
            f"{name[len('visual-') :]!r}, or: {hint}"
        )
    if domain == "humanoidmaze" and expert is None:
        raise UnsupportedDatasetError(
            f"{name!r}: OGBench makes humanoidmaze data by rolling out a SAC humanoid expert, and none "
            "ships with flowsoc (upstream trains it for 40M environment steps, days on a CPU). Train one "
            "with `python -m flowsoc.rl.experts --expert humanoid --out DIR` (best on a GPU) and pass "
            f"`--expert DIR/actor.npz`, or: {hint}"
        )
    if domain == "antsoccer":
        raise UnsupportedDatasetError(
            f"{name!r}: OGBench makes antsoccer data with two pretrained experts (the ant and an "
            "ant dribbling a ball, upstream data_gen_scripts/generate_antsoccer.py); flowsoc trains "
            f"and ships the ant expert only, so this dataset cannot be generated here. {hint}"
        )
    if domain == "powderworld":
        raise UnsupportedDatasetError(f"{name!r}: flowsoc does not generate powderworld datasets. {hint}")
    if domain == "cube" and parsed.variant == "octuple":
        raise UnsupportedDatasetError(
            f"{name!r}: OGBench publishes no cube-octuple dataset recipe; flowsoc "
            "generates "
            "cube-{single,double,triple,quadruple} only."
        )
    if (domain == "humanoidmaze" and parsed.variant == "teleport") or (
        parsed.dataset_type == "explore" and parsed.variant == "giant"
    ):
        raise UnsupportedDatasetError(f"{name!r}: OGBench has no such dataset (no recipe upstream).")
    assert domain in _GENERATABLE


def parse_dataset_name(name: str) -> DatasetName:
    """
    Parse an OGBench dataset name (syntax only), raising `UnknownDatasetError` if it is
    not one.

    Follows `ogbench.make_env_and_datasets`: `-singletask[-taskN]` and `-oraclerep` are
    dropped to get the data file, and the dataset type is dropped to get the
    environment.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", name):
        raise UnknownDatasetError(f"{name!r} is not an OGBench dataset name. {SUPPORTED_HELP}")
    tokens = name.split("-")
    if tokens[-1] != "v0":
        raise UnknownDatasetError(f"{name!r}: OGBench dataset names end in '-v0'. {SUPPORTED_HELP}")
    body = tokens[:-1]
    visual = bool(body) and body[0] == "visual"
    if visual:
        body = body[1:]
    task: int | None = None
    bad_task: str | None = None  # a '-taskN' with N outside 1..5: refused once the domain is known
    oraclerep = False
    if "singletask" in body:
        pos = body.index("singletask")
        rest = body[pos + 1 :]
        body = body[:pos]
        if rest == []:
            task = 0  # resolved to the domain default below
        elif len(rest) == 1 and re.fullmatch(r"task[1-5]", rest[0]):
            task = int(rest[0][4:])
        elif len(rest) == 1 and re.fullmatch(r"task[0-9]+", rest[0]):
            bad_task, task = rest[0], 0
        else:
            raise UnknownDatasetError(
                f"{name!r}: after 'singletask' only '-task1' ... '-task{N_TASKS}' may follow. {SUPPORTED_HELP}"
            )
    elif body and body[-1] == "oraclerep":
        oraclerep = True
        body = body[:-1]
    size = ""
    if task is None and not oraclerep and body and re.fullmatch(r"[1-9][0-9]*[mb]", body[-1]):
        size, body = body[-1], body[:-1]  # a large sharded dataset: cube-triple-play-10m-v0

    grammar = _GRAMMAR.get(body[0]) if body else None
    ok = False
    variant = ""
    if grammar is not None:
        variants, types = grammar
        if variants is None:
            ok = len(body) == 2 and body[1] in types
            variant = ""
        else:
            ok = len(body) == 3 and body[1] in variants and body[2] in types
            variant = body[1] if ok else ""
    if not ok:
        raise UnknownDatasetError(f"{name!r} is not a known OGBench dataset. {SUPPORTED_HELP}")
    domain, dtype = body[0], body[-1]
    if task == 0:
        key = f"puzzle-{variant}" if f"puzzle-{variant}" in DEFAULT_TASK else domain
        task = DEFAULT_TASK.get(key, 1)
    if bad_task is not None:
        base = "-".join(tokens[: tokens.index("singletask")])
        raise UnknownDatasetError(
            f"{name!r}: there is no {bad_task}: every OGBench single-task dataset has tasks 1 to {N_TASKS} "
            f"({base}-singletask-task1-v0 ... -task{N_TASKS}-v0, or {base}-singletask-v0 for the default, "
            f"task{task})."
        )
    prefix = ["visual"] if visual else []
    family = prefix + [t for t in (domain, variant) if t]
    return DatasetName(
        name=name,
        visual=visual,
        domain=domain,
        variant=variant,
        dataset_type=dtype,
        env_id="-".join(family + ["v0"]),
        file_stem="-".join(family + [dtype] + ([size] if size else []) + ["v0"]),
        task=task,
        oraclerep=oraclerep,
        size=size,
    )


@dataclasses.dataclass(frozen=True)
class Recipe:
    """
    OGBench's official generation settings for one data file (upstream `commands.sh`).
    """

    episodes: int  # training episodes; the validation file holds episodes // 10 more
    episode_length: int  # env steps per episode (the TimeLimit); 1001 for most datasets
    p_random_action: float  # probability of a uniformly random action instead of the oracle's
    # manipulation: plan-oracle noise or markov noise ceiling; mazes: action noise std
    noise: float
    oracle: Literal["plan", "markov", "maze", "expert"]


def official_recipe(parsed: DatasetName) -> Recipe:
    """The upstream generation settings for `parsed.file_stem`."""
    if parsed.domain == "pointmaze":
        if parsed.dataset_type == "stitch":
            return Recipe(5000, 201, 0.0, 0.5, "maze")
        if parsed.variant == "giant":
            return Recipe(500, 2001, 0.0, 0.5, "maze")
        return Recipe(1000, 1001, 0.0, 0.5, "maze")
    if parsed.domain == "antmaze":
        if parsed.dataset_type == "stitch":
            return Recipe(5000, 201, 0.0, 0.2, "expert")
        if parsed.dataset_type == "explore":
            return Recipe(10000, 501, 0.0, 1.0, "expert")
        if parsed.variant == "giant":
            return Recipe(500, 2001, 0.0, 0.2, "expert")
        return Recipe(1000, 1001, 0.0, 0.2, "expert")
    if parsed.domain == "humanoidmaze":
        if parsed.dataset_type == "stitch":
            return Recipe(5000, 401, 0.0, 0.2, "expert")
        return Recipe(1000, 4001 if parsed.variant == "giant" else 2001, 0.0, 0.2, "expert")
    episodes = {"triple": 3000, "quadruple": 5000, "4x5": 3000, "4x6": 5000}.get(parsed.variant, 1000)
    if parsed.dataset_type == "play":
        return Recipe(episodes, 1001, 0.0, 0.1, "plan")
    p_random = 0.2 if parsed.domain == "puzzle" else 0.1
    return Recipe(episodes, 1001, p_random, 0.1, "markov")


SHARD_TRANSITIONS = 1_000_000
"""Transitions per shard of a large dataset: upstream writes one file of about 1M transitions per generation
command (`--num_episodes=1000 --max_episode_steps=1001`; antmaze-giant 500 x 2001; humanoidmaze-giant 1000 x 4001,
4M)."""


@dataclasses.dataclass(frozen=True)
class ShardRecipe:
    """How upstream makes a large dataset: `shards` files of `recipe.episodes` episodes each (shard `i` is one
    generation command with `--seed=i`; each also writes `episodes // 10` validation episodes beside it)."""

    shards: int
    recipe: Recipe


def shard_recipe(parsed: DatasetName) -> ShardRecipe:
    """The upstream recipe of the large dataset `parsed` (`cube-triple-play-100m-v0`: 100 shards of 1000 episodes
    of 1001 steps, horizon-reduction README; `antmaze-giant-navigate-10m-v0`: 10 of 500 x 2001, trqam README)."""
    assert parsed.sharded and parsed.transitions is not None
    recipe = official_recipe(dataclasses.replace(parsed, size=""))
    if parsed.domain in ("cube", "scene", "puzzle"):
        recipe = dataclasses.replace(recipe, episodes=1000)  # 1M per shard (the 1M files of triple etc. hold 3M+)
    per_shard = recipe.episodes * (recipe.episode_length - 1)
    return ShardRecipe(max(1, parsed.transitions // per_shard), recipe)


def shard_file_name(parsed: DatasetName, index: int) -> str:
    """Shard `index`'s file name inside the dataset's folder: `cube-triple-play-v0-003.npz` (upstream's
    `seq -w 0 999` numbering; its validation file is `...-003-val.npz`)."""
    return f"{parsed.shard_stem}-{index:03d}.npz"


# --------------------------------------------------------------------------------------
# Every generatable dataset, for `python -m flowsoc.rl.datagen --list`
# --------------------------------------------------------------------------------------

# Per step of a generated file: (observation, action, qpos, qvel, button states) widths, read off OGBench's
# environments (float32 each; terminals one byte, button states int64).
_STEP_WIDTHS: dict[str, tuple[int, int, int, int, int]] = {
    "cube-single": (28, 5, 21, 20, 0),
    "cube-double": (37, 5, 28, 26, 0),
    "cube-triple": (46, 5, 35, 32, 0),
    "cube-quadruple": (55, 5, 42, 38, 0),
    "scene": (40, 5, 25, 24, 2),
    "puzzle-3x3": (55, 5, 23, 23, 9),
    "puzzle-4x4": (83, 5, 30, 30, 16),
    "puzzle-4x5": (99, 5, 34, 34, 20),
    "puzzle-4x6": (115, 5, 38, 38, 24),
    "pointmaze": (2, 2, 2, 2, 0),
    "antmaze": (29, 8, 15, 14, 0),
    "humanoidmaze": (69, 21, 28, 27, 0),
}

_NEEDS = {
    "cube": "nothing: OGBench's scripted oracle",
    "scene": "nothing: OGBench's scripted oracle",
    "puzzle": "nothing: OGBench's scripted oracle",
    "pointmaze": "nothing: OGBench's maze oracle",
    "antmaze": "the ant expert shipped with flowsoc",
    "humanoidmaze": "a humanoid expert you train (see below)",
}


def generatable_datasets() -> list[DatasetName]:
    """Every OGBench data file the generator can make (one per file: the `-singletask-taskN` and `-oraclerep`
    names read the same file), in the order of `SUPPORTED_HELP`."""
    out = []
    for domain in _GENERATABLE:
        variants, types = _GRAMMAR[domain]
        for variant in variants or ("",):
            for dtype in types:
                parsed = parse_dataset_name("-".join(t for t in (domain, variant, dtype, "v0") if t))
                try:
                    require_generatable(parsed, expert="given")
                except UnsupportedDatasetError:
                    continue
                out.append(parsed)
    return out


def bytes_per_step(parsed: DatasetName) -> int:
    """The uncompressed bytes of one step of a generated file of `parsed` (its compressed file is smaller)."""
    key = f"{parsed.domain}-{parsed.variant}" if parsed.variant else parsed.domain
    obs, act, qpos, qvel, buttons = _STEP_WIDTHS.get(key) or _STEP_WIDTHS[parsed.domain]
    return 4 * (obs + act + qpos + qvel) + 1 + 8 * buttons


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1_000_000 else f"{n / 1e3:.0f}K"


def dataset_listing(directory: str | os.PathLike) -> str:
    """The text of `python -m flowsoc.rl.datagen --list`: every generatable dataset with what it needs, its
    official size (episodes x steps = transitions of the training file) and an upper bound of its two files on
    disk (uncompressed), then what cannot be generated and what to do instead."""
    rows = []
    for parsed in generatable_datasets():
        recipe = official_recipe(parsed)
        n, length = recipe.episodes, recipe.episode_length
        steps_on_disk = (n + max(1, n // 10)) * length
        megabytes = steps_on_disk * bytes_per_step(parsed) / 1e6
        disk = f"<= {megabytes:,.0f} MB" if megabytes < 1000 else f"<= {megabytes / 1e3:.1f} GB"
        size = f"{n} episodes x {length} steps = {_count(n * (length - 1))} transitions"
        rows.append((parsed.file_stem, size, disk, _NEEDS[parsed.domain]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    header = ("dataset", "official size (training file)", "both files", "needs")
    lines = [
        f"Datasets `python -m flowsoc.rl.datagen NAME` generates, into {directory} ({DATA_DIR_HINT}).",
        "Each is one file pair NAME.npz + NAME-val.npz, which also serves NAME's single-task versions "
        "(-singletask-task1 ... -task5 before -v0: cube-double-play-v0 serves cube-double-play-singletask-task2-v0, "
        "the name the examples' --env takes).",
        "",
        "  ".join(h.ljust(w) for h, w in zip(header, widths + [0])).rstrip(),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths + [0])).rstrip() for row in rows]
    lines += [
        "",
        "Sizes are OGBench's official counts (--episodes, --episode-length change them) and the files' uncompressed "
        "size (they are stored compressed).",
        "humanoidmaze: train the expert first, `python -m flowsoc.rl.experts --expert humanoid --out DIR` (days on "
        "a CPU, best on a GPU), then pass --expert DIR/actor.npz.",
        "Large datasets (a folder of ~1M-transition shards, upstream's layout): put the size before -v0, e.g. "
        "cube-triple-play-10m-v0, puzzle-4x4-play-10m-v0, antmaze-giant-navigate-10m-v0, cube-quadruple-play-100m-v0 "
        "(--shards K makes only the first K; a stopped generation resumes at its first missing shard).",
        "Not generated here: antsoccer-{arena,medium}-{navigate,stitch}-v0 (needs a second expert, an ant "
        "dribbling a ball), powderworld-*, visual-* (rendering is too slow on a CPU) and cube-octuple; copy "
        f"OGBench's official NAME.npz and NAME-val.npz into {directory} instead.",
    ]
    return "\n".join(lines)
