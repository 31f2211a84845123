"""Where rows go: metrics.jsonl and CSVs (appended, rewritten when columns change), TensorBoard through
tensorboardX, Weights & Biases (through a stand-in module: its calls are what the logger promises)."""

import pathlib
import sys
import types

import pytest
from tests import driver_toy as toy

import flowsoc as fs
from flowsoc._logging import make_loggers, read_rows


def test_metrics_log_appends_and_rewrites_csv_when_columns_change(tmp_path):
    log = fs.MetricsLog(tmp_path)
    log.write([{"kind": "train", "step": 1, "a": 1.0}, {"kind": "train", "step": 2, "a": 2.0}])
    log.write([{"kind": "train", "step": 3, "a": 3.0, "b": 0.5}])  # a new column: the header grows
    log.write([{"kind": "eval", "step": 3, "policy/success": 0.25}])
    assert (tmp_path / "train.csv").read_text().splitlines() == ["step,a,b", "1,1.0,", "2,2.0,", "3,3.0,0.5"]
    assert (tmp_path / "eval.csv").read_text().splitlines() == ["step,policy/success", "3,0.25"]
    assert read_rows(tmp_path) == log.rows
    assert read_rows(tmp_path, count=2) == log.rows[:2]
    assert read_rows(tmp_path, up_to_step=2) == log.rows[:2]
    # starting from given rows rewrites every file with exactly those
    again = fs.MetricsLog(tmp_path, log.rows[:1])
    assert read_rows(tmp_path) == again.rows == log.rows[:1]
    assert (tmp_path / "train.csv").read_text().splitlines() == ["step,a", "1,1.0"]


def test_make_loggers_refuses_unknown_names_and_a_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="unknown logger 'csv'"):
        make_loggers(["csv"], tmp_path)
    with pytest.raises(ValueError, match="needs a run directory"):
        make_loggers(["tensorboard"], None)


def _tensorboard_scalars(directory):
    """`{tag: [(step, value)]}` from the event files in `directory` (TFRecord framing: length, CRC, payload, CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list] = {}
    for path in sorted(pathlib.Path(directory).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = Event.FromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_tensorboard_logger_writes_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    toy.run(tmp_path, loggers=fs._logging.make_loggers(["tensorboard"], tmp_path))
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["eval/eval/total"] == [(0, 0.0), (4, 10.0), (8, 36.0), (12, 78.0)]  # the toy's eval key: eval/total
    assert [s for s, _ in scalars["train/total"]] == [2, 4, 6, 8, 10, 12]


def test_wandb_logger_logs_each_row_offline(tmp_path, monkeypatch):
    calls = {"log": [], "finished": False}

    class Run:
        def log(self, values):
            calls["log"].append(values)

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    toy.run(tmp_path, loggers=make_loggers(["wandb"], tmp_path, name="toy-run"))
    assert calls["init"]["mode"] == "offline" and calls["init"]["dir"] == str(tmp_path)
    assert calls["init"]["name"] == "toy-run"
    assert calls["log"][0] == {"eval/eval/total": 0.0, "step": 0}
    assert [c["step"] for c in calls["log"]] == [0, 2, 4, 4, 6, 8, 8, 10, 12, 12]
    assert calls["finished"]
