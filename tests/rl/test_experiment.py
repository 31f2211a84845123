"""The experiments: presets resolve as documented; `examples/ogbench_offline.py` runs end to end in
smoke mode (generated data, training, evaluation, table, figure) and refuses to overwrite a run;
`examples/ogbench_offline_to_online.py` runs both phases in smoke mode."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from flowsoc.rl import AgentConfig, QAM, TRQAM
from flowsoc.rl.experiment import OfflineArgs, OfflineToOnlineArgs, plan, plan_online


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


def test_plan_offline_to_online():
    paper, online, factory = plan_online(
        OfflineToOnlineArgs(env="puzzle-3x3-play-singletask-task1-v0", preset="paper", run_dir="r")
    )
    assert paper.train_config.steps == 1_000_000 and online.steps == 500_000
    assert online.start_training == 5_000 and online.utd == 1 and online.batch_size == 256
    assert online.eval_every == 50_000 and online.eval_episodes == 50
    # puzzle: dense under the TRQAM paper's protocol (its commands pass --sparse=False), as offline
    assert not online.sparse_rewards and not paper.preset.sparse and online.kl_budget is None
    assert factory.name == "puzzle-3x3-play-singletask-task1-v0" and factory.env_kwargs == ()
    qam, online_qam, _ = plan_online(
        OfflineToOnlineArgs(env="puzzle-3x3-play-singletask-task1-v0", agent="qam", preset="paper", run_dir="r")
    )
    assert online_qam.sparse_rewards and qam.preset.sparse  # the QAM paper's runs make puzzle sparse
    small, online, _ = plan_online(OfflineToOnlineArgs(online_kl_budget=0.5, num_envs=4, env_workers=True))
    assert small.train_config.steps == 10_000 and online.steps == 10_000 and online.start_training == 1_000
    assert not online.sparse_rewards and online.kl_budget == 0.5 and online.num_envs == 4 and online.env_workers
    assert small.train_config.eval_flows == ("policy",)
    assert small.run_dir == pathlib.Path("runs/cube-single-play-singletask-task1-v0-trqam-small-o2o-seed0")
    with pytest.raises(ValueError, match="multiple of num_envs"):
        plan_online(OfflineToOnlineArgs(num_envs=3))


def test_offline_to_online_example_smoke_mode(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "MUJOCO_GL": "egl"}
    script = ROOT / "examples" / "ogbench_offline_to_online.py"
    out = subprocess.run(
        [sys.executable, str(script), "--smoke", "--no-progress", "--run-dir", "run"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header].split() == ["method", "start", "offline", "online", "best", "online"]
    row = lines[header + 1].split()
    assert row[0] == "TRQAM" and all(cell.endswith("%") for cell in row[1:])
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    # 20 offline updates, then 40 environment steps with updates from step 20: 20 more.
    assert summary["offline_steps"] == 20 and summary["online_steps"] == 40 and summary["updates"] == 40
    assert [e["step"] for e in summary["evals"]] == [0, 20, 40, 60]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    online = [r for r in rows if r.get("phase") == "online" and r["kind"] == "train"]
    assert [r["env_step"] for r in online] == [10, 20, 30, 40]
    assert [r["buffer_size"] for r in online] == [300 + 10 * i for i in range(1, 5)]  # 3 episodes of 100
    assert (run / "online" / "LATEST").read_text() == "ckpt-0000000040"
    assert (run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------- BC pre-training plan


def test_plan_bc_pretraining():
    from flowsoc.rl.pretrain import bc_checkpoint_name, BCConfig

    smoke = plan(OfflineArgs(smoke=True))
    assert smoke.agent_cls is TRQAM and smoke.pretrain is not None
    assert smoke.pretrain.steps == 20 and smoke.pretrain.eval_every == 0  # flow matching only: no evaluation
    assert smoke.pretrain.batch_size == smoke.train_config.batch_size and smoke.pretrain.seed == 0
    assert smoke.pretrain.steps % smoke.pretrain.steps_per_dispatch == 0
    name = bc_checkpoint_name(
        "cube-single-play-singletask-task1-v0", BCConfig.of(smoke.agent_config), 20, smoke.train_config.batch_size, 0
    )
    assert smoke.bc_dir == pathlib.Path("runs") / "bc" / name
    assert name == "cube-single-play-singletask-task1-v0-h5-32x32-20steps-b16-seed0"
    # Next to the run directory, one per dataset/flow/steps/batch/seed, shared by agents and fine-tuning seeds.
    other = plan(OfflineArgs(smoke=True, run_dir="out/x", seed=3, bc_seed=2))
    assert other.bc_dir == pathlib.Path("out/bc") / name.replace("seed0", "seed2") and other.pretrain.seed == 2
    assert plan(OfflineArgs(smoke=True, agent="qam", protocol="trqam")).bc_dir == smoke.bc_dir
    assert plan(OfflineArgs(smoke=True, bc_checkpoint="my/bc")).bc_dir == pathlib.Path("my/bc")
    # The QAM paper's protocol and --pretrain-steps 0: no pre-training.
    for args in (OfflineArgs(smoke=True, agent="qam"), OfflineArgs(smoke=True, pretrain_steps=0)):
        p = plan(args)
        assert p.pretrain is None and p.bc_dir is None
    assert plan(OfflineArgs(smoke=True, agent="qam", pretrain_steps=40)).pretrain.steps == 40
    with pytest.raises(ValueError, match="--bc-checkpoint needs --pretrain-steps > 0"):
        plan(OfflineArgs(smoke=True, pretrain_steps=0, bc_checkpoint="my/bc"))
    with pytest.raises(ValueError, match=r"--seed must be an integer in \[0, 2\^31\), got -1"):
        plan(OfflineArgs(smoke=True, seed=-1))
    with pytest.raises(ValueError, match="--workers must be at least 1"):
        plan(OfflineArgs(smoke=True, workers=0))
    with pytest.raises(ValueError, match="--bc-checkpoint needs --pretrain-steps > 0"):
        plan(OfflineArgs(smoke=True, agent="qam", bc_checkpoint="my/bc"))
    with pytest.raises(ValueError, match="--pretrain-steps must be a non-negative integer, got -5"):
        plan(OfflineArgs(smoke=True, pretrain_steps=-5))
    # The small preset pre-trains 5,000 steps for the TRQAM protocol.
    assert plan(OfflineArgs()).pretrain.steps == 5_000 and plan(OfflineArgs(agent="qam")).pretrain is None


def test_plan_bc_pretraining_paper_protocols():
    env = "cube-triple-play-singletask-task2-v0"
    trqam = plan(OfflineArgs(preset="paper", env=env, run_dir="r"))
    assert trqam.pretrain.steps == 300_000 and trqam.pretrain.batch_size == 256
    assert trqam.pretrain.steps_per_dispatch == 500 and trqam.pretrain.checkpoint_every == 30_000
    assert trqam.agent_config.actor_hidden == (1024,) * 4 and trqam.agent_config.actor_layer_norm
    assert trqam.bc_dir.name == f"{env}-h5-1024x1024x1024x1024-ln-300000steps-b256-seed0"
    qam = plan(OfflineArgs(preset="paper", env=env, agent="qam", run_dir="r"))
    assert qam.pretrain is None and qam.bc_dir is None
    assert qam.agent_config.actor_hidden == (512,) * 4 and qam.agent_config.critic_hidden == (512,) * 4
    assert not qam.agent_config.actor_layer_norm


def test_resuming_decides_between_fine_tuning_and_bc_checkpoints(tmp_path, capsys):
    import dataclasses

    from flowsoc.rl.experiment import _resuming, pretrained_flow

    args = OfflineArgs(smoke=True, run_dir=str(tmp_path / "run"), resume=True)
    p = plan(args)
    assert p.bc_dir == tmp_path / "bc" / p.bc_dir.name
    assert _resuming(p, dataclasses.replace(args, resume=False)) is False
    with pytest.raises(ValueError, match="--resume: there is no run in .*check --run-dir"):
        _resuming(p, args)  # nothing at all (a mistyped --run-dir): refused, never a new run from zero
    (p.bc_dir / "checkpoint").mkdir(parents=True)
    (p.bc_dir / "checkpoint" / "meta.json").write_text(json.dumps({"step": p.pretrain.steps}))
    with pytest.raises(ValueError, match="there is no run in"):
        _resuming(p, args)  # a complete shared BC flow says nothing about this run
    (p.bc_dir / "checkpoint" / "meta.json").write_text(json.dumps({"step": p.pretrain.steps // 2}))
    assert _resuming(p, args) is False  # stopped during pre-training: fine-tuning starts after it
    assert "continuing from the BC pre-training" in capsys.readouterr().out
    (p.run_dir / "checkpoint").mkdir(parents=True)
    (p.run_dir / "checkpoint" / "meta.json").write_text("{}")
    assert _resuming(p, args) is True
    # A resumed fine-tuning run holds every network: no pre-trained flow is needed (nor read).
    assert pretrained_flow(p, data=None, resume=True) is None
    assert pretrained_flow(plan(OfflineArgs(smoke=True, agent="qam")), data=None) is None


def test_cli_failures_are_one_line_with_their_exit_codes(capsys):
    """Usage errors exit 2, run failures 1, Ctrl-C 130 (the driver has already said where the state is),
    each without a traceback."""
    import dataclasses as dc

    from flowsoc import CheckpointError
    from flowsoc.rl.experiment import run_cli

    @dc.dataclass(frozen=True)
    class Args:
        x: int = 0

    def failing(error):
        def run(args):
            raise error

        return run

    cases = [
        (ValueError("--steps must be positive"), 2),
        (CheckpointError("cannot write in /ro (Permission denied)"), 1),
        (PermissionError(13, "Permission denied", "/ro/metrics.jsonl"), 1),
        (KeyboardInterrupt(), 130),
    ]
    for error, code in cases:
        assert run_cli(Args, failing(error), argv=[]) == code
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if code != 130:
            assert err.count("\n") == 1 and err.startswith("error: ")
    assert run_cli(Args, lambda args: None, argv=[]) == 0
