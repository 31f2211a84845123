"""A trained locomotion expert's deterministic policy, in NumPy, for the dataset generator's worker
processes (which never import JAX).

The expert is the actor of a SAC agent (`flowsoc.rl.ogbench.TanhGaussianActor`): an MLP whose hidden
layers compute $h \\mapsto \\mathrm{gelu}(W h + b)$ (GELU's tanh approximation) and whose last layer
gives the mean $\\mu$ and log standard deviation of the pre-tanh Gaussian. The expert acts with
$a = \\tanh(\\mu(s))$, as upstream's data generation does (temperature 0).

An expert file (`actor.npz`) holds `weight_k`, `bias_k` for each layer `k` (weights of shape
`(out, in)`, float32); an optional record beside it (`<stem>.json` or `expert.json`) holds the
file's SHA-256, checked on loading, and how the expert was trained.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np


SHIPPED_DIR = Path(__file__).parent / "expert_weights"
SHIPPED = {"ant": SHIPPED_DIR / "ant.npz"}
"""Experts shipped with flowsoc, by name."""

EXPERT_OBS_DIM = {"antmaze": 29, "humanoidmaze": 69}
"""The expert's observation size per maze domain: the maze's state observation without the x-y
position, plus the two-dimensional unit direction to the subgoal."""

EXPERT_ACTION_DIM = {"antmaze": 8, "humanoidmaze": 21}


class ExpertError(ValueError):
    """An expert file is missing, corrupt, or does not fit the environment. The message names the
    file and the fix."""


_RETRAIN = "Retrain it with `python -m flowsoc.rl.experts --expert {expert} --out DIR` and pass DIR/actor.npz."


class NumpyActor:
    """The deterministic expert policy $a = \\tanh(\\mu(s))$ from an actor's layer arrays."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], path: Path | None = None):
        self.weights = [np.asarray(w, np.float32) for w in weights]
        self.biases = [np.asarray(b, np.float32) for b in biases]
        self.path = path
        self.obs_dim = int(self.weights[0].shape[1])
        self.action_dim = int(self.weights[-1].shape[0]) // 2

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """$\\tanh(\\mu(s))$ for one observation `(obs_dim,)` or a batch `(n, obs_dim)`."""
        h = np.asarray(obs, np.float32)
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = _gelu(h @ w.T + b)
        out = h @ self.weights[-1].T + self.biases[-1]
        return np.tanh(out[..., : self.action_dim])

    def walk(self, maze: Any, direction: np.ndarray) -> np.ndarray:
        """The action walking the maze's robot in the unit `direction`: the policy of the maze's state
        without its x-y position, followed by the direction."""
        return self(np.concatenate([maze.get_ob(ob_type="states")[2:], direction]))


def subgoal_direction(maze: Any) -> np.ndarray:
    """The unit vector from the agent's x-y position towards the maze's next oracle (BFS) subgoal on
    the way to its current goal (`maze`: an OGBench maze environment, unwrapped)."""
    subgoal, _ = maze.get_oracle_subgoal(maze.get_xy(), maze.cur_goal_xy)
    direction = subgoal - maze.get_xy()
    return direction / (np.linalg.norm(direction) + 1e-6)


def _gelu(x: np.ndarray) -> np.ndarray:
    """GELU's tanh approximation, $\\tfrac12 x (1 + \\tanh(\\sqrt{2/\\pi}(x + 0.044715 x^3)))$ (as `jax.nn.gelu`)."""
    return 0.5 * x * (1.0 + np.tanh(np.float32(np.sqrt(2.0 / np.pi)) * (x + np.float32(0.044715) * x**3)))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_path(path: Path) -> Path | None:
    """The training record beside an expert file, if any."""
    for candidate in (path.with_suffix(".json"), path.parent / "expert.json"):
        if candidate.exists():
            return candidate
    return None


def load_expert(path: str | Path, *, obs_dim: int | None = None, action_dim: int | None = None) -> NumpyActor:
    """Load an expert file (a shipped name such as `"ant"`, or a path to `actor.npz`), checking that it is
    intact and, when given, that it takes `obs_dim` observations and gives `action_dim` actions.

    Raises `ExpertError` naming the file and the fix."""
    name = str(path)
    path = SHIPPED[name] if name in SHIPPED else Path(path).expanduser()
    expert = "humanoid" if action_dim == EXPERT_ACTION_DIM["humanoidmaze"] else "ant"
    retrain = _RETRAIN.format(expert=expert)
    if not path.exists():
        raise ExpertError(f"{path}: no expert file here. {retrain}")
    record = record_path(path)
    if record is not None:
        try:
            expected = json.loads(record.read_text()).get("actor_sha256")
        except (json.JSONDecodeError, OSError) as e:
            raise ExpertError(f"{record}: the expert's record is unreadable ({e}). {retrain}") from None
        if expected is not None and expected != file_sha256(path):
            raise ExpertError(
                f"{path}: the file's SHA-256 differs from the one in {record.name}; the file is corrupt or "
                f"was replaced. {retrain}"
            )
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as e:
        raise ExpertError(f"{path}: not a readable expert file ({type(e).__name__}: {e}). {retrain}") from None
    layers = sum(1 for k in arrays if k.startswith("weight_"))
    keys = {f"{kind}_{k}" for k in range(layers) for kind in ("weight", "bias")}
    if layers == 0 or set(arrays) != keys:
        raise ExpertError(
            f"{path}: expected arrays weight_0, bias_0, ... weight_L, bias_L; found {sorted(arrays)}. {retrain}"
        )
    weights = [arrays[f"weight_{k}"] for k in range(layers)]
    biases = [arrays[f"bias_{k}"] for k in range(layers)]
    for k in range(layers):
        w, b = weights[k], biases[k]
        if w.ndim != 2 or b.shape != (w.shape[0],) or (k and w.shape[1] != weights[k - 1].shape[0]):
            raise ExpertError(
                f"{path}: layer {k} has weight {w.shape} and bias {b.shape}, which do not chain. {retrain}"
            )
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise ExpertError(f"{path}: layer {k} holds NaN or infinite values. {retrain}")
    if weights[-1].shape[0] % 2:
        raise ExpertError(f"{path}: the last layer must give a mean and a log-std per action dimension. {retrain}")
    actor = NumpyActor(weights, biases, path)
    if obs_dim is not None and actor.obs_dim != obs_dim:
        raise ExpertError(
            f"{path}: the expert takes {actor.obs_dim}-dimensional observations but this environment gives "
            f"{obs_dim} (is it the expert for another robot?). {retrain}"
        )
    if action_dim is not None and actor.action_dim != action_dim:
        raise ExpertError(
            f"{path}: the expert gives {actor.action_dim}-dimensional actions but this environment takes "
            f"{action_dim}. {retrain}"
        )
    return actor
