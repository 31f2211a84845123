r"""Many seeds in one compiled program, sharded over devices with JAX's own SPMD machinery.

A *stacked* agent is an ordinary agent whose array leaves carry a leading seed axis of length `S`
(`stack_agents`, `create_agents`); its static fields (class, `AgentConfig`, action width) are shared.
[`fused_updates_seeds`][flowsoc.rl.fused_updates_seeds] maps the training loop's fused block
(the body of [`flowsoc.rl.fused_updates`][]) over that axis with `vmap`: seed $i$ draws its batches with
`batch_key(seeds[i], step)` and its own RNG key, exactly as a single-seed run of seed $i$ does, while
the dataset enters the program once, unbatched (one copy, gathered from by every seed).

With several devices, `shard_seeds` places the seed axis on a one-axis `Mesh(devices, ("seeds",))`
(`NamedSharding(mesh, P("seeds"))`) and `replicate` puts the dataset on every device
(`NamedSharding(mesh, P())`); `jit` then partitions the program along the seed axis, so each device
trains `S / devices` seeds on its own copy of the data, with no communication between seeds. Across
hosts the same code runs after `jax.distributed.initialize()` (one process per host, the mesh over
`jax.devices()`, all hosts running the same program).

[`train_offline_seeds`][flowsoc.rl.train_offline_seeds] is `train_offline` for a stacked agent:
one metrics row per seed per block (field `"seed"`), evaluation of each seed's agent, checkpoints of
the whole stack with the seed list in `meta.json`, exact resume, and a NaN stop naming the seed.
`aggregate` gives the mean and the 95% Student-t confidence half-width across seeds.
"""

import dataclasses
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array, ArrayLike, PyTree, UInt

from .._checkpoint import checkpoint_name, load_checkpoint, save_checkpoint
from .._driver import AbstractTrainer, Block, Saved
from .._logging import AbstractLogger
from ._agents import AbstractFlowAgent
from ._buffers import Transitions
from ._config import AgentConfig
from ._custom_types import SeedEvaluator
from ._pretrain import dataset_fingerprint
from ._sharded import ShardedDataset
from ._train import (
    block_data,
    check_dataset,
    drive_offline,
    finish_block,
    first_non_finite,
    fused_updates,
    fused_updates_body,
    plot_learning_curve,
    plotted_kl_budget,
    progress_postfix,
    run_caption,
    TrainConfig,
    TrainResult,
)


SEED_AXIS = "seeds"


# ---------------------------------------------------------------------------------- stacking


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _flat(d: dict, prefix: str = "") -> dict:
    """A nested dictionary flattened to dotted keys (`trust_region.kl_budget`)."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def stack_agents(agents: Sequence[AbstractFlowAgent]) -> AbstractFlowAgent:
    """One agent whose array leaves are those of `agents` stacked along a new leading seed axis.
    All agents must share class, `config`, action width and array shapes."""
    agents = list(agents)
    if not agents:
        raise ValueError("stack_agents: need at least one agent.")
    first = agents[0]
    first_arrays, static = eqx.partition(first, eqx.is_array)
    shapes = [(x.shape, x.dtype) for x in jax.tree.leaves(first_arrays)]
    for i, agent in enumerate(agents[1:], start=1):
        if type(agent) is not type(first):
            raise ValueError(f"stack_agents: agent {i} is a {type(agent).__name__}, agent 0 a {type(first).__name__}.")
        if agent.config != first.config:
            a, b = _flat(dataclasses.asdict(first.config)), _flat(dataclasses.asdict(agent.config))
            diff = ", ".join(f"{k} ({a[k]!r} vs {b[k]!r})" for k in a if a[k] != b[k])
            raise ValueError(f"stack_agents: agent {i} has another AgentConfig than agent 0: {diff}.")
        arrays, other_static = eqx.partition(agent, eqx.is_array)
        same = (
            jax.tree.structure(arrays) == jax.tree.structure(first_arrays)
            and [(x.shape, x.dtype) for x in jax.tree.leaves(arrays)] == shapes
        )
        if not same or agent.action_dim != first.action_dim:
            raise ValueError(
                f"stack_agents: agent {i} has other array shapes than agent 0 (another observation or action "
                "width?); all seeds must be built for the same task."
            )
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[eqx.filter(a, eqx.is_array) for a in agents])
    return eqx.combine(stacked, static)


def num_seeds(agents: AbstractFlowAgent) -> int:
    """The length of a stacked agent's seed axis."""
    if agents.step.ndim != 1:
        raise ValueError(f"expected a stacked agent (step of shape (seeds,)), got step of shape {agents.step.shape}.")
    return int(agents.step.shape[0])


