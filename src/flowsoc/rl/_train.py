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
from ._buffers import ReplayBuffer, sample_chunks, Transitions
from ._custom_types import Agent, Evaluator
from ._pretrain import dataset_fingerprint
from ._sharded import ShardedDataset


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
    """The unjitted body of [`fused_updates`][flowsoc.rl.fused_updates] (to be traced inside
    other transformations, e.g. `vmap` over a seed axis in [`flowsoc.rl.train_offline_seeds`][])."""
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
        "kl_budget": getattr(agent, "kl_budget", None),  # the budget its temperature holds (TRQAM), else None
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


def success_axis_top(rates: Sequence[float]) -> float:
    """The top of the success axis, in percent: 1.2 times the best rate in `rates` (percent), at least 10 and
    at most 103, so that low rates fill the panel instead of its bottom fifth."""
    return min(103.0, max(10.0, 1.2 * max(rates, default=0.0)))


def plot_learning_curve(
    rows: list[dict],
    path: str | os.PathLike,
    *,
    kl_budget: float | None = None,
    title: str = "",
    phase_boundary: int | None = None,
    agent: str = "",
    caption: str = "",
):
    """Success rate (per evaluated flow, and of the online episodes when there are any), path KL
    per action step (with the budget) and λ against training steps, to a PNG at `path`.
    `phase_boundary`: the step where the online phase starts, marked on every panel; `agent`: the agent's name,
    the legend's label of the fine-tuned policy (the BC flow is "BC flow", as in the progress bar and the
    results table, see `flow_label`); `caption`: a line under the panels saying what was run (`run_caption`).
    The success axis spans the data (0 to 1.2 times the best rate, at least 10%); λ's log axis reads plain
    numbers (0.3, 1, 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

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
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6 if not caption else 3.9))
    ax = axes[0]
    flows = [k[: -len("/success")] for k in (evals[0] if evals else {}) if k.endswith("/success")]
    rates = []
    for flow in flows:
        rates += [100 * r[f"{flow}/success"] for r in evals]
        ax.plot(
            [r["step"] for r in evals],
            [100 * r[f"{flow}/success"] for r in evals],
            "o-",
            label=flow_label(flow, agent),
        )
    online = [r for r in train if "online/success" in r]
    if online:
        rates += [100 * r["online/success"] for r in online]
        ax.plot(
            [r["step"] for r in online],
            [100 * r["online/success"] for r in online],
            lw=1,
            alpha=0.7,
            label="online episodes",
        )
    top = success_axis_top(rates)
    ax.set(xlabel="update step", ylabel="success rate (%)", title="evaluation", ylim=(-0.03 * top, top))
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
        lams = [r["lam"] for r in train]
        ax.plot(steps, lams)
        ax.set_yscale("log")
        plain = ticker.FuncFormatter(lambda v, _: f"{v:.3g}")  # 0.3, 1, 3 rather than 3×10⁻¹, 10⁰, 3×10⁰
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        decades = np.log10(max(lams) / min(lams)) if min(lams) > 0 else 3.0
        subs = (1.0, 2.0, 5.0) if decades < 1.5 else (1.0, 3.0) if decades < 3 else (1.0,)  # a few labels
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs, numticks=12))
    ax.set(xlabel="update step", ylabel="λ (larger = closer to the BC flow)", title="trust-region weight λ")
    if phase_boundary is not None:
        for ax in axes:
            ax.axvline(phase_boundary, color="grey", ls=":", lw=1.2)
        axes[0].annotate(
            " online →", (phase_boundary, 0.97), xycoords=("data", "axes fraction"), va="top", fontsize=8, color="grey"
        )
    if title:
        fig.suptitle(title)
    if caption:
        fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=9, color="0.2")
        fig.tight_layout(rect=(0, 0.05, 1, 1))
    else:
        fig.tight_layout()

    def write(tmp):
        fig.savefig(tmp, dpi=110, format="png")

    atomic_write(path, write)
    plt.close(fig)


# ---------------------------------------------------------------------------------- the loop


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


def flow_label(flow: str, agent: str = "") -> str:
    """The one name of an evaluated flow in the progress bar, the learning-curve figure and the results tables:
    the agent's name (`TRQAM`, `QAM`, `BAM`; "policy" when unknown) for the fine-tuned policy `"policy"`,
    `BC flow` for the behaviour flow `"behaviour"`, `BC flow (EMA)` for its EMA `"base"`."""
    return {"policy": agent.upper() or "policy", "behaviour": "BC flow", "base": "BC flow (EMA)"}.get(flow, flow)


def progress_postfix(row: dict, last_eval: dict | None, agent: str = "") -> dict[str, str]:
    """The progress bar's live values: the losses, KL and λ of `row` (the BC loss in pre-training), and the
    success rates of the last evaluation, per flow under its `flow_label` (`TRQAM=12%, BC flow=5%`)."""
    out = {k: f"{row[k]:.3g}" for k in ("critic_loss", "actor_loss", "kl", "lam") if k in row}
    if not out and "behaviour_loss" in row:  # BC pre-training
        out["bc_loss"] = f"{row['behaviour_loss']:.3g}"
    if last_eval:
        rates = {k[: -len("/success")]: v for k, v in last_eval.items() if k.endswith("/success")}
        out.update({flow_label(flow, agent): f"{100 * v:.0f}%" for flow, v in rates.items()})
    return out


def run_caption(meta: dict, steps: int, kl_budget: float | None = None, extra: str = "") -> str:
    """The figure's caption line: what was run, from a run's checkpoint metadata (`run_meta`): the agent, the
    dataset and preset (from `info`), the update steps, the seed, TRQAM's KL budget, and `extra`."""
    info = meta.get("info") or {}
    parts = [meta["agent"] + (f" on {info['env']}" if "env" in info else "")]
    if "preset" in info:
        parts.append(f"{info['preset']} preset")
    if "pretrain" in info:
        parts.append(str(info["pretrain"]))
    parts.append(f"{steps:,} update steps")
    seeds = meta.get("seeds") or [meta.get("seed")]
    parts.append(f"seeds {seeds[0]}-{seeds[-1]} (mean)" if len(seeds) > 1 else f"seed {seeds[0]}")
    if kl_budget is not None:
        parts.append(f"KL budget {kl_budget:g} per action step")
    if extra:
        parts.append(extra)
    return " · ".join(parts)


