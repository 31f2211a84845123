"""Update steps per second of the flow agents, at the paper size and the `small` size (fused and unfused), and
GFLOP per update with every loop iteration counted.

Paper size (the official TRQAM defaults): batch 256, observation 40, action 5 in chunks of 5 (a
25-dim flow), 4x512 GELU flows, a 10-member 4x512 LayerNorm critic, 10 flow steps. Batches are
sampled on the device from a synthetic offline table inside the fused `lax.scan` of
`flowsoc.rl.fused_updates`, as in training; `small-1/dispatch` runs the small update one step
per call to show what fusing saves.
TRQAM runs once per lean-adjoint convention at both sizes: `next` (the base's time input t_i + h, the official
codes' and the agents' default), `grid` (t_i) and `chain` (t_i, and the Jacobian of the noiseless last
step: the exact vector-Jacobian product of the sampled chain). Every agent of `flowsoc.rl` (TRQAM, QAM, BAM,
QAME, QAMF, and SQAM where present) then runs at the paper size with its defaults, with its cost relative to
TRQAM's.

Reports steps/s (steady, several steps per dispatch), the first call (trace + compile), GFLOP per update and
the achieved GFLOP/s, and peak host memory; writes benchmarks/results/update_step.json.
The FLOP count is XLA's cost analysis of one update, which is complete because the update holds no
floating-point while loop: on fixed Euler grids of up to `flowsoc._sde.UNROLL_MAX_STEPS` steps the samplers
and the lean adjoint are unrolled (XLA counts a while loop's body once; before they were unrolled it reported
46.4 of 61.5 GFLOP). The check row `count check` counts the TRQAM update with the adjoint matching pass made of
the three public calls (sample_sde, lean_adjoint, adjoint_matching_loss, no shared network passes): the same
arithmetic as the official code, whose count (Python loops, complete) is 61.5 GFLOP at the paper size.

    python benchmarks/update_step.py            # both sizes, every agent
    python benchmarks/update_step.py --quick    # fewer steps

flowsoc beside the official code, in one run: `benchmarks/vs_official.py`.
"""

import argparse
import json
import pathlib
import platform
import re
import resource
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import flowsoc._losses
import flowsoc.rl
from flowsoc.rl import AgentConfig, BAM, fused_updates, QAM, QAME, QAMF, sample_chunks, Transitions, TRQAM


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


def compiled_cost(fn, *args) -> tuple[float, int]:
    """XLA's FLOP count of `eqx.filter_jit(fn)(*args)` (GFLOP) and the number of while loops left in its optimised
    program. XLA's cost analysis counts a while loop's body once, so the count is the whole arithmetic only when
    no loop is left (`honest_gflop`)."""
    compiled = eqx.filter_jit(fn).lower(*args).compile().compiled
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    gflop = float(cost.get("flops", float("nan"))) / 1e9 if cost else float("nan")
    return gflop, len(float_loops(compiled.as_text()))


def float_loops(hlo: str) -> list[str]:
    """The while loops of an optimised HLO module that carry floating-point state. The others are the random
    number generator's integer rounds (threefry), which hold no floating-point arithmetic."""
    loops = []
    for line in hlo.splitlines():
        if " while(" in line:
            state = line.split("=", 1)[1].split(" while(")[0]
            if re.search(r"\b(f16|bf16|f32|f64)\[", state):
                loops.append(line.strip())
    return loops


def honest_gflop(agent, batch) -> float:
    """GFLOP of one `agent.update(batch)` with every loop iteration counted: XLA's count, which is complete when
    the optimised program has no floating-point while loop (flowsoc's samplers and lean adjoint unroll fixed
    Euler grids of up to `flowsoc._sde.UNROLL_MAX_STEPS` steps); NaN otherwise."""
    gflop, loops = compiled_cost(lambda agent, batch: agent.update(batch), agent, batch)
    return gflop if loops == 0 else float("nan")


def agent_classes() -> dict:
    """The agents of `flowsoc.rl` this benchmark times (SQAM where the library has it)."""
    classes = {"TRQAM": TRQAM, "QAM": QAM, "BAM": BAM, "QAME": QAME, "QAMF": QAMF}
    if hasattr(flowsoc.rl, "SQAM"):
        classes["SQAM"] = flowsoc.rl.SQAM
    return classes