def unstack_agent(agents: AbstractFlowAgent, i: int) -> AbstractFlowAgent:
    """Seed `i`'s agent (index `i` of the seed axis) of a stacked agent."""
    s = num_seeds(agents)
    if not -s <= i < s:
        raise IndexError(f"unstack_agent: seed index {i} out of range for {s} seeds.")
    arrays, static = eqx.partition(agents, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda x: x[i], arrays), static)


def create_agents(
    cls: type[AbstractFlowAgent],
    seeds: Sequence[int],
    obs_dim: int,
    action_dim: int,
    config: AgentConfig,
    *,
    pretrained=None,
) -> AbstractFlowAgent:
    """The stack of `cls.create(jax.random.key(seed), obs_dim, action_dim, config, pretrained=pretrained)` over
    `seeds`: seed `i`'s agent equals the one a single-seed run with that seed builds (every seed starts from
    the same pre-trained flow, as the official runs share one)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("create_agents: need at least one seed.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"create_agents: seeds must be distinct, got {seeds}.")
    return stack_agents([cls.create(jr.key(s), obs_dim, action_dim, config, pretrained=pretrained) for s in seeds])


# ---------------------------------------------------------------------------------- fused updates


@eqx.filter_jit
def fused_updates_seeds(
    agents: AbstractFlowAgent,
    data: Transitions,
    seeds: UInt[Array, " seeds"],
    num_steps: int,
    batch_size: int,
) -> tuple[AbstractFlowAgent, dict[str, Array]]:
    """`fused_updates` for every seed of a stacked agent in one program: seed `i` runs `num_steps`
    updates on batches from `batch_key(seeds[i], step)`. `data` is not mapped over (one copy serves
    all seeds). Returns the stacked agent and metrics of shape `(seeds, num_steps)`.

    The arrays' shardings decide the placement: a seed axis sharded over a mesh (`shard_seeds`)
    with the data replicated (`replicate`) trains each device's seeds on that device."""

    def one_seed(agent, seed):
        return fused_updates_body(agent, data, seed, num_steps, batch_size)

    return eqx.filter_vmap(one_seed)(agents, seeds)


# ---------------------------------------------------------------------------------- devices


def seed_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named `"seeds"` over `devices` (default: `jax.devices()`, every device of every
    process after `jax.distributed.initialize()`)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("seed_mesh: no devices.")
    return Mesh(np.asarray(devices), (SEED_AXIS,))


def _place(x, sharding: NamedSharding):
    """`x` (the same value on every process) as a global array with `sharding`; each process fills
    only the shards of its own devices, so this works across hosts too."""
    if _is_key(x):
        return jr.wrap_key_data(_place(jr.key_data(x), sharding), impl=jr.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_seeds(tree: PyTree, mesh: Mesh) -> PyTree:
    """Shard the leading (seed) axis of every array in `tree` (a stacked agent, a seed array) over
    `mesh`'s `"seeds"` axis. The number of seeds must be a multiple of the number of devices."""
    if SEED_AXIS not in mesh.axis_names:
        raise ValueError(f"shard_seeds: the mesh needs an axis named {SEED_AXIS!r}, it has {mesh.axis_names}.")
    devices = mesh.shape[SEED_AXIS]
    arrays, static = eqx.partition(tree, eqx.is_array)
    sizes = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(arrays)}
    if None in sizes or len(sizes) > 1:
        raise ValueError(f"shard_seeds: every array needs the same leading seed axis, got lengths {sizes}.")
    (s,) = sizes
    if s % devices:
        raise ValueError(
            f"shard_seeds: {s} seeds cannot be split evenly over {devices} devices; use a multiple of {devices} "
            f"seeds (e.g. {devices * math.ceil(s / devices)}) or a mesh over fewer devices."
        )
    sharding = NamedSharding(mesh, P(SEED_AXIS))
    return eqx.combine(jax.tree.map(lambda x: _place(x, sharding), arrays), static)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every array of `tree` (the dataset) replicated on each device of `mesh`: one copy per device,
    shared by all the seeds that device trains."""
    sharding = NamedSharding(mesh, P())
    arrays, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda x: _place(x, sharding), arrays), static)


def to_host(tree: PyTree) -> PyTree:
    """`tree` with arrays that span other processes' devices gathered to this one (a no-op on one host)."""
    arrays, static = eqx.partition(tree, eqx.is_array)
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(arrays)):
        return tree
    from jax.experimental import multihost_utils

    def gather(x):
        if _is_key(x):
            return jr.wrap_key_data(gather(jr.key_data(x)), impl=jr.key_impl(x))
        return jnp.asarray(multihost_utils.process_allgather(x, tiled=True))

    return eqx.combine(jax.tree.map(gather, arrays), static)


