"""Benchmark of the locomotion experts and the navigation datasets they generate.

- SAC training throughput of the ant and humanoid experts (`flowsoc.rl.ogbench.train_expert`,
  upstream's recipes: the ant one update of batch 256 per environment step, the humanoid one per
  four with 3x1024 LayerNorm critics), measured over a short run after the random-action phase and
  extrapolated to upstream's 400K and 40M steps, next to the shipped ant expert's recorded full
  training and its evaluation;
- navigation dataset generation (`python -m flowsoc.rl.datagen`, the expert following the maze's oracle
  subgoals) in env steps/s for 1 and 2 worker processes, and the statistics of what was generated
  (`maze_stats`: coverage of the maze's free cells, x-y speed, upright share; goals reached).

    python benchmarks/experts.py                # 5K training steps each; antmaze-large, 8+1 episodes
    python benchmarks/experts.py --quick        # 2K training steps, 2+1 short episodes

Prints tables and writes benchmarks/results/experts.json.
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
import warnings


os.environ.setdefault("MUJOCO_GL", "egl")
warnings.filterwarnings("ignore")

import jax  # noqa: E402

from flowsoc.rl import datagen  # noqa: E402
from flowsoc.rl.ogbench import expert_config, make_xy_env, SHIPPED, train_expert  # noqa: E402


UPSTREAM = {"ant": (400_000, 1), "humanoid": (40_000_000, 4)}  # environment steps, steps per update


def training_throughput(expert: str, steps: int, seed_steps: int) -> dict:
    """Env steps/s of SAC with upstream's update rate (after `seed_steps` random steps)."""
    total, update_every = UPSTREAM[expert]
    times = {}

    def log(agent, row):
        times[row["step"]] = time.perf_counter()

    start = time.perf_counter()
    train_expert(
        lambda: make_xy_env(expert),
        expert_config(expert),
        steps=seed_steps + steps,
        seed_steps=seed_steps,
        update_every=update_every,
        steps_per_dispatch=1000,
        progress=False,
        log=log,
    )
    learning = [t for s, t in sorted(times.items()) if s > seed_steps]
    # Skip the first learning block (it compiles the fused updates).
    steady = (len(learning) - 1) * 1000 / (learning[-1] - learning[0])
    return dict(
        expert=expert,
        update_every=update_every,
        seed_steps=seed_steps,
        learning_steps=steps,
        wall_s=round(time.perf_counter() - start, 1),
        steps_per_s_with_updates=round(steady, 1),
        upstream_steps=total,
        hours_for_upstream_steps=round(total / steady / 3600, 1),
    )


def generation(env: str, episodes: int, length: int | None, workers: int, root: pathlib.Path) -> dict:
    options = datagen.GenerateOptions(
        env=env,
        episodes=episodes,
        val_episodes=1,
        episode_length=length,
        workers=workers,
        out=str(root / f"w{workers}" / f"{env}.npz"),
        progress=False,
        overwrite=True,
    )
    result = datagen.generate(options)
    steps = result.train_steps + result.val_steps
    meta = json.loads(result.train_path.with_suffix(".json").read_text())
    stats = datagen.maze_stats(result.train_path)
    return dict(
        env=env,
        workers=workers,
        episodes=episodes + 1,
        steps=steps,
        wall_s=round(result.seconds, 2),
        steps_per_s=round(steps / result.seconds, 1),
        goals_per_episode=meta["goals_reached"]["per_episode"],
        coverage=round(stats["coverage"], 3),
        mean_xy_step=round(stats["mean_xy_step"], 4),
        upright=round(stats["upright"], 3),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="antmaze-large-navigate-v0")
    parser.add_argument("--episodes", type=int, default=8, help="training episodes (plus 1 validation)")
    parser.add_argument("--train-steps", type=int, default=5000, help="SAC steps with updates to time")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--experts", nargs="+", default=["ant", "humanoid"], choices=["ant", "humanoid"])
    parser.add_argument("--quick", action="store_true", help="2K training steps, 2+1 episodes of 201 steps")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "experts.json"))
    args = parser.parse_args()
    train_steps, episodes, length = (2000, 2, 201) if args.quick else (args.train_steps, args.episodes, None)

    training = [training_throughput(e, train_steps, seed_steps=1000) for e in args.experts]
    record_path = SHIPPED["ant"].with_suffix(".json")
    shipped = json.loads(record_path.read_text()) if record_path.exists() else None
    with tempfile.TemporaryDirectory() as tmp:
        rows = [generation(args.env, episodes, length, w, pathlib.Path(tmp)) for w in args.workers]

    print(f"\nSAC expert training ({os.cpu_count()} CPU cores, {jax.devices()[0].platform}):")
    for t in training:
        print(
            f"  {t['expert']}: {t['steps_per_s_with_updates']} env steps/s with one update per {t['update_every']} "
            f"-> {t['hours_for_upstream_steps']} h for upstream's {t['upstream_steps']:,} steps"
        )
    if shipped is not None:
        nav = shipped["navigation"]
        print(
            f"  shipped expert: {shipped['steps']} steps in {shipped.get('train_wall_s', shipped.get('wall_s'))} s; "
            f"return {shipped['evaluation']['return']:.1f}; {nav['env']} goals reached {nav['success']:.0%}"
        )
    print(f"\n{args.env} generation:")
    header = f"{'workers':>7} {'steps':>7} {'wall s':>7} {'steps/s':>8} {'goals/ep':>8} {'coverage':>8} {'upright':>7}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(
            f"{r['workers']:>7} {r['steps']:>7} {r['wall_s']:>7} {r['steps_per_s']:>8} "
            f"{r['goals_per_episode']:>8} {r['coverage']:>8} {r['upright']:>7}"
        )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(
        benchmark="experts",
        command="python benchmarks/experts.py" + ("" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:])),
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        python=platform.python_version(),
        device=str(jax.devices()[0]),
        training=training,
        shipped_expert=None
        if shipped is None
        else {k: shipped[k] for k in ("steps", "evaluation", "navigation", "xy_reach") if k in shipped},
        generation=rows,
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
