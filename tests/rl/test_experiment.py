"""The offline experiment: presets resolve as documented, and `examples/ogbench_offline.py` runs
end to end in smoke mode (generated data, training, evaluation, table, figure) and refuses to
overwrite a run."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from flowsoc.rl import AgentConfig, QAM, TRQAM
from flowsoc.rl.experiment import OfflineArgs, plan


ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_plan_paper_and_small():
    paper = plan(OfflineArgs(env="cube-double-play-singletask-task2-v0", preset="paper", run_dir="r"))
    assert paper.agent_cls is TRQAM and paper.agent_config == AgentConfig.paper("cube-double")
    assert paper.train_config.steps == 1_000_000 and paper.train_config.batch_size == 256
    assert paper.train_config.eval_every == 50_000 and paper.train_config.eval_episodes == 50
    assert paper.data_dir is None and paper.episodes is None  # the official location and size
    small = plan(OfflineArgs(agent="qam", inv_temp=3.0, steps=1000, eval_every=500, steps_per_dispatch=100))
    assert small.agent_cls is QAM and small.agent_config.inv_temp == 3.0
    assert small.agent_config.actor_hidden == (128, 128) and small.train_config.steps == 1000
    assert "ogbench-50ep" in small.data_dir  # a cache of its own, never the official file names
    assert small.run_dir == pathlib.Path("runs/cube-single-play-singletask-task1-v0-qam-small-seed0")
    assert small.train_config.eval_flows == ("policy", "behaviour")
    with pytest.raises(ValueError, match="multiple of steps_per_dispatch"):
        plan(OfflineArgs(steps=1050))


def run_example(tmp_path, *flags):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "MUJOCO_GL": "egl"}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ogbench_offline.py"), "--smoke", "--no-progress", *flags],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )


def test_example_smoke_mode(tmp_path):
    out = run_example(tmp_path, "--run-dir", "run")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    rows = [line.split() for line in lines[header + 1 : header + 3]]
    assert rows[0][0] == "TRQAM" and rows[1][0] == "BC"
    for row in rows:
        assert all(cell.endswith("%") for cell in row[-4:-1])
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 20 and [e["step"] for e in summary["evals"]] == [0, 20]
    assert (run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "cache").exists()  # the generated data went to the cache
    # the same command again refuses to overwrite the run (resume itself: tests/rl/test_train.py)
    again = run_example(tmp_path, "--run-dir", "run")
    assert again.returncode == 1 and "--resume" in again.stderr