# ---------------------------------------------------------------------------------- statistics

# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30
_T975 = tuple(
    float(t)
    for t in (
        "12.706 4.303 3.182 2.776 2.571 2.447 2.365 2.306 2.262 2.228 2.201 2.179 2.160 2.145 2.131 "
        "2.120 2.110 2.101 2.093 2.086 2.080 2.074 2.069 2.064 2.060 2.056 2.052 2.048 2.045 2.042"
    ).split()
)
_T975_LARGE = ((40, 2.021), (60, 2.000), (120, 1.980))


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (table values; 1.96 beyond 120)."""
    if df < 1:
        raise ValueError(f"t_quantile_975: df must be >= 1, got {df}.")
    if df <= len(_T975):
        return _T975[df - 1]
    return next((t for limit, t in _T975_LARGE if df <= limit), 1.960)


def aggregate(values: ArrayLike | Sequence[float]) -> tuple[float, float]:
    r"""Mean and 95% confidence half-width $t_{0.975,\,n-1}\, s/\sqrt n$ ($s$ the sample standard
    deviation) of `values` across seeds. With one value the half-width is NaN."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("aggregate: no values.")
    mean = float(np.mean(x))
    if x.size == 1:
        return mean, math.nan
    return mean, t_quantile_975(x.size - 1) * float(np.std(x, ddof=1)) / math.sqrt(x.size)


def mean_rows(rows: list[dict]) -> list[dict]:
    """Rows averaged over seeds: one row per `(kind, step)` holding the mean of each numeric field
    (the `"seed"` field dropped), in the order the steps first appear."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["kind"], row["step"]), []).append(row)
    out = []
    for (kind, step), group in groups.items():
        keys = [k for k in dict.fromkeys(k for r in group for k in r) if k not in ("kind", "step", "seed")]
        out.append({"kind": kind, "step": step, **{k: float(np.mean([r[k] for r in group if k in r])) for k in keys}})
    return out


def final_summary(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per metric of the last evaluation: the per-seed values, their mean and 95% CI half-width."""
    evals = [r for r in rows if r["kind"] == "eval"]
    if not evals:
        return {}
    last = max(r["step"] for r in evals)
    final = sorted((r for r in evals if r["step"] == last), key=lambda r: r["seed"])
    out = {}
    for key in (k for k in final[0] if "/" in k):
        values = [r[key] for r in final]
        mean, ci = aggregate(values)
        out[key] = {"step": last, "seeds": [r["seed"] for r in final], "values": values, "mean": mean, "ci95": ci}
    return out


# ---------------------------------------------------------------------------------- evaluation


# ---------------------------------------------------------------------------------- checkpoints


def _seeds_meta(agents: AbstractFlowAgent, config: TrainConfig, seeds: list[int], info: dict) -> dict:
    return {
        "agent": type(agents).__name__,
        "agent_config": dataclasses.asdict(agents.config),
        "kl_budget": getattr(agents, "kl_budget", None),
        "batch_size": config.batch_size,
        "seeds": seeds,
        "info": info,
    }


SEEDS_KEYS = ("agent", "agent_config", "batch_size", "seeds", "data")
"""What a resumed multi-seed run must share with its checkpoint."""


def save_seeds_checkpoint(directory: str | os.PathLike, agents: AbstractFlowAgent, meta: dict) -> pathlib.Path:
    """Write a stacked agent with `meta` as one checkpoint `directory/ckpt-<step>/`; only process 0 writes.
    Returns the folder."""
    agents = to_host(agents)
    folder = pathlib.Path(directory) / checkpoint_name(int(agents.step[0]))
    if jax.process_index() == 0:
        folder = save_checkpoint(directory, int(agents.step[0]), agents, meta)
    return folder


