"""The experiments: presets resolve as documented; `examples/ogbench_offline.py` runs end to end in
smoke mode (generated data, training, evaluation, table, figure) and refuses to overwrite a run;
`examples/ogbench_offline_to_online.py` runs both phases in smoke mode."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from flowsoc.rl import AgentConfig, QAM, TRQAM
from flowsoc.rl.ogbench._experiment import OfflineArgs, OfflineToOnlineArgs, plan, plan_online


ROOT = pathlib.Path(__file__).resolve().parents[3]


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
    from flowsoc.rl._pretrain import bc_checkpoint_name, BCConfig

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
    # The paper preset trains cube-triple on its 10M-transition shards, so the BC cache is named after them too.
    assert trqam.bc_dir.name == f"{env}-cube-triple-play-10m-v0-h5-1024x1024x1024x1024-ln-300000steps-b256-seed0"
    qam = plan(OfflineArgs(preset="paper", env=env, agent="qam", run_dir="r"))
    assert qam.pretrain is None and qam.bc_dir is None
    assert qam.agent_config.actor_hidden == (512,) * 4 and qam.agent_config.critic_hidden == (512,) * 4
    assert not qam.agent_config.actor_layer_norm


def test_resuming_decides_between_fine_tuning_and_bc_checkpoints(tmp_path, capsys):
    import dataclasses

    from flowsoc.rl.ogbench._experiment import _resuming, pretrained_flow

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
    from flowsoc.rl.ogbench._experiment import run_cli

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


# ---------------------------------------------------------------------------------- messages in the user's words


def _cli_error(args_type, argv, capsys, code=2):
    """`run_cli(args_type, ..., argv)` fails with exit `code` and one line `error: ...`; returns that line."""
    from flowsoc.rl.ogbench._experiment import run_cli, run_offline, run_offline_to_online

    run = run_offline_to_online if args_type is OfflineToOnlineArgs else run_offline
    assert run_cli(args_type, run, argv) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    assert "╭" not in captured.err and "│" not in captured.err  # no tyro box
    return lines[0]


@pytest.mark.parametrize("env", ["antmaze-foo-v0", "cube-single", "cube-single-play-v1", "Cube"])
def test_unknown_env_shows_the_name_format_the_domains_and_the_list(env, capsys):
    line = _cli_error(OfflineArgs, ["--env", env], capsys)
    assert line.startswith(f"error: --env: '{env}'")
    assert "e.g. cube-double-play-singletask-task2-v0" in line  # the format, by a real name
    assert "cube-{single,double,triple,quadruple}" in line  # the default's own domain is among those listed
    for domain in ("scene", "puzzle-{3x3", "pointmaze-", "antmaze-", "humanoidmaze-"):
        assert domain in line
    assert line.endswith("python -m flowsoc.rl.datagen --list")


@pytest.mark.parametrize(
    "args_type, argv, expected",
    [
        (OfflineArgs, ["--steps", "-1"], "error: --steps must be a positive integer, got -1."),
        (OfflineArgs, ["--kl-budget", "-1"], "error: --kl-budget must be > 0, got -1.0."),
        (OfflineArgs, ["--agent", "qam", "--inv-temp", "0"], "error: --inv-temp must be > 0, got 0.0."),
        (OfflineArgs, ["--batch-size", "0"], "error: --batch-size must be a positive integer, got 0."),
        (OfflineArgs, ["--steps-per-dispatch", "0"], "error: --steps-per-dispatch must be a positive integer, got 0."),
        (
            OfflineArgs,
            ["--steps", "1050"],
            "error: --steps 1050 must be a non-negative multiple of --steps-per-dispatch 100 (updates run in fused "
            "blocks of 100); change one of them.",
        ),
        (OfflineToOnlineArgs, ["--online-steps", "-5"], "error: --online-steps must be a positive integer, got -5."),
        (OfflineToOnlineArgs, ["--online-kl-budget", "-1"], "error: --online-kl-budget must be > 0 or None, got -1.0."),
        (OfflineToOnlineArgs, ["--utd", "0"], "error: --utd must be a positive integer, got 0."),
    ],
)
def test_configuration_errors_name_the_flag_typed(args_type, argv, expected, capsys):
    """Checked while the flags become configurations, before any data or compilation."""
    line = _cli_error(args_type, argv, capsys)
    assert line == expected
    assert "Config" not in line and "DualDescent" not in line


def test_flag_message_maps_config_fields_to_flags_only_when_a_flag_sets_them():
    from flowsoc.rl.ogbench._experiment import flag_message

    message = flag_message(OfflineArgs, "DualDescent: kl_budget must be > 0, got -1.0.")
    assert message == "--kl-budget must be > 0, got -1.0."
    message = flag_message(OfflineToOnlineArgs, "OnlineConfig: steps_per_dispatch=10 must be a multiple of num_envs=3.")
    assert message == "--online-steps-per-dispatch 10 must be a multiple of --num-envs 3."
    untouched = "AgentConfig: discount must lie in [0, 1], got 2."  # a preset's value, not a flag: kept as is
    assert flag_message(OfflineArgs, untouched) == untouched
    assert flag_message(OfflineArgs, "the dataset has 3 transitions") == "the dataset has 3 transitions"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--preset", "fast"], "error: --preset fast: choose small or paper."),
        (["--preset=fast"], "error: --preset fast: choose small or paper."),
        (["--agent", "sac"], "error: --agent sac: choose trqam, qam, bam, qame, qamf or sqam."),
        (["--protocol", "official"], "error: --protocol official: choose qam or trqam."),
        (["--logger", "tensorboard", "mlflow"], "error: --logger mlflow: choose tensorboard or wandb."),
        (["--stpes", "5"], "error: Unrecognized options: --stpes, 5; did you mean --steps? (see --help)"),
    ],
)
def test_bad_flag_values_are_one_line_usage_errors(argv, expected, capsys):
    assert _cli_error(OfflineArgs, argv, capsys) == expected


def test_help_states_each_default_once(capsys):
    from flowsoc.rl.ogbench._experiment import run_cli

    assert run_cli(OfflineArgs, lambda args: None, ["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "{None}|INT" not in text
    assert "--steps INT" in text and "24,000 for small" in text
    assert "(default: small)" in text  # a default that is a value is still shown


def test_data_phase_says_where_the_dataset_is(tmp_path, capsys):
    """One line per run: the dataset, its directory, and whether it was cached or generated (and how long)."""
    from flowsoc.rl.ogbench._experiment import _load_data

    env = "pointmaze-medium-navigate-singletask-task1-v0"
    args = OfflineArgs(env=env, smoke=True, data_dir=str(tmp_path), workers=1, progress=False)
    p = plan(args)
    _load_data(p, args)
    first = capsys.readouterr().out.splitlines()
    where = re.escape(f"dataset pointmaze-medium-navigate-v0 in {tmp_path}")
    assert re.fullmatch(rf"{where} \(generated in \d+ s\)", first[0]), first
    _load_data(p, args)
    second = capsys.readouterr().out.splitlines()
    assert second[0] == f"dataset pointmaze-medium-navigate-v0 in {tmp_path} (cached)"


def test_copy_the_files_refusal_names_the_data_directory(tmp_path, capsys):
    data = tmp_path / "my-data"
    line = _cli_error(
        OfflineArgs, ["--env", "antsoccer-arena-navigate-singletask-v0", "--smoke", "--data-dir", str(data)], capsys, 1
    )
    assert f"copy them into {data} (the data directory; --data-dir DIR picks another)" in line
    assert "antsoccer-arena-navigate-v0.npz and antsoccer-arena-navigate-v0-val.npz" in line


def test_results_tables_use_the_figure_and_bar_names():
    import equinox as eqx

    from flowsoc.rl._train import progress_postfix, TrainResult
    from flowsoc.rl.ogbench._experiment import results_table

    class NoAgent(eqx.Module):
        pass

    ev = lambda step, p, b: {  # noqa: E731
        "kind": "eval", "step": step, "policy/success": p, "policy/return": 0.0,
        "behaviour/success": b, "behaviour/return": 0.0,
    }  # fmt: skip
    rows = [ev(0, 0.0, 0.05), ev(20, 0.2, 0.05)]
    table = results_table(TrainResult(agent=NoAgent(), rows=rows, run_dir=None), "trqam").splitlines()
    assert table[1].split()[0] == "TRQAM" and table[2].startswith("BC flow ")
    assert list(progress_postfix({}, rows[-1], "TRQAM")) == ["TRQAM", "BC flow"]
