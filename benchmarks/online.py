"""Benchmark of the online phase (`flowsoc.rl.train_online`): environment stepping alone, updates alone,
and the whole loop with and without overlapping them.

Three measurements on OGBench's cube-single (chunks of 5 actions, the `small` networks):

1. **collect**: `Collector` with E environments, in this process or one worker process each, acting
   with a trained-size policy call per chunk (environment steps/s, the policy included);
2. **update**: the fused online update blocks on a replay buffer alone (updates/s);
3. **loop**: `train_online` after its warm-up, one update per environment step, with `overlap`
   (a block's updates run while the environments step with the previous policy) and without it
   (environment steps/s = updates/s). Perfect overlap would reach `min(collect, update)`; none gives
   `1 / (1/collect + 1/update)`. On a 2-core CPU both halves compete for the same cores, so the gain
   is small; it is meant for a GPU (updates on the device while the CPU steps MuJoCo).

    python benchmarks/online.py            # about 5 minutes on 2 CPU cores
    python benchmarks/online.py --quick    # fewer steps

Prints a table and writes benchmarks/results/online.json.
"""

import argparse
import json
import os
import pathlib
import platform
import time
import warnings


os.environ.setdefault("MUJOCO_GL", "egl")
warnings.filterwarnings("ignore")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
from update_step import synthetic_table  # noqa: E402  (benchmarks/ is on the path)

from flowsoc.rl import (  # noqa: E402  # noqa: E402
    agent_policy,  # noqa: E402
    AgentConfig,
    Collector,
    fused_updates,  # noqa: E402
    make_env_runner,  # noqa: E402
    OnlineConfig,
    ReplayBuffer,  # noqa: E402
    train_online,
    TRQAM,
)
from flowsoc.rl.ogbench import OGBenchEnvFactory  # noqa: E402


ENV = "cube-single-play-singletask-task1-v0"
OBS, ACT = 28, 5


def bench_collect(agent, num_envs: int, workers: bool, steps: int) -> dict:
    runner = make_env_runner(OGBenchEnvFactory(ENV), num_envs, workers)
    try:
        act = agent_policy(agent)
        collector = Collector(runner, seed=0)
        policy = lambda obs, i: act(obs, jr.fold_in(jr.key(0), i))  # noqa: E731
        collector.collect(policy, 20)  # environments built and reset, the policy compiled
        start = time.perf_counter()
        collector.collect(policy, steps // num_envs)
        wall = time.perf_counter() - start
    finally:
        runner.close()
    return dict(
        kind="collect",
        num_envs=num_envs,
        workers=workers,
        steps=steps,
        wall_s=round(wall, 2),
        steps_per_s=round(steps / wall, 1),
    )


def bench_update(agent, offline, block: int, blocks: int, batch: int) -> dict:
    buffer = ReplayBuffer.from_transitions(offline, offline.size + block * blocks)
    seed = jnp.asarray(0, jnp.uint32)
    start = time.perf_counter()
    agent, _ = jax.block_until_ready(fused_updates(agent, buffer, seed, block, batch))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(blocks):
        agent, _ = fused_updates(agent, buffer, seed, block, batch)
    jax.block_until_ready(agent)
    wall = time.perf_counter() - start
    return dict(
        kind="update",
        steps=block * blocks,
        wall_s=round(wall, 2),
        compile_s=round(compile_s, 1),
        steps_per_s=round(block * blocks / wall, 1),
    )


def bench_loop(agent, offline, overlap: bool, num_envs: int, workers: bool, steps: int, batch: int) -> dict:
    """`train_online` for `warmup + steps` minus `warmup` environment steps (same shapes, so one
    compilation; building the environments and workers cancels out)."""
    warmup = 200
    config = OnlineConfig(
        start_training=0,
        steps_per_dispatch=100,
        batch_size=batch,
        num_envs=num_envs,
        env_workers=workers,
        overlap=overlap,
        buffer_capacity=offline.size + warmup + steps,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
    )

    def timed(n):
        start = time.perf_counter()
        train_online(agent, offline, config.replace(steps=n), OGBenchEnvFactory(ENV))
        return time.perf_counter() - start

    timed(warmup)  # compiles
    wall = timed(warmup + steps) - timed(warmup)
    return dict(
        kind="loop",
        overlap=overlap,
        num_envs=num_envs,
        workers=workers,
        steps=steps,
        wall_s=round(wall, 2),
        steps_per_s=round(steps / wall, 1),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    steps = 600 if args.quick else 2000
    config = AgentConfig.small()
    agent = TRQAM.create(jr.key(0), OBS, ACT, config)
    offline = synthetic_table(jr.key(0), 50_000, OBS, ACT)
    rows = []
    for num_envs, workers in ((1, False), (2, False), (2, True), (4, True)):
        rows.append(bench_collect(agent, num_envs, workers, steps))
        print(rows[-1], flush=True)
    rows.append(bench_update(agent, offline, 100, steps // 100, args.batch_size))
    print(rows[-1], flush=True)
    for overlap, num_envs, workers in ((False, 1, False), (True, 1, False), (True, 2, True)):
        rows.append(bench_loop(agent, offline, overlap, num_envs, workers, steps, args.batch_size))
        print(rows[-1], flush=True)
    collect1 = rows[0]["steps_per_s"]
    update = next(r for r in rows if r["kind"] == "update")["steps_per_s"]
    bounds = dict(
        sequential_bound=round(1 / (1 / collect1 + 1 / update), 1), overlap_bound=round(min(collect1, update), 1)
    )
    print()
    print(f"{'measurement':<34}{'env steps/s':>12}")
    for r in rows:
        label = r["kind"]
        if r["kind"] != "update":
            label += f" E={r['num_envs']}{' workers' if r['workers'] else ''}"
        if r["kind"] == "loop":
            label += " overlap" if r["overlap"] else " sequential"
        print(f"{label:<34}{r['steps_per_s']:>12.1f}")
    print(f"{'bound: no overlap (E=1)':<34}{bounds['sequential_bound']:>12.1f}")
    print(f"{'bound: perfect overlap (E=1)':<34}{bounds['overlap_bound']:>12.1f}")
    result = dict(
        benchmark="online",
        command="python benchmarks/online.py" + (" --quick" if args.quick else ""),
        env=ENV,
        agent="TRQAM small (2x128 flows, 2x128 critic x2)",
        batch_size=args.batch_size,
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        devices=str(jax.devices()),
        jax=jax.__version__,
        **bounds,
        rows=rows,
    )
    out = pathlib.Path(__file__).parent / "results" / "online.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