def measure(config, batch_size, steps_per_dispatch, dispatches, agent_cls=TRQAM):
    """Time `flowsoc.rl.fused_updates`, the training loop's own dispatch, and count one update's FLOPs."""
    table = synthetic_table(jr.key(0))
    agent = agent_cls.create(jr.key(1), OBS, ACT, config)
    seed = jnp.asarray(0, jnp.uint32)

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
    batch = sample_chunks(table, jr.key(0), batch_size, config.horizon, config.discount)
    gflop = honest_gflop(agent, batch)
    return {
        "agent": agent_cls.__name__,
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


def count_check(config, batch_size=256) -> dict:
    """GFLOP of the TRQAM update with and without the shared network passes of its adjoint matching pass."""
    table = synthetic_table(jr.key(0))
    agent = TRQAM.create(jr.key(1), OBS, ACT, config)
    batch = sample_chunks(table, jr.key(0), batch_size, config.horizon, config.discount)
    shared = honest_gflop(agent, batch)
    flowsoc._losses.SHARE_PASSES = False
    try:
        unshared = honest_gflop(agent, batch)
    finally:
        flowsoc._losses.SHARE_PASSES = True
    return {"gflop_shared": shared, "gflop_three_public_calls": unshared, "official_gflop": 61.5}


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
    paper_steps, paper_dispatches = (5, 2) if opts.quick else (10, 3)
    rows = {}
    for name, convention in conventions.items():
        rows[f"paper ({name})"] = measure(AgentConfig(**convention), 256, paper_steps, paper_dispatches)
    for name, convention in conventions.items():
        rows[f"small ({name})"] = measure(
            AgentConfig.small(**convention), 128, 50 if opts.quick else 100, 2 if opts.quick else 3
        )
    # the same small update dispatched one step at a time: what fusing saves
    rows["small-1/dispatch"] = measure(AgentConfig.small(), 128, 1, 20 if opts.quick else 50)
    trqam = rows["paper (next)"]
    agents = {"TRQAM": dict(trqam)}
    for name, cls in agent_classes().items():
        if name != "TRQAM":
            agents[name] = measure(AgentConfig(), 256, paper_steps, paper_dispatches, agent_cls=cls)
    for r in agents.values():
        r["time_vs_trqam"] = r["median_s_per_step"] / trqam["median_s_per_step"]
        r["gflop_vs_trqam"] = r["gflop_per_update"] / trqam["gflop_per_update"]
    check = count_check(AgentConfig())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nflow agents' update on {jax.devices()[0]} (float32)")
    head = f"{'row':<17}{'steps/s':>9}{'ms/step':>9}{'best ms':>9}{'1st call s':>12}{'GFLOP':>8}{'GFLOP/s':>9}"
    print(head)
    for name, r in rows.items():
        print(
            f"{name:<17}{r['steps_per_s']:>9.2f}{1e3 * r['median_s_per_step']:>9.0f}{1e3 * r['best_s_per_step']:>9.0f}"
            f"{r['first_call_s']:>12.1f}{r['gflop_per_update']:>8.2f}{r['achieved_gflop_per_s']:>9.1f}"
        )
    print(f"\nagents at the paper size (adjoint 'next'){'':>10}time/TRQAM  GFLOP/TRQAM")
    for name, r in agents.items():
        print(
            f"{name:<17}{r['steps_per_s']:>9.2f}{1e3 * r['median_s_per_step']:>9.0f}{1e3 * r['best_s_per_step']:>9.0f}"
            f"{r['first_call_s']:>12.1f}{r['gflop_per_update']:>8.2f}{r['achieved_gflop_per_s']:>9.1f}"
            f"{r['time_vs_trqam']:>8.2f}{r['gflop_vs_trqam']:>12.2f}"
        )
    print(
        f"\ncount check (paper, 'next'): {check['gflop_shared']:.2f} GFLOP as run, "
        f"{check['gflop_three_public_calls']:.2f} with the three public calls; the official update: 61.5"
    )
    print("(GFLOP: every loop iteration counted; the only while loops left are the RNG's integer rounds)")
    print(f"peak host memory: {peak_mb:.0f} MB")
    record = {
        "benchmark": "update_step",
        "command": "python benchmarks/update_step.py" + (" --quick" if opts.quick else ""),
        "machine": {
            "platform": platform.platform(),
            "devices": [str(d) for d in jax.devices()],
            "jax": jax.__version__,
        },
        "rows": rows,
        "agents_paper": agents,
        "count_check": check,
        "peak_host_memory_mb": peak_mb,
    }
    out = pathlib.Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
