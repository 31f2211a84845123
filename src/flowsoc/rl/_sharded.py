"""Datasets larger than memory, as a sequence of shards trained on one at a time (the official codes'
`--ogbench_dataset_dir`): batches come from the current shard, which rotates to the next every `interval` updates.

[`ShardedDataset`][flowsoc.rl.ShardedDataset] is what the training loops take in place of `Transitions`. Two modes,
with the same batches for the same key:

- `"stream"`: the current shard on the device; the next one is read and put on the device by a background thread
  while the current one trains, so that an update never waits for the disk (about two shards in memory). The
  thread runs at the lowest scheduling priority, so that on a busy host it takes the cycles the updates leave; every
  shard is padded to the largest one's shapes (the rows past its window are never sampled), so that the jitted
  update compiles once. `wait_seconds` and `load_seconds` tell whether the loading was hidden;
- `"memory"`: every shard on the device side by side, the current one selected by its window (no loading at all);
  chosen by `"auto"` when the whole dataset takes at most half of the device's free memory.

Both store each state once ([`IndexedTransitions`][flowsoc.rl.IndexedTransitions]). The shard of an update is a
pure function of its step, `(step // interval) % shards`, so that a resumed run continues on the shard an
uninterrupted one would use. (The official loop rotates before update `i` when `i % interval == 0` with `i`
counted from 1, so its first shard gets one update fewer; here every visit is `interval` updates.)
"""

import concurrent.futures
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ._buffers import _FIELDS, IndexedTransitions, Transitions


DataMode = Literal["auto", "stream", "memory"]
INDEXED_FIELDS = ("states", "state_index", "actions", "rewards", "masks", "terminals")
"""The host arrays a shard loader returns (see `flowsoc.rl._buffers.indexed_from_raw`)."""


