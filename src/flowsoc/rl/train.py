"""The offline training loop: fused update dispatches, periodic evaluation, metrics files, a
learning-curve figure, atomic checkpoints and exact resume.

Layout of a run directory:

- `checkpoint/ckpt-<step>/` (the newest two): the whole agent (parameters, optimiser state, λ and its
  KL average, RNG key, step) in `state.eqx` and what wrote it in `meta.json`, each checkpoint written
  as one unit (a folder renamed into place), `checkpoint/LATEST` naming the newest;
- `metrics.jsonl`: one JSON object per row (`"kind": "train"` per dispatch, `"eval"` per evaluation);
- `train.csv`, `eval.csv`: the same rows as tables;
- `learning_curve.png`: success rate, path KL against the budget, and λ over training steps.
"""

import dataclasses
import os
import pathlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._checkpoint import (
    atomic_write,
    CheckpointError,
    compare_meta,
    latest_checkpoint,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from .._driver import AbstractTrainer, Block, drive, NonFiniteError, Saved
from .._logging import AbstractLogger, MetricsLog
from ._custom_types import Agent, Evaluator
from .agents import AbstractFlowAgent
from .buffers import ReplayBuffer, sample_chunks, Transitions
from .pretrain import dataset_fingerprint


NonFiniteLossError = NonFiniteError
"""Training produced a non-finite loss or metric; the message names the step and the last good
checkpoint (the core's `flowsoc.NonFiniteError`)."""


def check_positive_ints(config: Any, names: tuple[str, ...]) -> None:
    """Raise `ValueError` unless each field `names` of the dataclass `config` is a positive int."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(config).__name__}: {name} must be a positive integer, got {value!r}.")


def check_block_multiples(config: Any, names: tuple[str, ...], why: str) -> None:
    """Raise `ValueError` unless each field `names` of `config` is a non-negative multiple of its
    `steps_per_dispatch` (`why`: what runs in blocks of that size)."""
    n = config.steps_per_dispatch
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 0 or value % n:
            raise ValueError(
                f"{type(config).__name__}: {name}={value} must be a non-negative multiple of steps_per_dispatch={n} "
                f"({why} of {n}); change one of them."
            )


def check_seed(config: Any) -> None:
    """Raise `ValueError` unless `config.seed` is an integer in [0, 2^31) (it becomes a uint32 key)."""
    seed = config.seed
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
        raise ValueError(f"{type(config).__name__}: seed must be an integer in [0, 2^31), got {seed!r}.")


def check_eval_flows(config: Any) -> None:
    """Raise `ValueError` unless every entry of `config.eval_flows` names a flow of the agents."""
    for flow in config.eval_flows:
        if flow not in ("policy", "behaviour", "base"):
            raise ValueError(
                f"{type(config).__name__}: eval_flows entries must be 'policy', 'behaviour' or 'base', got {flow!r}."
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop (the agent's own hyperparameters are in `AgentConfig`).

    The official protocol is 1M offline steps, batch 256, evaluation every 50K steps over 50
    episodes. `steps`, `eval_every` and `checkpoint_every` must be multiples of
    `steps_per_dispatch`, the number of updates fused into one compiled `lax.scan`.
    """

    steps: int = 1_000_000
    """Update steps (counted by `agent.step`)."""
    batch_size: int = 256
    """Chunks per update."""
    steps_per_dispatch: int = 100
    """Updates fused into one compiled `lax.scan`."""
    eval_every: int = 50_000
    """Steps between evaluations; 0: no evaluation during training."""
    eval_episodes: int = 50
    """Episodes per evaluation."""
    eval_envs: int = 10
    """Environments stepped in lockstep (one batched policy call per chunk)."""
    eval_at_start: bool = True
    """Evaluate the untrained agent at step 0."""
    eval_flows: tuple[str, ...] = ("policy",)
    """Flows to evaluate: `"policy"`, `"behaviour"` (the BC flow), `"base"` (its EMA)."""
    checkpoint_every: int = 50_000
    """Steps between checkpoints; 0: only at the end (and on Ctrl-C)."""
    seed: int = 0
    """Seed of the batches and the evaluation (the agent's own key comes from `create`)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        check_positive_ints(self, ("steps", "batch_size", "steps_per_dispatch", "eval_episodes", "eval_envs"))
        check_seed(self)
        check_block_multiples(self, ("steps", "eval_every", "checkpoint_every"), "updates run in fused blocks")
        check_eval_flows(self)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------- fused updates


def batch_key(seed: int | Array, step: int | Array) -> PRNGKeyArray:
    """The key of the batch used by update number `step` (a pure function of the step, so that a
    resumed run draws the same batches)."""
    return jr.fold_in(jr.key(seed), step)


def fused_updates_body(
    agent: Agent,
    data: Transitions | ReplayBuffer,
    seed: int | Array,
    num_steps: int,
    batch_size: int,
) -> tuple[Agent, dict[str, Array]]:
    """The unjitted body of [`fused_updates`][flowsoc.rl.train.fused_updates] (to be traced inside
    other transformations, e.g. `vmap` over a seed axis in `flowsoc.rl.seeds`)."""
    cfg = agent.config
    arrays, static = eqx.partition(agent, eqx.is_array)

    def body(arrays, _):
        current = eqx.combine(arrays, static)
        batch = sample_chunks(data, batch_key(seed, current.step), batch_size, cfg.horizon, cfg.discount)
        new, metrics = current.update(batch)
        return eqx.filter(new, eqx.is_array), metrics

    arrays, metrics = jax.lax.scan(body, arrays, None, length=num_steps)
    return eqx.combine(arrays, static), metrics


@eqx.filter_jit
def fused_updates(
    agent: Agent,
    data: Transitions | ReplayBuffer,
    seed: int | Array,
    num_steps: int,
    batch_size: int,
) -> tuple[Agent, dict[str, Array]]:
    """`num_steps` updates in one `lax.scan`, each on a fresh batch of chunks from `data`; the
    metrics come back stacked, shape `(num_steps,)` each."""
    return fused_updates_body(agent, data, seed, num_steps, batch_size)


# ---------------------------------------------------------------------------------- checkpoints


def run_meta(agent: Agent, config: Any, info: dict) -> dict:
    """Checkpoint metadata; `config` is the loop's config (`TrainConfig` or `OnlineConfig`)."""
    return {
        "agent": type(agent).__name__,
        "agent_config": dataclasses.asdict(agent.config),
        "batch_size": config.batch_size,
        "seed": config.seed,
        "info": info,
    }


def save_agent_checkpoint(directory: str | os.PathLike, agent: Agent, meta: dict) -> pathlib.Path:
    """Write `agent` with `meta` as one checkpoint `directory/ckpt-<step>/` (see `flowsoc._checkpoint`).
    Returns its folder."""
    return save_checkpoint(directory, int(agent.step), agent, meta)


CHECKED_KEYS = ("agent", "agent_config", "batch_size", "seed", "data")
"""What a resumed offline run must share with its checkpoint (`data`: the dataset's size and hash)."""


def read_checkpoint_meta(
    directory: str | os.PathLike, meta: dict | None = None, keys: tuple[str, ...] = CHECKED_KEYS
) -> tuple[dict, int]:
    """The `meta.json` of the newest checkpoint in `directory` and its step. With `meta`, refuse a
    checkpoint whose `keys` differ from `meta`'s, naming each difference with both values (`agent_config`
    field by field). Raises `CheckpointError` for a missing, corrupt or mismatched checkpoint."""
    folder = latest_checkpoint(directory)
    if folder is None:
        raise CheckpointError(f"No checkpoint in {directory} (missing meta.json). Start without --resume.")
    saved = read_meta(folder)
    detail = [] if meta is None else compare_meta(saved, meta, keys)
    if detail:
        raise CheckpointError(
            f"The checkpoint in {folder} was written with different settings: {', '.join(detail)}. "
            "Resume with the same settings or use a new run directory."
        )
    return saved, saved["step"]


def load_agent_checkpoint(
    directory: str | os.PathLike,
    like: Agent,
    meta: dict | None = None,
    keys: tuple[str, ...] = CHECKED_KEYS,
):
    """Restore an agent shaped like `like` from the newest checkpoint in `directory`. With `meta`, refuse
    a checkpoint whose `keys` differ (by default: the agent class, agent configuration, batch size, seed
    and dataset). Returns `(agent, saved_meta)`; raises `CheckpointError` naming the problem."""
    agent, saved, _ = load_checkpoint(directory, like, meta=meta, keys=keys, step_of=lambda a: a.step)
    return agent, saved


# ---------------------------------------------------------------------------------- metrics files


def plot_learning_curve(
    rows: list[dict],
    path: str | os.PathLike,
    *,
    kl_budget: float | None = None,
    title: str = "",
    phase_boundary: int | None = None,
):
    """Success rate (per evaluated flow, and of the online episodes when there are any), path KL
    per action step (with the budget) and λ against training steps, to a PNG at `path`.
    `phase_boundary`: the step where the online phase starts, marked on every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    if train and not evals and all("behaviour_loss" in r and "kl" not in r for r in train):  # BC pre-training
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.plot([r["step"] for r in train], [r["behaviour_loss"] for r in train])
        ax.set(xlabel="pre-training step", ylabel="flow-matching loss", title="BC pre-training", yscale="log")
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    flows = [k[: -len("/success")] for k in (evals[0] if evals else {}) if k.endswith("/success")]
    for flow in flows:
        ax.plot([r["step"] for r in evals], [100 * r[f"{flow}/success"] for r in evals], "o-", label=flow)
    ax.set(xlabel="update step", ylabel="success rate (%)", title="evaluation", ylim=(-3, 103))
    online = [r for r in train if "online/success" in r]
    if online:
        ax.plot(
            [r["step"] for r in online],
            [100 * r["online/success"] for r in online],
            lw=1,
            alpha=0.7,
            label="online episodes",
        )
    if flows or online:
        ax.legend()
    train = [r for r in train if "kl" in r]  # blocks without updates (online warm-up) have no losses
    steps = [r["step"] for r in train]
    ax = axes[1]
    if train:
        ax.plot(steps, [r["kl"] for r in train], label="path KL / H")
    if kl_budget is not None:
        ax.axhline(kl_budget, color="k", ls="--", lw=1, label=f"budget {kl_budget:g}")
    ax.set(xlabel="update step", ylabel="KL per action step", title="KL to the base policy")
    ax.legend()
    ax = axes[2]
    if train:
        ax.plot(steps, [r["lam"] for r in train])
        ax.set_yscale("log")
    ax.set(xlabel="update step", ylabel="λ inside σ", title="trust-region λ")
    if phase_boundary is not None:
        for ax in axes:
            ax.axvline(phase_boundary, color="grey", ls=":", lw=1.2)
        axes[0].annotate(
            " online →", (phase_boundary, 0.97), xycoords=("data", "axes fraction"), va="top", fontsize=8, color="grey"
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    def write(tmp):
        fig.savefig(tmp, dpi=110, format="png")

    atomic_write(path, write)
    plt.close(fig)


# ---------------------------------------------------------------------------------- the loop


def ogbench_evaluator(env_name: str, config: TrainConfig, **env_kwargs) -> Evaluator:
    """Evaluate `config.eval_flows` of an agent in OGBench's `env_name` over
    `config.eval_episodes` episodes (the environments are built once, on first use, with
    `env_kwargs`). Episode seeds and policy keys depend only on `config.seed`, so every
    evaluation starts from the same initial states."""
    from .evaluate import agent_policy, evaluate, make_envs

    envs: list[Any] = []

    def evaluator(agent: AbstractFlowAgent, step: int) -> dict[str, float]:
        if not envs:
            envs.extend(make_envs(env_name, min(config.eval_envs, config.eval_episodes), **env_kwargs))
        out = {}
        for flow in config.eval_flows:
            key = jr.fold_in(jr.key(config.seed + 1), step)
            result = evaluate(agent_policy(agent, flow), envs, config.eval_episodes, key, seed=10_000 * config.seed)
            out.update(result.summary(f"{flow}/"))
        return out

    return evaluator


@dataclasses.dataclass
class TrainResult:
    agent: Agent
    rows: list[dict]
    run_dir: pathlib.Path | None
    buffer: ReplayBuffer | None = None  # the online phase's replay buffer (offline data + online transitions)

    @property
    def evals(self) -> list[dict]:
        return [r for r in self.rows if r["kind"] == "eval"]

    @property
    def train(self) -> list[dict]:
        return [r for r in self.rows if r["kind"] == "train"]


def first_non_finite(metrics: dict[str, np.ndarray]) -> tuple[int, list[str]] | None:
    """The index of the first non-finite value over all `metrics` (arrays over steps) and the metrics that
    have one there; `None` when every value is finite."""
    bad = {k: np.flatnonzero(~np.isfinite(v)) for k, v in metrics.items()}
    bad = {k: v for k, v in bad.items() if v.size}
    if not bad:
        return None
    first = min(int(v[0]) for v in bad.values())
    return first, sorted(k for k, v in bad.items() if int(v[0]) == first)


def finish_block(dispatch: Callable[[], tuple[Any, dict]], step: int, n: int):
    """Run `dispatch()` (a fused block of `n` updates after update `step`, possibly already
    dispatched asynchronously) to completion. Returns `(new_agent, metrics as numpy, problem)`,
    where `problem` describes the first non-finite value (or a NaN check inside the core that
    fired) and is `None` when the block is clean."""
    try:
        new, metrics = dispatch()
        metrics = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
    except eqx.EquinoxRuntimeError as err:  # a check inside the core saw NaN/inf states
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines if "NaN" in line or "infinite" in line), lines[0] if lines else "")
        return None, None, f"values within update steps {step + 1}-{step + n} ({reason})"
    bad = first_non_finite(metrics)
    what = None if bad is None else f"{', '.join(bad[1])} at update step {step + bad[0] + 1}"
    return new, metrics, what


def progress_postfix(row: dict, last_eval: dict | None) -> dict[str, str]:
    """The progress bar's live values: the losses, KL and λ of `row` (the BC loss in pre-training), and the
    success rates of the last evaluation."""
    out = {k: f"{row[k]:.3g}" for k in ("critic_loss", "actor_loss", "kl", "lam") if k in row}
    if not out and "behaviour_loss" in row:  # BC pre-training
        out["bc_loss"] = f"{row['behaviour_loss']:.3g}"
    if last_eval:
        out.update({k.split("/")[0]: f"{100 * v:.0f}%" for k, v in last_eval.items() if k.endswith("/success")})
    return out


class OfflineTrainer(AbstractTrainer):
    """Fused blocks of updates on a fixed dataset, for `flowsoc.drive` (the state is the agent)."""

    identity_keys = CHECKED_KEYS
    resume_flag = "--resume"

    def __init__(self, data: Transitions, config: TrainConfig, meta: dict, evaluator: Evaluator | None, title: str):
        self.data, self.config, self.meta, self.evaluator, self.title = data, config, meta, evaluator, title
        self.seed = jnp.asarray(config.seed, jnp.uint32)  # traced: one compilation serves every seed

    def position(self, agent):
        return int(agent.step)

    def block(self, agent, n):
        step = int(agent.step)
        new, metrics, what = finish_block(
            lambda: fused_updates(agent, self.data, self.seed, n, self.config.batch_size), step, n
        )
        if what is not None:
            return Block(agent, [], what)
        return Block(new, [{"kind": "train", "step": step + n, **{k: float(np.mean(v)) for k, v in metrics.items()}}])

    def evaluate(self, agent, position):
        if self.evaluator is None:
            return []
        return [{"kind": "eval", "step": position, **self.evaluator(agent, position)}]

    def identity(self):
        return self.meta

    def save(self, agent):
        return Saved(agent, {})

    def restore(self, tree, meta, folder, agent):
        return tree

    def step_of(self, agent):
        return agent.step

    def postfix(self, row, last_eval):
        return progress_postfix(row, last_eval)

    def finish(self, rows, directory):
        if directory is not None:
            kl_budget = plotted_kl_budget(self.meta)
            plot_learning_curve(rows, directory / "learning_curve.png", kl_budget=kl_budget, title=self.title)


def check_dataset(data: Any, horizon: int, batch_size: int | None = None, name: str = "data") -> None:
    """Refuse anything but `Transitions` with at least one chunk of `horizon` steps; warn when a batch
    holds more chunks than the dataset has transitions (each batch then repeats chunks)."""
    if not isinstance(data, Transitions):
        raise TypeError(f"{name} must be a flowsoc.rl.buffers.Transitions, got {type(data).__name__}.")
    if data.size < horizon:
        raise ValueError(f"the dataset has {data.size} transitions, fewer than the chunk length {horizon}.")
    if batch_size is not None and batch_size > data.size:
        warnings.warn(
            f"the batch size {batch_size} exceeds the dataset's {data.size} transitions: every batch repeats chunks "
            "(lower --batch-size, or use more episodes).",
            stacklevel=3,
        )


def drive_offline(trainer: AbstractTrainer, state, config: TrainConfig, **kwargs):
    """`flowsoc.drive` with the total, block size, cadences and progress of a `TrainConfig` (the offline and
    multi-seed trainers); `kwargs`: `run_dir`, `resume`, `loggers`."""
    return drive(
        trainer,
        state,
        total=config.steps,
        block_size=config.steps_per_dispatch,
        eval_every=config.eval_every,
        eval_at_start=config.eval_at_start,
        checkpoint_every=config.checkpoint_every,
        progress=config.progress,
        resume_flag="--resume",
        **kwargs,
    )


def plotted_kl_budget(meta: dict) -> float | None:
    """The KL budget a learning curve draws: TRQAM's, from a run's checkpoint metadata (`None` otherwise)."""
    return meta["agent_config"].get("kl_budget") if meta["agent"] == "TRQAM" else None


def train_offline(
    agent: Agent,
    data: Transitions,
    config: TrainConfig,
    *,
    evaluator: Evaluator | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    info: dict | None = None,
    loggers: Sequence[AbstractLogger] = (),
) -> TrainResult:
    """Train `agent` on `data` for `config.steps` updates (counted by `agent.step`), in `flowsoc.drive`.

    Updates run `config.steps_per_dispatch` at a time in one compiled scan; after each block the
    mean metrics are logged and checked (a non-finite value raises `NonFiniteLossError` after
    saving the last good agent). `evaluator(agent, step)` runs every `config.eval_every` steps
    and at the end. With `run_dir`, checkpoints are written every `config.checkpoint_every` steps,
    at the end and on Ctrl-C; `resume=True` continues from `run_dir/checkpoint` exactly, drawing the
    same batches as an uninterrupted run (and refuses a checkpoint of other data or settings). `info` is
    stored in the checkpoint's metadata; `loggers` receive every row (e.g. TensorBoard).
    """
    check_dataset(data, agent.config.horizon, config.batch_size)
    meta = {**run_meta(agent, config, info or {}), "data": dataset_fingerprint(data)}
    trainer = OfflineTrainer(data, config, meta, evaluator, " · ".join(str(v) for v in (info or {}).values()))
    result = drive_offline(trainer, agent, config, run_dir=run_dir, resume=resume, loggers=loggers)
    return TrainResult(agent=result.state, rows=result.rows, run_dir=None if run_dir is None else pathlib.Path(run_dir))


def load_transitions(data: dict[str, np.ndarray], name: str = "", sparse_rewards: bool | None = None) -> Transitions:
    """`Transitions` from a numpy dataset, refusing non-finite values with the field named; `sparse_rewards`
    records whether its rewards were made sparse (the online phase then does the same)."""
    for field in ("observations", "actions", "rewards", "next_observations"):
        if field in data and not np.all(np.isfinite(data[field])):
            rows = np.flatnonzero(~np.all(np.isfinite(np.reshape(data[field], (len(data[field]), -1))), axis=1))
            raise ValueError(
                f"dataset {name!r}: {field} holds NaN or inf in {rows.size} rows (first at row {rows[0]}); "
                "regenerate the dataset or clean it."
            )
    return Transitions.from_numpy(data, name, sparse_rewards=sparse_rewards)


__all__ = [
    "CheckpointError",
    "MetricsLog",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "batch_key",
    "fused_updates",
    "load_agent_checkpoint",
    "load_transitions",
    "ogbench_evaluator",
    "plot_learning_curve",
    "save_agent_checkpoint",
    "train_offline",
]
