r"""BC pre-training of the behaviour flow, the first stage of the TRQAM paper's pipeline.

The official TRQAM runs first train the behaviour flow alone by flow matching on the data's action
chunks (`--bc_only=True`, 300K steps: no critic, no adjoint matching, no dual step), then load that flow
into the behaviour flow, its EMA (the SOC base) and the policy flow, so that fine-tuning starts at
policy = base and a path KL of 0, with the critic and the optimiser fresh. One pre-trained flow per
dataset is shared by every agent and seed.

Here the stage is [`BCPretrainer`][flowsoc.rl.BCPretrainer], an agent whose update is that
flow-matching step, trained by the offline loop ([`flowsoc.rl.train_offline`][]) so that it has the
same progress bar, metrics files, checkpoints and exact resume;
[`pretrain_behaviour`][flowsoc.rl.pretrain_behaviour] caches the result in a directory keyed by
the dataset, the flow's shape, the steps and the seed, and reuses it (or refuses it, naming what differs).
"""

import dataclasses
import hashlib
import json
import os
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._checkpoint import CheckpointError
from .._losses import flow_matching_loss
from ._buffers import ChunkBatch, Transitions
from ._config import AgentConfig
from ._networks import VelocityMLP
from ._sharded import ShardedDataset


def behaviour_flow_loss(
    flow: VelocityMLP, batch: ChunkBatch, key: PRNGKeyArray
) -> tuple[Float[Array, ""], dict[str, Array]]:
    r"""Flow matching of a behaviour flow on the data's chunks, as the official codes weigh it:
    $\mathrm{mean}_b\big[\mathrm{valid}_b \cdot \mathrm{mean}_d (v(t_b, x_{t_b}; s_b) - (a_b - x_{0,b}))_d^2\big]$,
    $x_t = (1-t)x_0 + t a$, $x_0 \sim \mathcal N(0, I)$, $t \sim \mathcal U[0, 1]$ (chunks that cross an episode
    end have `valid = 0`)."""
    actions = batch.actions.reshape(batch.actions.shape[0], -1)
    k_noise, k_time = jr.split(key)
    x0 = jr.normal(k_noise, actions.shape, actions.dtype)
    t = jr.uniform(k_time, actions.shape[:1], actions.dtype)
    per_sample = jax.vmap(lambda a, b, s, o: flow_matching_loss(flow, a, b, s, args=o))(
        x0, actions, t, batch.observations
    )
    loss = jnp.mean(batch.valid[:, -1] * per_sample / actions.shape[-1])
    return loss, {"behaviour_loss": loss}


@dataclasses.dataclass(frozen=True)
class BCConfig:
    """What determines a pre-trained behaviour flow: the chunk length, the flow's network and its optimiser
    (the same Adam and global-norm clip as the agents'). Build it from an agent's configuration with
    [`BCConfig.of`][flowsoc.rl.BCConfig.of], so that the flow fits that agent."""

    horizon: int
    actor_hidden: tuple[int, ...]
    actor_layer_norm: bool
    learning_rate: float
    grad_clip: float | None

    @classmethod
    def of(cls, config: AgentConfig) -> "BCConfig":
        return cls(
            horizon=config.horizon,
            actor_hidden=tuple(int(h) for h in config.actor_hidden),
            actor_layer_norm=bool(config.actor_layer_norm),
            learning_rate=float(config.learning_rate),
            grad_clip=config.grad_clip,
        )

    @property
    def discount(self) -> float:
        """Unused (flow matching reads no rewards); the chunk sampler asks for one."""
        return 1.0


def clipped_adam(learning_rate: float, grad_clip: float | None) -> optax.GradientTransformation:
    """Adam after a global-norm clip of the gradients (no clip for `grad_clip=None`): the agents' optimiser."""
    adam = optax.adam(learning_rate)
    return adam if grad_clip is None else optax.chain(optax.clip_by_global_norm(grad_clip), adam)


def _optimizer(config: BCConfig) -> optax.GradientTransformation:
    return clipped_adam(config.learning_rate, config.grad_clip)