def shard_at(step: int, interval: int, shards: int, start: int = 0) -> int:
    """The shard that update (or online environment step) `step` uses: shard `start` for the first `interval`
    steps, then the next one every `interval` steps, round and round."""
    return (start + step // interval) % shards


def free_device_memory(device: jax.Device | None = None) -> int | None:
    """Bytes free on `device` (default: the first device): from the accelerator's own statistics, or, for the CPU,
    the host's available memory (`/proc/meminfo`); `None` when neither is known."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend implements it
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def choose_mode(mode: DataMode, dataset_bytes: int, free: int | None) -> Literal["stream", "memory"]:
    """`"memory"` when `mode` is `"auto"` and `dataset_bytes` take at most half of `free` (the rest for the
    networks, the optimiser and XLA's buffers), else `"stream"`; an explicit mode is kept."""
    if mode != "auto":
        return mode
    return "memory" if free is not None and 2 * dataset_bytes <= free else "stream"


def _background_priority() -> None:
    """Run the calling (loader) thread at the lowest priority (Linux: per-thread nice 19), so that reading the next
    shard takes only the cycles the training leaves; where that is not possible, nothing changes."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass


def _pad_rows(array: np.ndarray, rows: int | None) -> np.ndarray:
    if rows is None or len(array) >= rows:
        return array
    return np.concatenate([array, np.zeros((rows - len(array),) + array.shape[1:], array.dtype)])


def _on_device(
    arrays: Mapping[str, np.ndarray],
    offset: int,
    window: int,
    sparse: bool | None,
    pad_to: tuple[int, int] | None = None,
) -> IndexedTransitions:
    """`arrays` on the device; `pad_to=(states, transitions)` pads them with zero rows to those lengths (outside
    the window: never sampled) so that shards of different sizes share one compiled update."""
    state_rows, transitions = pad_to if pad_to is not None else (None, None)
    put = {
        k: jax.device_put(_pad_rows(np.asarray(arrays[k]), state_rows if k == "states" else transitions))
        for k in INDEXED_FIELDS
    }
    return IndexedTransitions(
        **put,
        offset=jnp.asarray(offset, jnp.int32),
        window=jnp.asarray(window, jnp.int32),
        sparse_rewards=sparse,
    )


class ShardedDataset:
    """A dataset of several shards (see the module's docstring), read through `loaders`.

    **Arguments:**

    - `loaders`: one callable per shard, in order, returning its host arrays (`INDEXED_FIELDS`); each is called
      when its shard is first needed (it may validate the file, and should raise naming it).
    - `names`: a name per shard, for messages (the file names).
    - `sizes`, `state_rows`, `obs_shape`, `action_dim`: each shard's transitions and stored states, and the widths,
      known before any shard is read (from the files' headers), for the memory estimate and the checks.
    - `interval`: updates per shard visit (the official `dataset_replace_interval`, 1000).
    - `mode`: `"stream"`, `"memory"` or `"auto"` (see `choose_mode`).
    - `fingerprint`: what identifies the data in checkpoints (names, sizes and checksums of the files).
    - `sparse_rewards`: whether the loaders made rewards sparse (recorded for the online phase).

    **Attributes** (how the reading went): `loads`, the shards read, in order; `load_seconds`, the wall time of
    each read (the file, its checks, the copy to the device); `wait_seconds`, the time training spent waiting for
    a shard that was not ready (0 when every background read finished before its shard was due).
    """

    def __init__(
        self,
        loaders: Sequence[Callable[[], Mapping[str, np.ndarray]]],
        names: Sequence[str],
        sizes: Sequence[int],
        state_rows: Sequence[int],
        obs_shape: tuple[int, ...],
        action_dim: int,
        *,
        interval: int = 1000,
        mode: DataMode = "auto",
        fingerprint: Mapping[str, Any] | None = None,
        sparse_rewards: bool | None = None,
    ):
        if not loaders or not (len(loaders) == len(names) == len(sizes) == len(state_rows)):
            raise ValueError("ShardedDataset: need one name, size and state count per shard loader (and one shard).")
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValueError(f"ShardedDataset: interval must be a positive integer, got {interval!r}.")
        if mode not in ("auto", "stream", "memory"):
            raise ValueError(f"ShardedDataset: mode must be 'auto', 'stream' or 'memory', got {mode!r}.")
        self.loaders, self.names = list(loaders), list(names)
        self.sizes, self.state_rows = [int(n) for n in sizes], [int(n) for n in state_rows]
        self.obs_shape, self.action_dim = tuple(obs_shape), int(action_dim)
        self.interval, self.sparse_rewards = interval, sparse_rewards
        self._fingerprint = dict(fingerprint or {"shards": list(self.names), "transitions": self.sizes})
        self.mode = choose_mode(mode, self.nbytes, free_device_memory())
        self.loads: list[int] = []  # the shards read so far, in order (for tests and the benchmark)
        self.load_seconds: list[float] = []  # the wall time of each read (disk, checks, to the device)
        self.wait_seconds = 0.0  # the time training spent waiting for a shard that was not ready (stream mode)
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="shard-loader", initializer=_background_priority
        )
        self._current: tuple[int, IndexedTransitions] | None = None
        self._next: tuple[int, concurrent.futures.Future] | None = None
        self._next_host: tuple[int, concurrent.futures.Future] | None = None
        self._all: IndexedTransitions | None = None
        self._offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    # ------------------------------------------------------------------ description

    @property
    def num_shards(self) -> int:
        return len(self.loaders)

    @property
    def size(self) -> int:
        """Transitions over all shards."""
        return int(sum(self.sizes))

    @property
    def nbytes(self) -> int:
        """Device bytes of the whole dataset held at once (states once, float32, and the int32 index)."""
        width = int(np.prod(self.obs_shape)) if self.obs_shape else 1
        return 4 * (sum(self.state_rows) * width + self.size * (self.action_dim + 4))

    def shard_nbytes(self, shard: int) -> int:
        """Device bytes of shard `shard` alone."""
        width = int(np.prod(self.obs_shape)) if self.obs_shape else 1
        return 4 * (self.state_rows[shard] * width + self.sizes[shard] * (self.action_dim + 4))

    def fingerprint(self) -> dict:
        """What identifies these data in a checkpoint's metadata."""
        return dict(self._fingerprint)

    def shard_at(self, step: int, start: int = 0) -> int:
        """The shard of update `step` (`start`: the shard of step 0)."""
        return shard_at(step, self.interval, self.num_shards, start)

    # ------------------------------------------------------------------ loading

    def read(self, shard: int) -> dict[str, np.ndarray]:
        """Shard `shard`'s host arrays (read from disk now; the loader checks the file)."""
        arrays = dict(self.loaders[shard]())
        with self._lock:
            self.loads.append(shard)
        n, rows = len(arrays["terminals"]), len(arrays["states"])
        if n != self.sizes[shard] or rows != self.state_rows[shard]:
            raise ValueError(
                f"{self.names[shard]}: holds {n} transitions of {rows} states, but its header said "
                f"{self.sizes[shard]} of {self.state_rows[shard]}; the file changed while training."
            )
        return arrays

    def _load(self, shard: int) -> IndexedTransitions:
        start = time.perf_counter()
        pad_to = (max(self.state_rows), max(self.sizes))
        data = jax.block_until_ready(_on_device(self.read(shard), 0, self.sizes[shard], self.sparse_rewards, pad_to))
        with self._lock:
            self.load_seconds.append(time.perf_counter() - start)
        return data

    def _take(self, pending: tuple[int, concurrent.futures.Future] | None, shard: int, read: Callable) -> Any:
        """Shard `shard` from the background read `pending` when it is that shard's, else `read(shard)` now; the
        time this blocks counts as training's wait."""
        start = time.perf_counter()
        result = pending[1].result() if pending is not None and pending[0] == shard else read(shard)
        self.wait_seconds += time.perf_counter() - start
        return result

    def _prefetch(self, shard: int) -> None:
        if self._next is None or self._next[0] != shard:
            self._next = (shard, self._pool.submit(self._load, shard))

    def _memory(self) -> IndexedTransitions:
        if self._all is None:
            parts = [self.read(k) for k in range(self.num_shards)]
            base = np.concatenate([[0], np.cumsum([len(p["states"]) for p in parts])[:-1]])
            joined = {k: np.concatenate([p[k] for p in parts]) for k in INDEXED_FIELDS if k != "state_index"}
            joined["state_index"] = np.concatenate([p["state_index"] + b for p, b in zip(parts, base)]).astype(np.int32)
            del parts
            self._all = _on_device(joined, 0, self.sizes[0], self.sparse_rewards)
        return self._all

    def shard_data(self, shard: int) -> IndexedTransitions:
        """Shard `shard` on the device, as sampled from (its window alone). In stream mode, waits for the
        background read when it is not done, and starts reading the one after."""
        if self.mode == "memory":
            data = self._memory()
            return dataclasses.replace(
                data,
                offset=jnp.asarray(self._offsets[shard], jnp.int32),
                window=jnp.asarray(self.sizes[shard], jnp.int32),
            )
        if self._current is None or self._current[0] != shard:
            self._current, self._next = (shard, self._take(self._next, shard, self._load)), None
        self._prefetch((shard + 1) % self.num_shards)
        return self._current[1]

    def data_at(self, step: int, n: int = 1, start: int = 0) -> IndexedTransitions:
        """The data updates `step ... step + n - 1` sample from: their shard (they must share it)."""
        shard = self.shard_at(step, start)
        if self.shard_at(step + n - 1, start) != shard:
            raise ValueError(
                f"updates {step}-{step + n - 1} span two shards (a shard lasts {self.interval} updates); make the "
                "shard interval a multiple of the updates per dispatch."
            )
        return self.shard_data(shard)

    def _host_transitions(self, shard: int) -> dict[str, np.ndarray]:
        a = self.read(shard)
        return {
            "observations": a["states"][a["state_index"]],
            "next_observations": a["states"][a["state_index"] + 1],
            **{k: a[k] for k in _FIELDS if k in a and k not in ("observations", "next_observations")},
        }

    def transitions(self, shard: int, prefetch: bool = False) -> Transitions:
        """Shard `shard` as a plain `Transitions` table (both observation arrays: for the online replay buffer).
        `prefetch`: then start reading the next shard's table in the background (the online phase's rotation),
        and take this one from such a read when there is one."""
        host, self._next_host = self._take(self._next_host, shard, self._host_transitions), None
        if prefetch:
            following = (shard + 1) % self.num_shards
            self._next_host = (following, self._pool.submit(self._host_transitions, following))
        return Transitions.from_numpy(host, self.names[shard], sparse_rewards=self.sparse_rewards)

    def release_device(self) -> None:
        """Drop the shards held on the device (the offline phase's), keeping the background reader."""
        if self._next is not None:
            self._next[1].cancel()
        self._current = self._next = self._all = None

    def close(self) -> None:
        """Stop the background reader and drop the shards held."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._current = self._next = self._next_host = self._all = None

    def __del__(self):
        try:
            self._pool.shutdown(wait=False, cancel_futures=True)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return (
            f"ShardedDataset({self.num_shards} shards, {self.size} transitions, {self.mode} mode, "
            f"interval {self.interval})"
        )


def data_widths(data: Any) -> tuple[int, int]:
    """`(observation width, action width)` of `Transitions`, `IndexedTransitions` or a `ShardedDataset`."""
    if isinstance(data, ShardedDataset):
        return int(data.obs_shape[-1]), data.action_dim
    obs = data.states if isinstance(data, IndexedTransitions) else data.observations
    return int(obs.shape[-1]), int(data.actions.shape[-1])


__all__ = ["DataMode", "ShardedDataset", "choose_mode", "data_widths", "free_device_memory", "shard_at"]