class OfflineTrainer(AbstractTrainer):
    """Fused blocks of updates on a fixed dataset, for `flowsoc.drive` (the state is the agent)."""

    identity_keys = CHECKED_KEYS
    resume_flag = "--resume"

    def __init__(
        self,
        data: Transitions | ShardedDataset,
        config: TrainConfig,
        meta: dict,
        evaluator: Evaluator | None,
        title: str,
    ):
        self.data, self.config, self.meta, self.evaluator, self.title = data, config, meta, evaluator, title
        self.seed = jnp.asarray(config.seed, jnp.uint32)  # traced: one compilation serves every seed

    def position(self, agent):
        return int(agent.step)

    def block(self, agent, n):
        step = int(agent.step)
        data = block_data(self.data, step, n)
        new, metrics, what = finish_block(
            lambda: fused_updates(agent, data, self.seed, n, self.config.batch_size), step, n
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
        return progress_postfix(row, last_eval, self.meta["agent"])

    def finish(self, rows, directory):
        if directory is not None:
            kl_budget = plotted_kl_budget(self.meta)
            plot_learning_curve(
                rows,
                directory / "learning_curve.png",
                kl_budget=kl_budget,
                agent=self.meta["agent"],
                caption=run_caption(self.meta, self.config.steps, kl_budget),
            )


def block_data(data: Transitions | ShardedDataset, step: int, n: int):
    """What updates `step ... step + n - 1` sample from: `data` itself, or the current shard of a
    `ShardedDataset` (read in the background while the previous one trained)."""
    return data.data_at(step, n) if isinstance(data, ShardedDataset) else data


def check_dataset(
    data: Any, horizon: int, batch_size: int | None = None, name: str = "data", steps_per_dispatch: int | None = None
) -> None:
    """Refuse anything but `Transitions` or a `ShardedDataset` with at least one chunk of `horizon` steps (in
    every shard, whose interval must hold whole blocks of `steps_per_dispatch`); warn when a batch holds more
    chunks than the dataset has transitions (each batch then repeats chunks)."""
    if isinstance(data, ShardedDataset):
        small = [(name, n) for name, n in zip(data.names, data.sizes) if n < horizon]
        if small:
            raise ValueError(
                f"shard {small[0][0]} has {small[0][1]} transitions, fewer than the chunk length {horizon}."
            )
        if steps_per_dispatch is not None and data.interval % steps_per_dispatch:
            raise ValueError(
                f"TrainConfig: steps_per_dispatch={steps_per_dispatch} must divide the shard interval {data.interval} "
                "(a fused block of updates samples from one shard); change one of them."
            )
        return
    if not isinstance(data, Transitions):
        raise TypeError(f"{name} must be a flowsoc.rl.Transitions, got {type(data).__name__}.")
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
    """The KL budget a learning curve draws: the one the agent's temperature holds (TRQAM's), from a run's
    checkpoint metadata; `None` when it holds none."""
    if "kl_budget" in meta:
        return meta["kl_budget"]
    if meta["agent"] != "TRQAM":  # metadata written before the budget was recorded
        return None
    config = meta["agent_config"]
    return (config.get("trust_region") or {}).get("kl_budget", config.get("kl_budget"))  # or the earlier flat layout


def train_offline(
    agent: Agent,
    data: Transitions | ShardedDataset,
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

    `data` may be a [`flowsoc.rl.ShardedDataset`][]: update `s` then samples from its shard
    `(s // data.interval) % shards`, a pure function of the step (a resumed run continues on the same shard).
    """
    check_dataset(data, agent.config.horizon, config.batch_size, steps_per_dispatch=config.steps_per_dispatch)
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
    "plot_learning_curve",
    "save_agent_checkpoint",
    "train_offline",
]
