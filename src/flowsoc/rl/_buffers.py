"""Transitions on the device, the replay buffer, and action-chunk sampling: what the agents and the
training loops consume (no files, no environments).

`Transitions.from_numpy(table)` puts a dataset on the device; `sample_chunks` draws a batch of action
chunks with discounted chunk returns, jittable, with QAM's `sample_sequence` semantics; `ReplayBuffer`
holds the offline data followed by online transitions. `clip_actions` and `sparsify_rewards` are the
reference runs' action and reward rules, applied to offline and online data alike.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._errors import DatasetError


ACTION_CLIP_EPS = 1e-5
"""Actions are clipped to ±(1 − ε), as in the reference runs."""


def clip_actions(actions: np.ndarray, eps: float = ACTION_CLIP_EPS) -> np.ndarray:
    """Clip dataset actions to `[-1 + eps, 1 - eps]` (the QAM reference does this so
    that `atanh` and log-densities stay finite)."""
    return np.clip(actions, -1.0 + eps, 1.0 - eps).astype(actions.dtype, copy=False)


def sparsify_rewards(rewards: np.ndarray) -> np.ndarray:
    """QAM's sparse reward: `-1` wherever OGBench's reward is non-zero (a sub-goal is
    unmet), `0` on success."""
    return -(np.asarray(rewards) != 0).astype(np.float32)


class Transitions(eqx.Module):
    """A flat table of transitions on the device, in OGBench's layout (row t is
    `(s_t, a_t, r_t, s_{t+1})`; `terminals[t] = 1` at each episode's last transition).

    All fields are float32 arrays with the same leading length `n`.
    """

    observations: Float[Array, "n *obs"]
    actions: Float[Array, "n act"]
    rewards: Float[Array, " n"]
    masks: Float[Array, " n"]  # 0 where the step reaches the goal (no bootstrap), else 1
    terminals: Float[Array, " n"]  # 1 at the last transition of an episode
    next_observations: Float[Array, "n *obs"]
    sparse_rewards: bool | None = eqx.field(static=True, default=None)
    """Whether the rewards were made sparse when loaded (`None`: not recorded); the online phase applies the
    same rule to the rewards it collects."""

    @classmethod
    def from_numpy(cls, data: Mapping[str, Any], name: str = "", sparse_rewards: bool | None = None) -> "Transitions":
        """Device copy of an OGBench dataset dict (as from `load_ogbench`) in float32. `sparse_rewards`: whether
        its rewards were made sparse (recorded for the online phase).

        Needs `rewards` and `masks`, which only single-task datasets have.
        """
        missing = [f for f in _FIELDS if f not in data]
        if missing:
            where = f" of {name!r}" if name else ""
            raise DatasetError(
                f"the dataset{where} lacks {missing}: chunk sampling needs rewards and "
                f"masks, which OGBench adds only for single-task names "
                f"(e.g. 'cube-double-play-singletask-task2-v0')."
            )
        n = len(data["terminals"])
        bad = {f: len(data[f]) for f in _FIELDS if len(data[f]) != n}
        if bad:
            raise DatasetError(f"mismatched lengths {bad} (terminals: {n})")
        arrays = {f: jnp.asarray(np.asarray(data[f]), dtype=jnp.float32) for f in _FIELDS}
        return cls(**arrays, sparse_rewards=sparse_rewards)

    @property
    def size(self) -> int:
        return self.terminals.shape[0]


_FIELDS = ("observations", "actions", "rewards", "masks", "terminals", "next_observations")


class IndexedTransitions(eqx.Module):
    """Transitions with every state stored once, and a window of them to sample from: a large dataset's shard
    (the window is all of it), or several shards side by side (the window is the current shard).

    `states` holds the stored states episode by episode, each episode's final state included (the rows of an
    OGBench file); transition `t` goes from `states[state_index[t]]` to the next row, `states[state_index[t] + 1]`,
    so that no second copy of the observations (`next_observations`) is kept. `sample_chunks` draws only from
    rows `offset ... offset + window - 1`, with the same batch for the same key wherever the window lies.
    """

    states: Float[Array, "steps *obs"]
    state_index: Int[Array, " n"]
    actions: Float[Array, "n act"]
    rewards: Float[Array, " n"]
    masks: Float[Array, " n"]
    terminals: Float[Array, " n"]  # 1 at the last transition of an episode
    offset: Int[Array, ""]
    window: Int[Array, ""]
    sparse_rewards: bool | None = eqx.field(static=True, default=None)

    @property
    def size(self) -> int:
        return self.terminals.shape[0]

    @property
    def observations(self) -> Float[Array, "n *obs"]:
        """`s_t` of every transition (a gathered copy: for inspection, not for the training loop)."""
        return self.states[self.state_index]

    @property
    def next_observations(self) -> Float[Array, "n *obs"]:
        """`s_{t+1}` of every transition (a gathered copy)."""
        return self.states[self.state_index + 1]


def indexed_from_raw(
    raw: Mapping[str, Any], rewards: Any, masks: Any, sparse_rewards: bool | None = None
) -> dict[str, np.ndarray]:
    """The host arrays of an `IndexedTransitions` from the rows of an OGBench file (`observations`, `actions`,
    `terminals` with 1 at each episode's final state) and the per-transition `rewards` and `masks`: transition `t`
    is every row that is not an episode's final state, as OGBench's loader makes them (`compact_dataset=False`)."""
    terminals = np.asarray(raw["terminals"]).astype(bool)
    index = np.flatnonzero(~terminals)
    if len(index) and index[-1] + 1 >= len(terminals):
        raise DatasetError("the last stored state is not an episode's end (a truncated file?)")
    return dict(
        states=np.asarray(raw["observations"], np.float32),
        state_index=index.astype(np.int32),
        actions=np.asarray(raw["actions"], np.float32)[index],
        rewards=np.asarray(rewards, np.float32),
        masks=np.asarray(masks, np.float32),
        terminals=terminals[index + 1].astype(np.float32),
    )


class ReplayBuffer(eqx.Module):
    """A fixed-capacity, device-resident ring buffer of transitions.

    `data` holds `capacity` rows, of which the first `size` are filled; `pointer` is the
    row the next transition goes to. It starts from an offline dataset
    (`ReplayBuffer.from_transitions`, QAM's `create_from_initial_dataset`) and grows with
    `add_transitions`; once full, the oldest rows are overwritten. Being an
    `eqx.Module`, it can go into any checkpoint pytree (`eqx.tree_serialise_leaves`);
    `save_replay_buffer` / `load_replay_buffer` are self-describing npz alternatives.
    """

    data: Transitions
    size: Int[Array, ""]
    pointer: Int[Array, ""]

    @property
    def capacity(self) -> int:
        return self.data.terminals.shape[0]

    @classmethod
    def from_transitions(cls, initial: Transitions, capacity: int) -> "ReplayBuffer":
        """A buffer of `capacity` rows holding `initial` in its first rows."""
        n = initial.size
        if capacity < n:
            raise ValueError(f"capacity {capacity} < initial dataset size {n}")

        def grow(x):
            pad = jnp.zeros((capacity - n,) + x.shape[1:], x.dtype)
            return jnp.concatenate([x, pad])

        return cls(
            data=jax.tree.map(grow, initial),
            size=jnp.asarray(n, jnp.int32),
            pointer=jnp.asarray(n % capacity, jnp.int32),
        )

    @classmethod
    def empty(cls, capacity: int, obs_shape: tuple[int, ...], action_dim: int) -> "ReplayBuffer":
        """An empty buffer for observations of shape `obs_shape`."""
        z = lambda *s: jnp.zeros((capacity,) + s, jnp.float32)
        data = Transitions(z(*obs_shape), z(action_dim), z(), z(), z(), z(*obs_shape))
        return cls(data, jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32))


def add_transitions(buffer: ReplayBuffer, batch: Transitions) -> ReplayBuffer:
    """Write the `k` rows of `batch` at `pointer, pointer+1, ...` (mod capacity).

    Pure: returns the new buffer (`size = min(size + k, capacity)`). To add one
    transition, give each field a leading axis of length 1. Under `jax.jit` with the
    buffer donated, the update is in place.
    """
    k = batch.size
    # The rows take the buffer's record of the reward rule (a static field: the trees must match).
    batch = dataclasses.replace(batch, sparse_rewards=buffer.data.sparse_rewards)
    if k > buffer.capacity:
        raise ValueError(f"cannot add {k} rows to a buffer of capacity {buffer.capacity}")
    rows = (buffer.pointer + jnp.arange(k, dtype=jnp.int32)) % buffer.capacity
    data = jax.tree.map(lambda buf, new: buf.at[rows].set(new.astype(buf.dtype)), buffer.data, batch)
    return ReplayBuffer(
        data=data,
        size=jnp.minimum(buffer.size + k, buffer.capacity).astype(jnp.int32),
        pointer=((buffer.pointer + k) % buffer.capacity).astype(jnp.int32),
    )


@eqx.filter_jit(donate="all")
def append_transitions(buffer: ReplayBuffer, batch: Transitions) -> ReplayBuffer:
    """`add_transitions` compiled with `buffer` and `batch` donated: written in place, one
    compilation per batch shape (the online loop and the expert trainer append fixed-size blocks)."""
    return add_transitions(buffer, batch)


@eqx.filter_jit(donate="all")
def overwrite_rows(buffer: ReplayBuffer, rows: Transitions) -> ReplayBuffer:
    """`buffer` with its first `rows.size` rows replaced by `rows` (size and pointer kept): the official online
    loop's rotation of a sharded dataset, `replay_buffer[k][:size] = shard[k]`. Written in place (`buffer`
    donated)."""
    n = rows.size
    data = jax.tree.map(lambda buf, new: buf.at[:n].set(new.astype(buf.dtype)), buffer.data, rows)
    return ReplayBuffer(data, buffer.size, buffer.pointer)


class ChunkBatch(eqx.Module):
    """A batch of length-`H` action chunks starting at `s_t` (QAM's `sample_sequence`).

    With `valid[:, i] = 1` while no episode end lies strictly before step `i`:

    - `observations` `(B, obs)`: `s_t`.
    - `actions` `(B, H, act)`: `a_t ... a_{t+H-1}` as stored (rows past an episode end
      belong to the next episode; mask them with `valid`).
    - `rewards` `(B, H)`: running discounted sums `sum_{k<=i} gamma^k r_{t+k} valid_k`;
      `rewards[:, -1]` is the chunk return `R_H`.
    - `masks` `(B, H)`: running minimum of the valid steps' masks; `masks[:, -1]`
      multiplies the bootstrap `gamma^H Q(s', a')`.
    - `terminals` `(B, H)`: running maximum of `terminals`.
    - `valid` `(B, H)`: 1 for steps inside the starting episode, 0 after its end.
    - `next_observations` `(B, H, obs)`: `s_{t+i+1}` for valid steps, repeated from the
      last valid step after an episode end; `next_observations[:, -1]` is the state after
      the chunk, `s'` of the critic target.
    """

    observations: Float[Array, "batch *obs"]
    actions: Float[Array, "batch horizon act"]
    rewards: Float[Array, "batch horizon"]
    masks: Float[Array, "batch horizon"]
    terminals: Float[Array, "batch horizon"]
    valid: Float[Array, "batch horizon"]
    next_observations: Float[Array, "batch horizon *obs"]


def chunk_start_indices(
    key: PRNGKeyArray, size: int | Int[Array, ""], batch_size: int, horizon: int
) -> Int[Array, " batch"]:
    """Uniform chunk starts in `[0, size - horizon]` (QAM: `randint(size - H + 1)`)."""
    return jr.randint(key, (batch_size,), 0, size - horizon + 1, dtype=jnp.int32)


def gather_chunks(
    data: "Transitions | IndexedTransitions",
    starts: Int[Array, " batch"],
    horizon: int,
    discount: float | Float[Array, ""],
) -> ChunkBatch:
    """The chunks of `horizon` steps starting at rows `starts` (see `ChunkBatch`).

    Pure and vectorised: one gather per field, no loop over steps, so it runs under
    `jax.jit`/`lax.scan` without host round trips. Rows `starts + horizon - 1` must
    exist.
    """
    starts = starts.astype(jnp.int32)
    steps = jnp.arange(horizon, dtype=jnp.int32)
    idx = starts[:, None] + steps[None, :]  # (B, H)
    term = data.terminals[idx]
    ended = jax.lax.cummax(term, axis=1)
    dtype = data.rewards.dtype
    valid = jnp.concatenate([jnp.ones_like(ended[:, :1]), 1.0 - ended[:, :-1]], axis=1).astype(dtype)
    gamma = jnp.asarray(discount, dtype) ** steps.astype(dtype)
    rewards = jnp.cumsum(data.rewards[idx] * gamma[None, :] * valid, axis=1)
    masks = jax.lax.cummin(jnp.where(valid > 0, data.masks[idx], jnp.inf), axis=1)
    # valid is a prefix of ones: the last valid step of row b is n_valid[b] - 1.
    n_valid = jnp.sum(valid, axis=1).astype(jnp.int32)
    last = starts[:, None] + jnp.minimum(steps[None, :], n_valid[:, None] - 1)
    if isinstance(data, IndexedTransitions):  # states stored once: s_t and s_{t+1} through the index
        observations, next_observations = data.states[data.state_index[starts]], data.states[data.state_index[last] + 1]
    else:
        observations, next_observations = data.observations[starts], data.next_observations[last]
    return ChunkBatch(
        observations=observations,
        actions=data.actions[idx],
        rewards=rewards,
        masks=masks,
        terminals=ended,
        valid=valid,
        next_observations=next_observations,
    )


def sample_chunks(
    data: Transitions | ReplayBuffer | IndexedTransitions,
    key: PRNGKeyArray,
    batch_size: int,
    horizon: int,
    discount: float | Float[Array, ""],
) -> ChunkBatch:
    """Sample `batch_size` action chunks of length `horizon` uniformly (see
    `ChunkBatch` for the fields), from an offline `Transitions` table or the filled part
    of a `ReplayBuffer`.

    Jittable with `batch_size` and `horizon` static, e.g.
    `eqx.filter_jit(sample_chunks)(data, key, 256, 5, 0.99)`; semantics equal QAM's
    `Dataset.sample_sequence` (start `t ~ U{0, ..., size - H}`). As there, a buffer's
    chunks are not cut at the ring's write position. From `IndexedTransitions`, the starts lie in its window
    (`offset + U{0, ..., window - H}`).
    """
    if isinstance(data, ReplayBuffer):
        size, table = data.size, data.data
    elif isinstance(data, IndexedTransitions):  # the window alone: the current shard
        starts = data.offset + chunk_start_indices(key, data.window, batch_size, horizon)
        return gather_chunks(data, starts, horizon, discount)
    else:
        size, table = data.size, data
        if size < horizon:
            raise ValueError(f"dataset of {size} rows is shorter than horizon {horizon}")
    starts = chunk_start_indices(key, size, batch_size, horizon)
    return gather_chunks(table, starts, horizon, discount)


__all__ = [
    "ACTION_CLIP_EPS",
    "ChunkBatch",
    "IndexedTransitions",
    "ReplayBuffer",
    "Transitions",
    "add_transitions",
    "append_transitions",
    "chunk_start_indices",
    "clip_actions",
    "gather_chunks",
    "indexed_from_raw",
    "overwrite_rows",
    "sample_chunks",
    "sparsify_rewards",
]
