"""Benchmark of the OGBench dataset generator (`python -m flowsoc.rl.datagen`).

Env steps per second (OGBench's scripted oracle + MuJoCo step, everything included) for one
worker and for several worker processes, on the same episodes (the files are identical
whatever the worker count, which the run also checks). Wall time includes starting the
worker processes (each imports OGBench and builds its environment, a few seconds), so short
runs understate the steady-state scaling; `steady steps/s` subtracts the time to the first
finished episode.

    python benchmarks/datagen.py                       # cube-double play, 1 and 2 workers
    python benchmarks/datagen.py --env scene-play-v0 --episodes 16 --workers 1 2 4
    python benchmarks/datagen.py --quick               # a few short episodes

Prints a table and writes benchmarks/results/datagen.json.
"""

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time
import warnings

import numpy as np


os.environ.setdefault("MUJOCO_GL", "egl")
warnings.filterwarnings("ignore")

from flowsoc.rl import datagen  # noqa: E402


def run(env: str, episodes: int, length: int, workers: int, out_dir: pathlib.Path) -> dict:
    options = datagen.GenerateOptions(
        env=env,
        episodes=episodes,
        val_episodes=1,
        episode_length=length,
        workers=workers,
        out=str(out_dir / f"w{workers}" / "data.npz"),
        progress=False,
        overwrite=True,
    )
    _, cfg, n_train, n_val = datagen.rollout_config(options)
    total = n_train + n_val
    first = None
    start = time.perf_counter()
    collected = []
    for arrays in datagen._episodes(cfg, total, workers):
        if first is None:
            first = time.perf_counter() - start
        collected.append(arrays)
    wall = time.perf_counter() - start
    steps = sum(len(a["terminals"]) for a in collected)
    steady_steps = steps - len(collected[0]["terminals"])
    digest = np.concatenate([a["actions"].ravel() for a in collected])
    return dict(
        workers=workers,
        episodes=total,
        steps=steps,
        wall_s=round(wall, 2),
        first_episode_s=round(first, 2),
        steps_per_s=round(steps / wall, 1),
        steady_steps_per_s=round(steady_steps / max(wall - first, 1e-9), 1),
        _digest=digest,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="cube-double-play-v0")
    parser.add_argument("--episodes", type=int, default=8, help="training episodes (plus 1 validation)")
    parser.add_argument("--episode-length", type=int, default=501)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="3 episodes of 101 steps")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "datagen.json"))
    args = parser.parse_args()
    episodes, length = (3, 101) if args.quick else (args.episodes, args.episode_length)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            rows.append(run(args.env, episodes, length, w, pathlib.Path(tmp)))
    digests = [r.pop("_digest") for r in rows]
    identical = all(np.array_equal(digests[0], d) for d in digests[1:])
    base = rows[0]["steps_per_s"]
    for r in rows:
        r["speedup"] = round(r["steps_per_s"] / base, 2)

    print(f"\n{args.env}: {episodes}+1 episodes x {length} steps, {os.cpu_count()} CPU cores")
    header = f"{'workers':>7} {'steps':>7} {'wall s':>8} {'1st ep s':>8} {'steps/s':>8} {'steady/s':>9} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['workers']:>7} {r['steps']:>7} {r['wall_s']:>8} {r['first_episode_s']:>8} "
            f"{r['steps_per_s']:>8} {r['steady_steps_per_s']:>9} {r['speedup']:>8}"
        )
    print(f"identical data across worker counts: {identical}")

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(
        benchmark="datagen",
        env=args.env,
        episodes=episodes + 1,
        episode_length=length,
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        python=platform.python_version(),
        identical_across_workers=identical,
        rows=rows,
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
