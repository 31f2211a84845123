"""TRQAM update steps per second, at the paper size and the `small` size (fused and unfused).

Paper size (the official TRQAM defaults): batch 256, observation 40, action 5 in chunks of 5 (a
25-dim flow), 4x512 GELU flows, a 10-member 4x512 LayerNorm critic, 10 flow steps. Batches are
sampled on the device from a synthetic offline table inside the fused `lax.scan` of
`flowsoc.rl.fused_updates`, as in training; `small-1/dispatch` runs the small update one step
per call to show what fusing saves.
Each size runs once per lean-adjoint convention: `next` (the base's time input t_i + h, the official
codes' and the agents' default), `grid` (t_i) and `chain` (t_i, and the Jacobian of the noiseless last
step: the exact vector-Jacobian product of the sampled chain).
Reports steps/s (steady, several steps per dispatch), the first call (trace + compile), the FLOPs
XLA's cost analysis reports per update, and peak host memory; writes benchmarks/results/update_step.json.
XLA counts the body of a while loop once, and the update has three Diffrax loops (the target policy's ODE,
the SDE, the lean adjoint), so that column undercounts the true arithmetic (61.5 GFLOP at the paper size);
it is comparable between rows, not a total.

    python benchmarks/update_step.py            # both sizes
    python benchmarks/update_step.py --quick    # fewer steps

Reference point (the official TRQAM code measured beside flowsoc on this machine kind): at the paper size
takes 0.75-0.84 s per update (about 1.2 steps/s) and 61.5 GFLOP per update, and compiles twice
(31-36 s before steady speed).
"""

import argparse
import json
import pathlib
import platform
import resource
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from flowsoc.rl import AgentConfig, fused_updates, sample_chunks, Transitions, TRQAM


OBS, ACT, ROWS = 40, 5, 100_000


def synthetic_table(key, rows: int = ROWS, obs: int = OBS, act: int = ACT) -> Transitions:
    """A random offline table of `rows` transitions (episodes of 1000 steps); throughput does not
    depend on the values. Shared by the benchmarks that time updates (scale.py, online.py)."""
    k = jr.split(key, 4)
    terminals = (jnp.arange(rows) % 1000 == 999).astype(jnp.float32)
    return Transitions(
        observations=jr.normal(k[0], (rows, obs)),
        actions=jnp.clip(jr.normal(k[1], (rows, act)), -1, 1),
        rewards=-jr.uniform(k[2], (rows,)),
        masks=jnp.ones((rows,)),
        terminals=terminals,
        next_observations=jr.normal(k[3], (rows, obs)),
    )


def measure(config, batch_size, steps_per_dispatch, dispatches):
    """Time `flowsoc.rl.fused_updates`, the training loop's own dispatch."""
    table = synthetic_table(jr.key(0))
    agent = TRQAM.create(jr.key(1), OBS, ACT, config)
    seed = jnp.asarray(0, jnp.uint32)

    def one_update(agent, key):
        batch = sample_chunks(table, key, batch_size, config.horizon, config.discount)
        return agent.update(batch)

    def run(agent, key):
        del key
        return fused_updates(agent, table, seed, steps_per_dispatch, batch_size)

    start = time.perf_counter()
    agent, metrics = jax.block_until_ready(run(agent, jr.key(2)))
    first_call = time.perf_counter() - start
    times = []
    for i in range(dispatches):
        start = time.perf_counter()
        agent, metrics = jax.block_until_ready(run(agent, jr.key(3 + i)))
        times.append(time.perf_counter() - start)
    per_step = min(times) / steps_per_dispatch
    median_per_step = sorted(times)[len(times) // 2] / steps_per_dispatch
    single = eqx.filter_jit(one_update).lower(agent, jr.key(0)).compile().compiled
    cost = single.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    gflop = float(cost.get("flops", float("nan"))) / 1e9 if cost else float("nan")
    return {
        "batch_size": batch_size,
        "steps_per_dispatch": steps_per_dispatch,
        "median_s_per_step": median_per_step,
        "best_s_per_step": per_step,
        "steps_per_s": 1.0 / median_per_step,
        "first_call_s": first_call,
        "gflop_per_update": gflop,
        "achieved_gflop_per_s": gflop / median_per_step,
        "finite": bool(all(jnp.all(jnp.isfinite(v)) for v in metrics.values())),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "update_step.json"))
    opts = parser.parse_args()
    conventions = {
        "next": dict(adjoint_base_time="next"),
        "grid": dict(adjoint_base_time="grid"),
        "chain": dict(adjoint_base_time="grid", adjoint_final_ode_step=True),
    }
    rows = {}
    for name, convention in conventions.items():
        rows[f"paper ({name})"] = measure(
            AgentConfig(**convention), 256, 5 if opts.quick else 10, 2 if opts.quick else 3
        )
    for name, convention in conventions.items():
        rows[f"small ({name})"] = measure(
            AgentConfig.small(**convention), 128, 50 if opts.quick else 100, 2 if opts.quick else 3
        )
    # the same small update dispatched one step at a time: what fusing saves
    rows["small-1/dispatch"] = measure(AgentConfig.small(), 128, 1, 20 if opts.quick else 50)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nTRQAM update on {jax.devices()[0]} (float32)")
    print(f"{'size (adjoint)':<17}{'steps/s':>9}{'ms/step':>9}{'best ms':>9}{'1st call s':>12}{'XLA GFLOP':>11}")
    for name, r in rows.items():
        print(
            f"{name:<17}{r['steps_per_s']:>9.2f}{1e3 * r['median_s_per_step']:>9.0f}{1e3 * r['best_s_per_step']:>9.0f}"
            f"{r['first_call_s']:>12.1f}{r['gflop_per_update']:>11.1f}"
        )
    print("(XLA GFLOP: the cost analysis, which counts each while-loop body once; compare rows, not totals)")
    print(f"peak host memory: {peak_mb:.0f} MB")
    print(
        "reference (official TRQAM, measured beside flowsoc on this machine kind): "
        "paper size 0.75-0.84 s/step, 61.5 GFLOP/update"
    )
    record = {
        "benchmark": "update_step",
        "command": "python benchmarks/update_step.py" + (" --quick" if opts.quick else ""),
        "machine": {
            "platform": platform.platform(),
            "devices": [str(d) for d in jax.devices()],
            "jax": jax.__version__,
        },
        "rows": rows,
        "peak_host_memory_mb": peak_mb,
        "reference": {"paper_s_per_step": [0.75, 0.84], "paper_gflop_per_update": 61.5},
    }
    out = pathlib.Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
