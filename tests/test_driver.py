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


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """A real SIGINT raises KeyboardInterrupt here, as in a terminal, even when this process inherited SIGINT as
    ignored (a test run started as a background job): the toy trainer sends itself one."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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


class Recorder(fs.AbstractProgressMeter):
    """A progress meter that records what the driver tells it."""

    def __init__(self):
        self.events = []

    def start(self, total, initial, unit, desc):
        self.events.append(("start", initial, total))
        return "handle"

    def phase(self, handle, name):
        assert handle == "handle"
        self.events.append(("phase", name))

    def update(self, handle, n, postfix, rate=None, eta=None):
        self.events.append(("update", n, postfix, rate, eta))

    def close(self, handle):
        self.events.append(("close",))


def phases(events):
    return [e[1] for e in events if e[0] == "phase"]


def updates(events):
    return [e[1:] for e in events if e[0] == "update"]


@pytest.fixture
def clock(monkeypatch):
    fake = toy.Clock()
    monkeypatch.setattr(fs._driver, "_clock", fake)
    return fake


def test_phases_are_announced_in_order(tmp_path):
    meter = Recorder()
    toy.run(tmp_path, progress=meter)
    E, C, T, S = "evaluating", "compiling", "training", "checkpointing"
    assert phases(meter.events) == [E, C, T, E, S, T, E, S, T, E, S, "done"]
    assert meter.events[0] == ("start", 0, 12) and meter.events[-1] == ("close",)
    # blocks of a new size compile (the shortened last one too); no run directory: no checkpointing
    meter = Recorder()
    toy.run(None, total=10, block_size=3, progress=meter)
    assert phases(meter.events) == [E, C, T, E, T, E, C, E, "done"]

    class Silent(toy.Counter):  # no evaluation of its own: no evaluating phase
        evaluate = fs.AbstractTrainer.evaluate

    meter = Recorder()
    fs.drive(Silent(), toy.fresh(), total=6, block_size=2, eval_every=4, progress=meter)
    assert phases(meter.events) == [C, T, "done"]
    # a resumed run compiles again, and first does the evaluation a Ctrl-C interrupted
    with pytest.raises(KeyboardInterrupt):
        toy.run(tmp_path / "cut", sigint=("eval", 8))
    meter = Recorder()
    toy.run(tmp_path / "cut", resume=True, progress=meter)
    assert phases(meter.events) == [E, S, C, T, E, S, "done"]
    assert meter.events[0] == ("start", 8, 12)


def test_each_evaluation_reaches_the_meter_in_the_update_that_follows_it(tmp_path):
    meter = Recorder()
    toy.run(tmp_path, progress=meter)
    # the update right after each evaluation phase carries that evaluation's result (0 steps more)
    after_eval = [meter.events[i + 1] for i, e in enumerate(meter.events) if e == ("phase", "evaluating")]
    assert [(e[0], e[1], e[2].get("eval")) for e in after_eval] == [
        ("update", 0, "0"), ("update", 0, "10"), ("update", 0, "36"), ("update", 0, "78"),
    ]  # fmt: skip
    assert [(n, p) for n, p, _, _ in updates(meter.events)] == [
        (0, {"eval": "0"}),
        (2, {"total": "3", "eval": "0"}), (2, {"total": "10", "eval": "0"}), (0, {"total": "10", "eval": "10"}),
        (2, {"total": "21", "eval": "10"}), (2, {"total": "36", "eval": "10"}), (0, {"total": "36", "eval": "36"}),
        (2, {"total": "55", "eval": "36"}), (2, {"total": "78", "eval": "36"}), (0, {"total": "78", "eval": "78"}),
        (0, {"total": "78", "eval": "78"}),  # the final state, after the last checkpoint
    ]  # fmt: skip


def test_the_last_state_shown_holds_the_final_evaluation(tmp_path, capsys):
    meter = Recorder()
    toy.run(tmp_path, total=10, eval_every=4, progress=meter)  # the final evaluation off the cadence
    last = updates(meter.events)[-1]
    assert last[1] == {"total": "55", "eval": "55"} and phases(meter.events)[-1] == "done"
    # the tqdm bar's last line: done, at 100%, with the final evaluation
    toy.run(tmp_path / "bar", progress=fs.TqdmProgressMeter())
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("done: 100%") and "12/12 [" in bar and bar.endswith("total=78, eval=78]"), bar


def test_the_rate_and_eta_count_training_alone(tmp_path, clock):
    """Each step takes 0.5 s, a new block size 100 s more (compiling), the first evaluation 80 s and the
    others 50 s, a checkpoint 8 s: the rate stays 2 steps/s, and the ETA is the steps left / 2 + the
    evaluations left × 50 (80 while only the first is timed) + the checkpoints left × 8."""
    costs = {"step": 0.5, "compile": 100.0, "first_eval": 80.0, "eval": 50.0, "save": 8.0}
    meter = Recorder()
    toy.run(tmp_path, progress=meter, clock=clock, costs=costs)
    timing = [(n, rate, eta) for n, _, rate, eta in updates(meter.events)]
    assert timing == [
        (0, None, None),  # after the first evaluation: no block timed yet
        (2, None, None),  # the compiling block is not counted
        (2, 2.0, 8 / 2 + 3 * 80 + 3 * 0),  # at 4: evaluations at 4, 8, 12 and checkpoints (none timed yet) to come
        (0, 2.0, 8 / 2 + 2 * 50 + 3 * 0),  # after the evaluation at 4 (80 s for the first is not typical)
        (2, 2.0, 6 / 2 + 2 * 50 + 2 * 8),
        (2, 2.0, 4 / 2 + 2 * 50 + 2 * 8),
        (0, 2.0, 4 / 2 + 1 * 50 + 2 * 8),
        (2, 2.0, 2 / 2 + 1 * 50 + 1 * 8),
        (2, 2.0, 0 / 2 + 1 * 50 + 1 * 8),
        (0, 2.0, 0 / 2 + 0 * 50 + 1 * 8),
        (0, 2.0, 0.0),
    ]
    assert clock.now == 12 * 0.5 + 100 + 80 + 3 * 50 + 3 * 8  # every phase was charged


def test_text_meter_lines(tmp_path, clock, capsys):
    costs = {"step": 0.5, "compile": 100.0, "first_eval": 80.0, "eval": 50.0, "save": 8.0}
    toy.run(tmp_path, progress=fs.TextProgressMeter(min_interval=0.0), clock=clock, costs=costs)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        "0/12 steps (0%, ? step/s, ETA ?) [evaluating]",
        "0/12 steps (0%, ? step/s, ETA ?) [evaluating] eval=0",
        "0/12 steps (0%, ? step/s, ETA ?) [compiling] eval=0",
        "2/12 steps (17%, ? step/s, ETA ?) [compiling] total=3 eval=0",
        "2/12 steps (17%, ? step/s, ETA ?) [training] total=3 eval=0",
    ]
    assert "4/12 steps (33%, 2 step/s, ETA 04:04) [training] total=10 eval=0" in lines
    assert lines[-1] == "12/12 steps (100%, 2 step/s, ETA 00:00) [done] total=78 eval=78"
    # rate-limited: only the first line, the start of compiling and the end
    toy.run(tmp_path / "quiet", progress=fs.TextProgressMeter(min_interval=1e9), clock=clock, costs=costs)
    assert [line.split("[")[1] for line in capsys.readouterr().out.splitlines()] == [
        "evaluating]", "compiling] eval=0", "done] total=78 eval=78",
    ]  # fmt: skip
    toy.run(None, progress=fs.NoProgressMeter())
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


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