def load_seeds_checkpoint(directory: str | os.PathLike, like: AbstractFlowAgent, meta: dict | None = None):
    """Restore a stacked agent shaped like `like` from the newest checkpoint in `directory`. With `meta`,
    refuse a checkpoint written with another agent class, agent configuration, batch size, seed list or
    dataset. Returns `(agents, saved_meta)`; raises `CheckpointError` naming the problem."""
    agents, saved, _ = load_checkpoint(directory, to_host(like), meta=meta, keys=SEEDS_KEYS, step_of=lambda a: a.step)
    return agents, saved


# ---------------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class SeedsResult(TrainResult):
    """`TrainResult` of a multi-seed run: `agent` is the stacked agent, rows carry a `"seed"` field."""

    seeds: tuple[int, ...] = ()

    def agent_of(self, seed: int) -> AbstractFlowAgent:
        """The trained agent of `seed`."""
        return unstack_agent(to_host(self.agent), self.seeds.index(seed))

    def summary(self) -> dict[str, dict[str, Any]]:
        """`final_summary` of the rows: per metric of the last evaluation, values, mean and CI."""
        return final_summary(self.rows)


def _uncommitted(tree: PyTree) -> PyTree:
    """A copy of `tree` on the default device, free to meet arrays from anywhere in one `jit`."""

    def copy(x):
        if _is_key(x):
            return jr.wrap_key_data(copy(jr.key_data(x)), impl=jr.key_impl(x))
        return jnp.asarray(np.asarray(x))

    arrays, static = eqx.partition(to_host(tree), eqx.is_array)
    return eqx.combine(jax.tree.map(copy, arrays), static)


def _locate(agents, data, seeds: list[int], metrics, step: int, n: int, batch_size: int) -> str:
    """Which seeds went non-finite in the block after `step` (from the metrics, or, when a check
    inside the core stopped the block, by running each seed's block alone on the unsharded data)."""
    found = []
    host = _uncommitted(agents)
    for i, s in enumerate(seeds):
        if metrics is not None:
            bad = first_non_finite({k: v[i] for k, v in metrics.items()})
            if bad is not None:
                found.append(f"{', '.join(bad[1])} at update step {step + bad[0] + 1} in seed {s}")
        else:
            seed = jnp.asarray(s, jnp.uint32)
            agent = unstack_agent(host, i)
            _, _, what = finish_block(lambda: fused_updates(agent, data, seed, n, batch_size), step, n)
            if what is not None:
                found.append(f"{what} in seed {s}")
    return "; ".join(found) or f"values within update steps {step + 1}-{step + n} (seed not identified)"


class SeedsTrainer(AbstractTrainer):
    """Fused blocks of updates for every seed of a stacked agent, for `flowsoc.drive`."""

    identity_keys = SEEDS_KEYS

    def __init__(self, data, local_data, config, seeds, seed_array, meta, evaluator, mesh, title):
        self.data, self.local_data, self.config, self.seeds = data, local_data, config, seeds
        self.seed_array, self.meta, self.evaluator, self.mesh, self.title = seed_array, meta, evaluator, mesh, title
        self.writes = jax.process_index() == 0

    def position(self, agents):
        return int(np.asarray(to_host(agents.step))[0])

    def block(self, agents, n):
        step = self.position(agents)

        def dispatch():
            data = block_data(self.data, step, n)
            new, metrics = fused_updates_seeds(agents, data, self.seed_array, n, self.config.batch_size)
            return new, to_host(metrics)

        new, metrics, what = finish_block(dispatch, step, n)
        if what is not None:
            self._metrics = metrics
            return Block(agents, [], what)
        rows = [
            {"kind": "train", "step": step + n, "seed": seed, **{k: float(np.mean(v[i])) for k, v in metrics.items()}}
            for i, seed in enumerate(self.seeds)
        ]
        return Block(new, rows)

    def locate(self, agents, n, problem):
        step = self.position(agents)
        data = block_data(self.local_data, step, n)
        return _locate(agents, data, self.seeds, self._metrics, step, n, self.config.batch_size)

    def evaluate(self, agents, position):
        if self.evaluator is None:
            return []
        host = to_host(agents)
        return [
            {"kind": "eval", "step": position, "seed": seed, **self.evaluator(unstack_agent(host, i), position, seed)}
            for i, seed in enumerate(self.seeds)
        ]

    def identity(self):
        return self.meta

    def save(self, agents):
        return Saved(to_host(agents), {})

    def restore(self, tree, meta, folder, agents):
        return tree if self.mesh is None else shard_seeds(tree, self.mesh)

    def step_of(self, agents):
        return agents.step

    def postfix(self, row, last_eval):
        postfix = progress_postfix({k: row[k] for k in ("kl", "lam") if k in row}, last_eval, self.meta["agent"])
        return postfix  # KL and λ of the first seed; success rates: the mean over seeds (`TRQAM=12%, BC flow=5%`)

    def finish(self, rows, directory):
        if directory is not None:
            kl_budget = plotted_kl_budget(self.meta)
            plot_learning_curve(
                mean_rows(rows),
                directory / "learning_curve.png",
                kl_budget=kl_budget,
                agent=self.meta["agent"],
                caption=run_caption(self.meta, self.config.steps, kl_budget),
            )


