"""TRQAM (or QAM, BAM) offline on an OGBench single-task dataset, then online: the agent keeps
training while it acts in the environment, its replay buffer holding the offline data and the new
transitions.

With no arguments: the embedded default. The small cube-single dataset (generated with OGBench's
own scripted oracle, shared with examples/ogbench_offline.py), 10K offline updates with the
`small` preset, then 10K environment steps online (updates from step 1K, one per step). It prints
the success rate at the start, after the offline phase and after the online phase, and writes
runs/<name>/learning_curve.png with the phase boundary marked (about 10 minutes on 2 CPU cores).

    python examples/ogbench_offline_to_online.py
    python examples/ogbench_offline_to_online.py --env cube-double-play-singletask-task2-v0 --preset paper
    python examples/ogbench_offline_to_online.py --num-envs 4 --env-workers   # parallel environments
    python examples/ogbench_offline_to_online.py --help
"""

import os
import sys
import warnings


os.environ.setdefault("MUJOCO_GL", "egl")  # no window system needed: nothing is rendered
warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")  # OGBench's float64 Box bounds
warnings.filterwarnings("ignore", message=".*DISPLAY.*")

from flowsoc.rl.ogbench import OfflineToOnlineArgs, run_cli, run_offline_to_online  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return run_cli(OfflineToOnlineArgs, run_offline_to_online, argv)


if __name__ == "__main__":
    sys.exit(main())
