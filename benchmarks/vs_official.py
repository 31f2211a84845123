"""flowsoc's TRQAM update beside the official one (github.com/yonghdong/trqam), measured in one run.

    python benchmarks/vs_official.py --official /tmp/official/trqam --python /tmp/official/venv/bin/python

`--official` is a work tree of the official code and `--python` the interpreter of a virtual environment
holding its `requirements.txt` (flax, distrax); the official update runs there, in
`benchmarks/_official_update.py`, and flowsoc's in this interpreter (flax is never imported here). Both build
the update at the same shapes (observation 40, action 5 in chunks of 5, batch 256, 10 flow steps):

- `paper`: the official defaults, 4x512 flows and a 10-member 4x512 LayerNorm critic;
- `small`: 2x256 flows and a 10-member 2x256 critic.

flowsoc runs once per lean-adjoint convention (`--conventions`, default `next grid`: the base's time input
t_i + h, the official recursion and the agents' default, and t_i). The processes alternate (official,
flowsoc per convention, official, ...) `--repeats` times per size, so that the load of a shared machine falls
on both alike; every process builds its agent, calls the jitted update `--warmup` times (compilation) and
then `--calls` timed times on one batch held on the device, as the official main.py calls `agent.update`.

Reported per side: steps/s (median of the timed calls, pooled over processes), the ratio to the official
code, agent creation, first call (trace and compile), time to steady speed (creation and every call up to
the first that takes at most 1.25x the steady median; the official update compiles a second time on its
second call), GFLOP per update with every loop iteration counted (`update_step.honest_gflop` for flowsoc;
the official update is written with Python loops, so XLA's count of it is complete), achieved GFLOP/s and
peak host memory (before any extra compilation for counting). Writes benchmarks/results/vs_official.json.
Not run in CI.
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time


START = time.perf_counter()
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _official_update import ACT, FLOW_STEPS, HORIZON, OBS, SIZES, synthetic_batch  # noqa: E402


STEADY_FACTOR = 1.25
FUSED_STEPS = 5
CONVENTIONS = {
    "next": dict(adjoint_base_time="next"),
    "grid": dict(adjoint_base_time="grid"),
    "chain": dict(adjoint_base_time="grid", adjoint_final_ode_step=True),
}


def flowsoc_config(size: str, convention: str):
    from flowsoc.rl import AgentConfig

    actor_hidden, critic_hidden, members, _ = SIZES[size]
    return AgentConfig(
        horizon=HORIZON,
        actor_hidden=actor_hidden,
        critic_hidden=critic_hidden,
        num_critics=members,
        flow_steps=FLOW_STEPS,
        discount=0.99,
        **CONVENTIONS[convention],
    )


def flowsoc_batch(batch_size: int):
    import jax.numpy as jnp

    from flowsoc.rl import ChunkBatch

    return ChunkBatch(**{k: jnp.asarray(v) for k, v in synthetic_batch(batch_size).items()})


def child(size: str, convention: str, calls: int, warmup: int, count: bool, fused: bool = False) -> dict:
    """flowsoc's side: the same protocol as `_official_update.py` (`fused`: `flowsoc.rl.fused_updates`, the
    training loop's dispatch, timed per update)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from flowsoc.rl import TRQAM

    imported = time.perf_counter()
    config = flowsoc_config(size, convention)
    batch = flowsoc_batch(SIZES[size][3])
    jax.block_until_ready(batch)
    t0 = time.perf_counter()
    agent = TRQAM.create(jr.key(0), OBS, ACT, config)
    jax.block_until_ready(agent)
    creation = time.perf_counter() - t0
    update = eqx.filter_jit(lambda agent, batch: agent.update(batch))
    per_call = 1
    if fused:  # the training loop's dispatch: FUSED_STEPS updates in one lax.scan, batches sampled on the device
        from update_step import synthetic_table

        from flowsoc.rl import fused_updates

        table, seed, per_call = synthetic_table(jr.key(1), obs=OBS, act=ACT), jnp.asarray(0, jnp.uint32), FUSED_STEPS
        update = lambda agent, batch: fused_updates(agent, table, seed, FUSED_STEPS, batch.observations.shape[0])  # noqa: E731
    times = []
    for _ in range(warmup + calls):
        t = time.perf_counter()
        agent, metrics = update(agent, batch)
        jax.block_until_ready((agent, metrics))
        times.append(time.perf_counter() - t)
    finite = bool(all(bool(jnp.all(jnp.isfinite(v))) for v in metrics.values()))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gflop = float("nan")
    if count:
        from update_step import honest_gflop

        gflop = honest_gflop(agent, batch)
    return dict(
        side="flowsoc",
        size=size,
        convention=convention,
        fused=fused,
        updates_per_call=per_call,
        import_s=imported - START,
        creation_s=creation,
        calls_s=times,
        warmup=warmup,
        gflop=gflop,
        peak_mb=peak_mb,
        finite=finite,
        jax=jax.__version__,
    )


def run_child(cmd: list[str]) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_to_steady(record: dict, steady: float) -> float:
    """Creation plus every call up to the first that takes at most STEADY_FACTOR x the steady median."""
    total, per_call = record["creation_s"], record.get("updates_per_call", 1)
    for t in record["calls_s"]:
        total += t
        if t / per_call <= STEADY_FACTOR * steady:
            return total
    return float("nan")