def train_offline_seeds(
    agents: AbstractFlowAgent,
    data: Transitions,
    config: TrainConfig,
    seeds: Sequence[int],
    *,
    evaluator: SeedEvaluator | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    info: dict | None = None,
    mesh: Mesh | None = None,
    loggers: Sequence[AbstractLogger] = (),
) -> SeedsResult:
    """Train the stacked `agents` (one per entry of `seeds`, e.g. from `create_agents`) on `data` for
    `config.steps` updates each, all seeds in one compiled program per block, in `flowsoc.drive`.

    As `train_offline`, seed by seed: seed `s` draws the batches of a single-seed run with
    `TrainConfig(seed=s)` (`config.seed` is not used), so its agent equals that run's. After each block
    one row per seed is logged (`"seed"` field); `evaluator(agent, step, seed)` runs for each seed
    every `config.eval_every` steps and at the end; a non-finite value stops the run naming the seed,
    after saving the last good stack. With `run_dir`, the stack is checkpointed every
    `config.checkpoint_every` steps, at the end and on Ctrl-C, `resume=True` continues exactly, and
    `learning_curve.png` shows the mean over seeds. With `mesh` (`seed_mesh()`), the seed axis is
    sharded over its devices and the dataset replicated on each.
    """
    check_dataset(data, agents.config.horizon, config.batch_size, steps_per_dispatch=config.steps_per_dispatch)
    if mesh is not None and isinstance(data, ShardedDataset):
        raise ValueError(
            "train_offline_seeds: a ShardedDataset trains on one device (its shards are read onto the default "
            "device); leave mesh=None, or load the data as Transitions."
        )
    seeds = [int(s) for s in seeds]
    if len(seeds) != num_seeds(agents) or len(set(seeds)) != len(seeds):
        raise ValueError(
            f"train_offline_seeds: need one distinct seed per stacked agent ({num_seeds(agents)}), got {seeds}."
        )
    if not resume and not bool(jnp.all(to_host(agents).step == agents.step[0])):
        raise ValueError("train_offline_seeds: the stacked agents are at different steps.")
    meta = {**_seeds_meta(agents, config, seeds, info or {}), "data": dataset_fingerprint(data)}
    seed_array = jnp.asarray(seeds, jnp.uint32)
    local_data = data
    if mesh is not None:
        agents, seed_array, data = shard_seeds(agents, mesh), shard_seeds(seed_array, mesh), replicate(data, mesh)
    title = " · ".join([*(str(v) for v in (info or {}).values()), f"mean over {len(seeds)} seeds"])
    trainer = SeedsTrainer(data, local_data, config, seeds, seed_array, meta, evaluator, mesh, title)
    result = drive_offline(trainer, agents, config, run_dir=run_dir, resume=resume, loggers=loggers)
    directory = None if run_dir is None else pathlib.Path(run_dir)
    return SeedsResult(agent=result.state, rows=result.rows, run_dir=directory, seeds=tuple(seeds))


__all__ = [
    "SeedEvaluator",
    "SeedsResult",
    "SeedsTrainer",
    "aggregate",
    "create_agents",
    "final_summary",
    "fused_updates_seeds",
    "load_seeds_checkpoint",
    "mean_rows",
    "num_seeds",
    "replicate",
    "save_seeds_checkpoint",
    "seed_mesh",
    "shard_seeds",
    "stack_agents",
    "t_quantile_975",
    "to_host",
    "train_offline_seeds",
    "unstack_agent",
]
