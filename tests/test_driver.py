"""The run driver, once for every trainer: cadences, resume equal to an uninterrupted run, Ctrl-C in
every phase losing nothing, the NaN stop, refusals, crashes at every step of a checkpoint write, and
no debris left behind. The trainer is a counter (tests/driver_toy.py): no JAX, no compilation."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from tests import driver_toy as toy

import flowsoc as fs


ROOT = pathlib.Path(__file__).resolve().parent.parent


def disk_rows(directory):
    return [json.loads(line) for line in (pathlib.Path(directory) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reference")
    return toy.run(directory), directory


def test_cadences_and_the_rows(reference):
    result, directory = reference
    assert int(result.state["step"]) == 12 and float(result.state["total"]) == sum(range(13))
    assert [(r["kind"], r["step"]) for r in result.rows] == [
        ("eval", 0), ("train", 2), ("train", 4), ("eval", 4), ("train", 6), ("train", 8), ("eval", 8),
        ("train", 10), ("train", 12), ("eval", 12),
    ]  # fmt: skip
    assert disk_rows(directory) == result.rows
    assert (directory / "train.csv").read_text().splitlines()[0] == "step,total"
    # checkpoints at 4, 8, 12; the newest two kept; LATEST names the newest
    assert sorted(p.name for p in (directory / "checkpoint").iterdir()) == [
        "LATEST",
        "ckpt-0000000008",
        "ckpt-0000000012",
    ]
    assert (directory / "checkpoint" / "LATEST").read_text().strip() == "ckpt-0000000012"
    assert result.checkpoint == directory / "checkpoint" / "ckpt-0000000012"


def test_cadence_is_crossed_not_hit(tmp_path):
    # blocks of 3 never land on a multiple of 4: evaluation after the block that crosses one, and at the end
    result = toy.run(tmp_path, total=10, block_size=3)
    assert [r["step"] for r in result.rows if r["kind"] == "eval"] == [0, 6, 9, 10]
    assert int(result.state["step"]) == 10  # the last block is shortened to the total


@pytest.mark.parametrize(
    "phase, position",
    [("block", 4), ("block", 6), ("eval", 4), ("eval", 0), ("save", 8), ("eval", 12), ("save", 12)],
)
def test_ctrl_c_in_any_phase_loses_nothing(reference, tmp_path, capsys, phase, position):
    full, _ = reference
    with pytest.raises(KeyboardInterrupt):
        toy.run(tmp_path, sigint=(phase, position))
    message = capsys.readouterr().err
    assert "Interrupted at step" in message and "continue with resume=True" in message
    resumed = toy.run(tmp_path, resume=True)
    assert resumed.rows == full.rows and disk_rows(tmp_path) == full.rows  # no row lost or repeated
    assert float(resumed.state["total"]) == float(full.state["total"])  # no step lost or repeated
    again = toy.run(tmp_path, resume=True)  # a finished run resumed: nothing more happens
    assert again.rows == full.rows


def test_resume_continues_exactly_and_extends(reference, tmp_path):
    full, _ = reference
    toy.run(tmp_path, total=8)  # (a total off the cadence would add its own final evaluation)
    with open(tmp_path / "metrics.jsonl", "a") as f:  # rows a crash left after the checkpoint, and a cut line
        f.write(json.dumps({"kind": "train", "step": 99, "total": -1.0}) + '\n{"kind": "tr')
    resumed = toy.run(tmp_path, total=12, resume=True)
    assert resumed.rows == full.rows and disk_rows(tmp_path) == full.rows


def test_refusals(tmp_path):
    toy.run(tmp_path, total=4)
    with pytest.raises(FileExistsError, match="already holds a run.*resume=True"):
        toy.run(tmp_path)
    with pytest.raises(ValueError, match="at step 4, beyond the 2 asked for"):
        toy.run(tmp_path, total=2, resume=True)
    with pytest.raises(fs.CheckpointError, match=r"different settings: name \('toy' saved, 'other' now\)"):
        toy.run(tmp_path, resume=True, name="other")
    with pytest.raises(fs.CheckpointError, match="No checkpoint"):
        toy.run(tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="keep must be >= 2"):
        toy.run(tmp_path / "x", keep=1)


def test_non_finite_stops_and_saves_the_last_good_state(tmp_path):
    with pytest.raises(
        fs.NonFiniteError, match=r"non-finite total at step 7; .*step 6\) is saved in .*ckpt-0000000006"
    ):
        toy.run(tmp_path, nan_at=7)
    tree, meta, _ = fs.load_checkpoint(tmp_path / "checkpoint", toy.fresh())
    assert int(tree["step"]) == 6 and float(tree["total"]) == sum(range(7))
    with pytest.raises(fs.NonFiniteError, match="nothing was saved"):
        toy.run(None, nan_at=1)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(reference, tmp_path):
    full, _ = reference
    toy.run(tmp_path)
    (tmp_path / "checkpoint" / "ckpt-0000000012" / "state.eqx").write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="resuming from the previous one, ckpt-0000000008"):
        resumed = toy.run(tmp_path, resume=True)
    assert resumed.rows == full.rows and float(resumed.state["total"]) == float(full.state["total"])


def test_debris_of_killed_writers_is_removed(tmp_path):
    toy.run(tmp_path, total=4)
    debris = [
        tmp_path / "metrics.jsonl.abc123.tmp",
        tmp_path / "checkpoint" / "LATEST.xyz.tmp",
        tmp_path / "checkpoint" / ".ckpt-0000000008.k2j3.tmp",
    ]
    debris[0].write_text("x")
    debris[1].write_text("x")
    debris[2].mkdir()
    (debris[2] / "state.eqx").write_bytes(b"half")
    toy.run(tmp_path, total=8, resume=True)
    assert not any(p.exists() for p in debris)


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        toy.run(tmp_path, total=4)
    finally:
        os.umask(old)
    for path in (tmp_path / "metrics.jsonl", tmp_path / "train.csv", tmp_path / "checkpoint" / "LATEST"):
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert (tmp_path / "checkpoint" / "ckpt-0000000004").stat().st_mode & 0o777 == 0o755


def _child(directory, crash_at, after):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "tests.driver_toy", str(directory), str(crash_at), str(after)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_crash_at_every_step_of_a_checkpoint_write_resumes_exactly(tmp_path):
    """Kill the writer (os._exit: no cleanup, as kill -9) at each file-system operation of the checkpoint
    at step 6 (the rename of the new folder, LATEST, the deletion of the oldest, every fsync...): each run
    resumes to the uninterrupted result, and leaves no debris."""
    counted = _child(tmp_path / "count", 10**9, 12)  # the operations of one checkpoint (the last one)
    assert counted.returncode == 0, counted.stderr
    ops = int(counted.stdout.strip().split("=")[1])
    assert ops >= 8  # mkdir, state, meta, fsyncs, rename, LATEST, deletion of the oldest
    reference = fs.drive(toy.Counter(), toy.fresh(), total=12, block_size=2, checkpoint_every=2, progress=False)
    for k in range(1, ops + 1):
        directory = tmp_path / f"crash-{k}"
        child = _child(directory, k, 6)
        assert child.returncode == 9, (k, child.stderr)
        resumed = fs.drive(
            toy.Counter(), toy.fresh(), total=12, run_dir=directory, resume=True, block_size=2, checkpoint_every=2,
            progress=False,
        )  # fmt: skip
        assert float(resumed.state["total"]) == float(reference.state["total"]), k
        assert resumed.rows == reference.rows and disk_rows(directory) == reference.rows, k
        leftovers = [p for d in (directory, directory / "checkpoint") for p in d.iterdir() if ".tmp" in p.name]
        assert not leftovers, (k, leftovers)
        assert len(fs._checkpoint.list_checkpoints(directory / "checkpoint")) == 2


def test_progress_meters(tmp_path, capsys):
    toy.run(None, progress=fs.TextProgressMeter(min_interval=0.0))
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("12/12 steps (100%") and len(lines) == 6
    toy.run(None, progress=fs.NoProgressMeter())
    assert capsys.readouterr().out == ""


def test_loggers_receive_every_row_in_order(reference):
    full, _ = reference

    class Recorder(fs.AbstractLogger):
        def __init__(self):
            self.rows, self.closed = [], False

        def write(self, rows):
            self.rows.extend(rows)

        def close(self):
            self.closed = True

    recorder = Recorder()
    toy.run(None, loggers=[recorder])
    assert recorder.rows == full.rows and recorder.closed