def summarise(records: list[dict]) -> dict:
    timed = [t / r.get("updates_per_call", 1) for r in records for t in r["calls_s"][r["warmup"] :]]
    median = statistics.median(timed)
    gflops = [r["gflop"] for r in records if r["gflop"] == r["gflop"]]
    gflop = gflops[0] if gflops else float("nan")
    return {
        "processes": len(records),
        "timed_calls": len(timed),
        "median_s_per_step": median,
        "steps_per_s": 1.0 / median,
        "per_process_median_s": [
            statistics.median(r["calls_s"][r["warmup"] :]) / r.get("updates_per_call", 1) for r in records
        ],
        "creation_s": statistics.median(r["creation_s"] for r in records),
        "first_call_s": statistics.median(r["calls_s"][0] for r in records),
        "second_call_s": statistics.median(r["calls_s"][1] for r in records),
        "time_to_steady_s": statistics.median(time_to_steady(r, median) for r in records),
        "import_s": statistics.median(r["import_s"] for r in records),
        "gflop_per_update": gflop,
        "achieved_gflop_per_s": gflop / median,
        "peak_host_mb": max(r["peak_mb"] for r in records),
        "finite": all(r["finite"] for r in records),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=pathlib.Path, help="work tree of github.com/yonghdong/trqam")
    parser.add_argument("--python", default=None, help="Python of a virtual environment with the official code's deps")
    parser.add_argument("--sizes", nargs="+", default=["paper", "small"], choices=sorted(SIZES))
    parser.add_argument("--conventions", nargs="+", default=["next", "grid"], choices=sorted(CONVENTIONS))
    parser.add_argument("--repeats", type=int, default=2, help="processes per side and size")
    parser.add_argument("--calls", type=int, default=None, help="timed calls per process (default: 8 paper, 30 small)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "vs_official.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="paper", help=argparse.SUPPRESS)
    parser.add_argument("--convention", default="next", help=argparse.SUPPRESS)
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fused-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--fused",
        action="store_true",
        help=f"also time flowsoc's training dispatch (fused_updates, {FUSED_STEPS} updates per call; first convention)",
    )
    opts = parser.parse_args()

    if opts.child:
        print(json.dumps(child(opts.size, opts.convention, opts.calls, opts.warmup, opts.count, opts.fused_child)))
        return
    if opts.official is None or opts.python is None:
        parser.error("--official and --python are required")

    results, raw = {}, []
    for size in opts.sizes:
        calls = opts.calls or (8 if size == "paper" else 30)
        sides = list(opts.conventions) + ([f"{opts.conventions[0]}-fused"] if opts.fused else [])
        records = {"official": []} | {c: [] for c in sides}
        for rep in range(opts.repeats):
            jobs = [("official", [opts.python, str(HERE / "_official_update.py"), "--official", str(opts.official)])]
            jobs += [(c, [sys.executable, __file__, "--child", "--convention", c]) for c in opts.conventions]
            if opts.fused:
                fused_cmd = [sys.executable, __file__, "--child", "--convention", opts.conventions[0], "--fused-child"]
                jobs.append((sides[-1], fused_cmd))
            if rep % 2:  # A B A B ... then B A: neither side always runs first
                jobs = jobs[::-1]
            for name, cmd in jobs:
                n, warm = (calls, opts.warmup) if name in records and not name.endswith("-fused") else (0, 0)
                if name.endswith("-fused"):  # calls of FUSED_STEPS updates; one compilation
                    n, warm = max(2, calls // FUSED_STEPS + 1), 1
                cmd = cmd + ["--size", size, "--calls", str(n), "--warmup", str(warm)]
                if name in opts.conventions and rep == 0:
                    cmd.append("--count")
                record = run_child(cmd)
                records[name].append(record)
                raw.append(record)
                med = statistics.median(record["calls_s"][record["warmup"] :]) / record.get("updates_per_call", 1)
                first = record["calls_s"][0]
                print(f"  {size} {name:<8} {1 / med:6.2f} steps/s  first call {first:5.1f} s", flush=True)
        summary = {name: summarise(recs) for name, recs in records.items()}
        official = summary["official"]
        for name in sides:
            summary[name]["ratio_to_official"] = summary[name]["steps_per_s"] / official["steps_per_s"]
            summary[name]["time_to_steady_ratio"] = summary[name]["time_to_steady_s"] / official["time_to_steady_s"]
        results[size] = summary

    print(f"\nTRQAM update, flowsoc vs official ({platform.processor() or platform.machine()}, float32, CPU)")
    head = f"{'size':<6}{'side':<10}{'steps/s':>8}{'ratio':>7}{'create s':>9}{'1st s':>7}{'steady s':>9}"
    print(head + f"{'GFLOP':>7}{'GFLOP/s':>8}{'peak MB':>8}")
    for size, summary in results.items():
        for name, r in summary.items():
            ratio = r.get("ratio_to_official", 1.0)
            print(
                f"{size:<6}{name:<10}{r['steps_per_s']:>8.2f}{ratio:>7.2f}{r['creation_s']:>9.1f}"
                f"{r['first_call_s']:>7.1f}{r['time_to_steady_s']:>9.1f}{r['gflop_per_update']:>7.1f}"
                f"{r['achieved_gflop_per_s']:>8.1f}{r['peak_host_mb']:>8.0f}"
            )
    record = {
        "benchmark": "vs_official",
        "command": "python benchmarks/vs_official.py --official PATH/TO/trqam --python PATH/TO/venv/bin/python "
        + " ".join(a for a in sys.argv[1:] if not a.startswith("/") and a not in ("--official", "--python")),
        "official_commit": subprocess.run(
            ["git", "-C", str(opts.official), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "steady_factor": STEADY_FACTOR,
        "results": results,
        "processes": raw,
    }
    out = pathlib.Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