class BCPretrainer(eqx.Module):
    """The BC pre-training stage as an agent: `update(batch)` is one Adam step of
    [`behaviour_flow_loss`][flowsoc.rl.behaviour_flow_loss] on the flow (global-norm clip as the
    agents'), so that [`flowsoc.rl.train_offline`][] trains it. Pure: `update` returns a new one."""

    flow: VelocityMLP
    opt_state: PyTree
    key: PRNGKeyArray
    step: Int[Array, ""]
    config: BCConfig = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)

    @classmethod
    def create(cls, key: PRNGKeyArray, obs_dim: int, action_dim: int, config: BCConfig) -> "BCPretrainer":
        """A fresh behaviour flow for observations of width `obs_dim` and chunks of `config.horizon` actions
        of width `action_dim`."""
        k_flow, k_loss = jr.split(key)
        flow = VelocityMLP(
            obs_dim,
            config.horizon * int(action_dim),
            config.actor_hidden,
            layer_norm=config.actor_layer_norm,
            key=k_flow,
        )
        opt_state = _optimizer(config).init(eqx.filter(flow, eqx.is_inexact_array))
        return cls(flow, opt_state, k_loss, jnp.zeros((), jnp.int32), config, int(action_dim))

    def update(self, batch: ChunkBatch) -> tuple["BCPretrainer", dict[str, Array]]:
        key, sub = jr.split(self.key)
        params, static = eqx.partition(self.flow, eqx.is_inexact_array)
        (_, metrics), grads = jax.value_and_grad(
            lambda p: behaviour_flow_loss(eqx.combine(p, static), batch, sub), has_aux=True
        )(params)
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes a Python float and an int32 count
            updates, opt_state = _optimizer(self.config).update(grads, self.opt_state, params)
        flow = eqx.apply_updates(self.flow, updates)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
        new = eqx.tree_at(lambda a: (a.flow, a.opt_state, a.key, a.step), self, (flow, opt_state, key, self.step + 1))
        return new, metrics


def dataset_fingerprint(data: Transitions | ShardedDataset) -> dict:
    """The dataset's size and a SHA-256 of its observations and actions: what a BC checkpoint was trained on (a
    `ShardedDataset`'s own `fingerprint()`: its files' names, sizes and checksums)."""
    if isinstance(data, ShardedDataset):
        return data.fingerprint()
    digest = hashlib.sha256()
    for array in (data.observations, data.actions):
        digest.update(np.ascontiguousarray(np.asarray(array)).tobytes())
    return {"transitions": int(data.size), "sha256": digest.hexdigest()[:16]}


def bc_checkpoint_name(env: str, config: BCConfig, steps: int, batch_size: int, seed: int) -> str:
    """The cache directory name of a pre-trained flow: dataset, chunk length, network, steps, batch, seed."""
    hidden = "x".join(str(h) for h in config.actor_hidden) + ("-ln" if config.actor_layer_norm else "")
    return f"{env}-h{config.horizon}-{hidden}-{steps}steps-b{batch_size}-seed{seed}"


def pretrain_behaviour(
    data: Transitions,
    config: BCConfig,
    train_config,
    directory: str | os.PathLike,
) -> VelocityMLP:
    """The behaviour flow pre-trained on `data` for `train_config.steps` steps, from `directory`.

    A complete checkpoint in `directory` is reused (after checking that it was trained on the same
    dataset with the same flow, batch size and seed: a mismatch raises `CheckpointError` naming both); an
    incomplete one (a stopped pre-training) is resumed exactly; otherwise training starts there. The flow's
    initialisation and batches come from `train_config.seed`.
    """
    from .._checkpoint import latest_checkpoint
    from ._train import load_agent_checkpoint, read_checkpoint_meta, train_offline

    directory = pathlib.Path(directory)
    from ._sharded import data_widths

    obs_dim, action_dim = data_widths(data)
    trainer = BCPretrainer.create(jr.key(train_config.seed), obs_dim, action_dim, config)
    ckpt = directory / "checkpoint"
    fingerprint = dataset_fingerprint(data)
    meta = {
        "agent": "BCPretrainer",
        "agent_config": dataclasses.asdict(config),
        "batch_size": train_config.batch_size,
        "seed": train_config.seed,
        "data": fingerprint,
    }
    resume = latest_checkpoint(ckpt) is not None
    if resume:
        saved, step = read_checkpoint_meta(ckpt)
        saved_data = saved.get("info", {}).get("dataset")
        if saved_data != fingerprint:
            raise CheckpointError(
                f"The BC checkpoint in {directory} was pre-trained on other data ({json.dumps(saved_data)}), not "
                f"on {json.dumps(fingerprint)}; give another --bc-checkpoint directory."
            )
        read_checkpoint_meta(ckpt, meta)  # the flow's shape, optimiser, batch and seed
        if step > train_config.steps:
            raise CheckpointError(
                f"The BC checkpoint in {directory} holds {step} pre-training steps, more than the {train_config.steps} "
                "asked for; ask for at least as many (--pretrain-steps) or give another --bc-checkpoint directory."
            )
        if step == train_config.steps:
            trainer, _ = load_agent_checkpoint(ckpt, trainer, meta)
            print(f"BC pre-training: reusing the flow in {directory} ({step} steps)")
            return trainer.flow
        print(f"BC pre-training: resuming {directory} at step {step} of {train_config.steps}")
    else:
        print(f"BC pre-training: {train_config.steps} steps of flow matching, saved in {directory}")
    result = train_offline(
        trainer, data, train_config, run_dir=directory, resume=resume, info={"dataset": fingerprint, "stage": "bc"}
    )
    return result.agent.flow


__all__ = [
    "BCConfig",
    "BCPretrainer",
    "behaviour_flow_loss",
    "bc_checkpoint_name",
    "clipped_adam",
    "dataset_fingerprint",
    "pretrain_behaviour",
]
