"""Benchmark of action-chunk sampling: `flowsoc.rl.sample_chunks` on the device
against a plain numpy sampler on the host.

Data: an OGBench-sized table (1M transitions, 40-dim observations as in scene, 5-dim
actions, episodes of 1000 steps) in float32. Batch 256, chunk length 5, discount 0.99.

- `flowsoc, jit`: one jitted `sample_chunks` call per batch (`block_until_ready`).
- `flowsoc, lax.scan x100`: 100 batches drawn inside one `lax.scan` (how a fused
  training loop uses it), time per batch.
- `numpy (QAM loop)`: the QAM reference's `sample_sequence` algorithm, a Python loop over
  the 5 chunk steps with numpy fancy indexing.
- `numpy + device_put`: the same plus moving the batch to the device, which a host-side
  sampler must pay each step.

    python benchmarks/sampling.py           # prints a table, writes benchmarks/results/sampling.json
    python benchmarks/sampling.py --quick
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from flowsoc.rl import sample_chunks, Transitions


N, OBS, ACT, EPISODE = 1_000_000, 40, 5, 1000
BATCH, HORIZON, DISCOUNT = 256, 5, 0.99


def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    terminals = np.zeros(n, np.float32)
    terminals[EPISODE - 1 :: EPISODE] = 1.0
    terminals[-1] = 1.0
    return dict(
        observations=obs,
        actions=rng.uniform(-1, 1, size=(n, ACT)).astype(np.float32),
        rewards=-rng.integers(0, 2, size=n).astype(np.float32),
        masks=rng.integers(0, 2, size=n).astype(np.float32),
        terminals=terminals,
        next_observations=np.roll(obs, -1, axis=0),
    )


def numpy_sample(data, rng, batch, horizon, discount):
    """QAM's `sample_sequence` (numpy, host): a loop over the chunk steps."""
    size = len(data["terminals"])
    idxs = rng.integers(0, size - horizon + 1, size=batch)
    rewards = np.zeros((batch, horizon), np.float32)
    masks = np.ones((batch, horizon), np.float32)
    valid = np.ones((batch, horizon), np.float32)
    terminals = np.zeros((batch, horizon), np.float32)
    actions = np.zeros((batch, horizon, ACT), np.float32)
    next_obs = np.zeros((batch, horizon, OBS), np.float32)
    for i in range(horizon):
        cur = idxs + i
        if i == 0:
            rewards[:, 0] = data["rewards"][cur]
            masks[:, 0] = data["masks"][cur]
            terminals[:, 0] = data["terminals"][cur]
        else:
            valid[:, i] = 1.0 - terminals[:, i - 1]
            rewards[:, i] = rewards[:, i - 1] + data["rewards"][cur] * discount**i * valid[:, i]
            masks[:, i] = np.minimum(masks[:, i - 1], data["masks"][cur]) * valid[:, i] + masks[:, i - 1] * (
                1.0 - valid[:, i]
            )
            terminals[:, i] = np.maximum(terminals[:, i - 1], data["terminals"][cur])
        actions[:, i] = data["actions"][cur]
        prev = next_obs[:, i - 1] if i > 0 else 0.0
        next_obs[:, i] = data["next_observations"][cur] * valid[:, i : i + 1] + prev * (1.0 - valid[:, i : i + 1])
    return dict(
        observations=data["observations"][idxs],
        actions=actions,
        rewards=rewards,
        masks=masks,
        terminals=terminals,
        valid=valid,
        next_observations=next_obs,
    )


def timeit(fn, repeats):
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "sampling.json"))
    args = parser.parse_args()
    repeats = 30 if args.quick else 200
    scan_len = 100

    data = make_data(N)
    table = Transitions.from_numpy(data)
    jax.block_until_ready(table)
    rng = np.random.default_rng(0)
    keys = iter(jr.split(jr.key(0), 100_000))

    sample = eqx.filter_jit(sample_chunks)

    def flowsoc_jit():
        jax.block_until_ready(sample(table, next(keys), BATCH, HORIZON, DISCOUNT))

    @eqx.filter_jit
    def scanned(table, key):
        def body(carry, k):
            b = sample_chunks(table, k, BATCH, HORIZON, DISCOUNT)
            # consume every field so nothing is dead-code eliminated
            s = sum(jnp.sum(x) for x in jax.tree.leaves(b))
            return carry + s, None

        return jax.lax.scan(body, jnp.float32(0), jr.split(key, scan_len))[0]

    def flowsoc_scan():
        jax.block_until_ready(scanned(table, next(keys)))

    def numpy_host():
        numpy_sample(data, rng, BATCH, HORIZON, DISCOUNT)

    def numpy_device():
        jax.block_until_ready(jax.device_put(numpy_sample(data, rng, BATCH, HORIZON, DISCOUNT)))

    rows = []
    for name, fn, per in (
        ("flowsoc, jit", flowsoc_jit, 1),
        (f"flowsoc, lax.scan x{scan_len}", flowsoc_scan, scan_len),
        ("numpy (QAM loop)", numpy_host, 1),
        ("numpy + device_put", numpy_device, 1),
    ):
        med, best = timeit(fn, max(5, repeats // per))
        rows.append(
            dict(
                sampler=name,
                ms_per_batch=round(1e3 * med / per, 4),
                best_ms_per_batch=round(1e3 * best / per, 4),
                batches_per_s=round(per / med, 1),
            )
        )
    ref = next(r for r in rows if r["sampler"] == "numpy (QAM loop)")["ms_per_batch"]
    for r in rows:
        r["speedup_vs_numpy"] = round(ref / r["ms_per_batch"], 2)

    device = str(jax.devices()[0])
    print(f"\nchunk sampling: {N:,} transitions, obs {OBS}, act {ACT}, batch {BATCH}, H {HORIZON}; {device}")
    header = f"{'sampler':<26} {'ms/batch':>9} {'best ms':>9} {'batches/s':>10} {'vs numpy':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['sampler']:<26} {r['ms_per_batch']:>9} {r['best_ms_per_batch']:>9} "
            f"{r['batches_per_s']:>10} {r['speedup_vs_numpy']:>9}"
        )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(
        benchmark="sampling",
        transitions=N,
        obs_dim=OBS,
        action_dim=ACT,
        batch=BATCH,
        horizon=HORIZON,
        device=device,
        jax=jax.__version__,
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        rows=rows,
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
