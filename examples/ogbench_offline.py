"""TRQAM (or QAM, BAM) offline on an OGBench single-task dataset, evaluated in the environment.

With no arguments: the embedded default. A small cube-single dataset is generated with OGBench's
own scripted oracle (cached after the first run), TRQAM trains with the `small` preset, and the
fine-tuned policy and the BC flow trained beside it are evaluated every few thousand steps. It
prints a success-rate table and writes runs/<name>/learning_curve.png (about 10 minutes on 2 CPU
cores).

    python examples/ogbench_offline.py
    python examples/ogbench_offline.py --env cube-double-play-singletask-task2-v0 --agent trqam --preset paper
    python examples/ogbench_offline.py --help
"""

import os
import sys
import warnings


os.environ.setdefault("MUJOCO_GL", "egl")  # no window system needed: evaluation does not render
warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")  # OGBench's float64 Box bounds
warnings.filterwarnings("ignore", message=".*DISPLAY.*")

from flowsoc.rl.ogbench import OfflineArgs, run_cli, run_offline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return run_cli(OfflineArgs, run_offline, argv)


if __name__ == "__main__":
    sys.exit(main())
