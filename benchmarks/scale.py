"""TRQAM throughput with many seeds in one program: update steps per second per seed and in aggregate
for 1, 2, 4, 8, 16 seeds vmapped together (`flowsoc.rl.fused_updates_seeds`), for 1 seed with an
8x larger batch, and for 8 single-seed runs dispatched one after another (as separate processes would
run them; the per-seed rate of that row is the single-seed rate), with compile time and memory.

Batches are sampled on the device from one synthetic offline table (observation 40, action 5 in chunks
of 5, 100K rows) shared by all seeds. Default: small networks (`AgentConfig.small()`, batch 128), sized
for a CPU; `--paper`: the paper size (4x512 flows, 10-member 4x512 critic, batch 256), meant for a GPU.
The target on a GPU at paper size: 8 seeds together at least 4x the aggregate throughput of 8
sequential single-seed runs (`vs_sequential` in the JSON).

Rates come from the fastest of several dispatches after a warm-up (the median is kept in the JSON as
`median_aggregate_steps_per_s`); compile time is `lower().compile()` of the dispatch.
Memory: `program_mb` is XLA's own account of one dispatch (arguments + outputs + temporaries, from
`memory_analysis()`); `peak_mb` is the device's peak bytes in use so far (`memory_stats()`, GPU) or the
process's peak resident memory (CPU); both peaks only grow over the run, rows are measured in order.
Writes benchmarks/results/scale.json and scale.png.

    python benchmarks/scale.py              # small networks, seeds 1..16
    python benchmarks/scale.py --paper      # paper size (on a GPU)
    python benchmarks/scale.py --quick      # tiny networks, seeds 1, 2, 4: a minutes-long check
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import time

import jax
import jax.numpy as jnp
import jax.random as jr
from update_step import ACT, OBS, synthetic_table  # the same synthetic table (benchmarks/ is on the path)

from flowsoc.rl import AgentConfig, create_agents, fused_updates, fused_updates_seeds, TRQAM


def peak_mb() -> tuple[float, str]:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, "device peak bytes in use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def program_mb(compiled) -> float:
    m = compiled.compiled.memory_analysis()
    if m is None:
        return float("nan")
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes) / 2**20


def timed(run, state, dispatches):
    """Seconds of the fastest and the median of `dispatches` calls of `state = run(state)`, after one
    warm-up call (rates use the fastest: the least disturbed by other work on a shared machine)."""
    state = jax.block_until_ready(run(state))
    times = []
    for _ in range(dispatches):
        start = time.perf_counter()
        state = jax.block_until_ready(run(state))
        times.append(time.perf_counter() - start)
    return min(times), sorted(times)[len(times) // 2], state


def result_row(mode, seeds, batch_size, n, seconds, median, compile_s, compiled, finite) -> dict:
    """One table row: `seeds` seeds of `n` updates each ran in `seconds` (fastest) / `median` per dispatch."""
    per_seed = n / seconds
    return {
        "mode": mode,
        "seeds": seeds,
        "batch_size": batch_size,
        "per_seed_steps_per_s": per_seed,
        "aggregate_steps_per_s": seeds * per_seed,
        "median_aggregate_steps_per_s": seeds * n / median,
        "samples_per_s": seeds * per_seed * batch_size,
        "compile_s": compile_s,
        "program_mb": program_mb(compiled),
        "peak_mb": peak_mb()[0],
        "finite": finite,
    }


def measure_seeds(config, table, seeds, batch_size, n, dispatches):
    """`seeds` seeds vmapped in one program."""
    agents = create_agents(TRQAM, range(seeds), OBS, ACT, config)
    seed_array = jnp.arange(seeds, dtype=jnp.uint32)
    start = time.perf_counter()
    compiled = fused_updates_seeds.lower(agents, table, seed_array, n, batch_size).compile()
    compile_s = time.perf_counter() - start
    seconds, median, (agents, metrics) = timed(
        lambda s: compiled(s[0], table, seed_array, n, batch_size), (agents, None), dispatches
    )
    finite = bool(all(bool(jnp.all(jnp.isfinite(v))) for v in metrics.values()))
    return result_row("vmapped", seeds, batch_size, n, seconds, median, compile_s, compiled, finite)


def measure_sequential(config, table, seeds, batch_size, n, dispatches):
    """`seeds` single-seed agents, each block dispatched one after another (one compile serves all)."""
    agents = [TRQAM.create(jr.key(s), OBS, ACT, config) for s in range(seeds)]
    seed_arrays = [jnp.asarray(s, jnp.uint32) for s in range(seeds)]
    start = time.perf_counter()
    compiled = fused_updates.lower(agents[0], table, seed_arrays[0], n, batch_size).compile()
    compile_s = time.perf_counter() - start

    def run(state):
        return [compiled(a, table, s, n, batch_size)[0] for a, s in zip(state, seed_arrays)]

    seconds, median, _ = timed(run, agents, dispatches)
    mode = "sequential" if seeds > 1 else "single"
    return result_row(mode, seeds, batch_size, n, seconds, median, compile_s, compiled, True)


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vm = [r for r in rows if r["mode"] == "vmapped"]
    seq = next(r for r in rows if r["mode"] == "sequential")
    big = next(r for r in rows if r["mode"] == "single" and r["batch_size"] > vm[0]["batch_size"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    s = [r["seeds"] for r in vm]
    ax = axes[0]
    ax.plot(s, [r["aggregate_steps_per_s"] for r in vm], "o-", label="seeds vmapped in one program")
    ax.plot(s, [vm[0]["aggregate_steps_per_s"] * k for k in s], "k:", lw=1, label="linear in seeds")
    ax.plot([seq["seeds"]], [seq["aggregate_steps_per_s"]], "s", ms=8, label=f"{seq['seeds']} sequential runs")
    ax.plot([1], [big["aggregate_steps_per_s"]], "^", ms=8, label=f"1 seed, batch {big['batch_size']}")
    ax.set(xscale="log", yscale="log", xlabel="seeds", ylabel="aggregate update steps / s", title="throughput")
    ax.set_xticks(s, [str(k) for k in s])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(s, [r["per_seed_steps_per_s"] for r in vm], "o-")
    ax.set(xscale="log", xlabel="seeds", ylabel="update steps / s per seed", title="per seed")
    ax.set_xticks(s, [str(k) for k in s])
    ax.minorticks_off()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny networks, seeds 1, 2, 4, few steps")
    parser.add_argument("--paper", action="store_true", help="paper-size networks and batch (for a GPU)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "scale.json"))
    opts = parser.parse_args()
    if opts.paper:
        size, config, batch = "paper", AgentConfig(), 256
    elif opts.quick:
        size, batch = "tiny", 64
        config = AgentConfig.small(actor_hidden=(64, 64), critic_hidden=(64, 64), num_critics=4)
    else:
        size, config, batch = "small", AgentConfig.small(), 128
    seed_counts = (1, 2, 4) if opts.quick else (1, 2, 4, 8, 16)
    group = seed_counts[-1] if opts.quick else 8  # vmapped vs sequential, and the big-batch factor
    n, dispatches = (5, 3) if opts.quick else (10, 5)
    table = synthetic_table(jr.key(0))
    device = jax.devices()[0]
    print(f"TRQAM, {size} networks, batch {batch}, {n} updates per dispatch, on {device.device_kind} ({device})")

    rows = []
    header = f"{'mode':<11}{'seeds':>6}{'batch':>7}{'steps/s/seed':>14}{'aggregate':>11}{'compile s':>11}"
    header += f"{'program MB':>12}{'peak MB':>9}"
    print(header)

    def report(row):
        rows.append(row)
        print(
            f"{row['mode']:<11}{row['seeds']:>6}{row['batch_size']:>7}{row['per_seed_steps_per_s']:>14.2f}"
            f"{row['aggregate_steps_per_s']:>11.2f}{row['compile_s']:>11.1f}{row['program_mb']:>12.1f}"
            f"{row['peak_mb']:>9.0f}",
            flush=True,
        )

    report(measure_sequential(config, table, group, batch, n, dispatches))
    report(measure_sequential(config, table, 1, batch * group, n, dispatches))
    for seeds in seed_counts:
        report(measure_seeds(config, table, seeds, batch, n, dispatches))
    vm = next(r for r in rows if r["mode"] == "vmapped" and r["seeds"] == group)
    seq = next(r for r in rows if r["mode"] == "sequential")
    ratio = vm["aggregate_steps_per_s"] / seq["aggregate_steps_per_s"]
    print(f"{group} seeds vmapped / {group} sequential single-seed runs: {ratio:.2f}x aggregate throughput")
    _, peak_kind = peak_mb()
    record = {
        "benchmark": "scale",
        "command": "python benchmarks/scale.py"
        + (" --paper" if opts.paper else "")
        + (" --quick" if opts.quick else ""),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": device.device_kind,
        "jax": jax.__version__,
        "size": size,
        "batch_size": batch,
        "steps_per_dispatch": n,
        "peak_mb_is": peak_kind,
        "rows": rows,
        "vs_sequential": {"seeds": group, "ratio": ratio, "target_on_gpu": 4.0},
    }
    out = pathlib.Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    plot(rows, out.with_suffix(".png"), f"TRQAM ({size} networks, batch {batch}) on {device.device_kind}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
