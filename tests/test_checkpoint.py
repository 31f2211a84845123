"""The checkpoint format on its own: a unit per folder, the newest `keep` kept, checksums, the earlier
single-slot layout still read, an unwritable directory named in one line. (The driver's tests kill the
writer at each of its steps.)"""

import json
import tempfile

import numpy as np
import pytest

import flowsoc as fs
from flowsoc import _checkpoint


def tree(step):
    return {"step": np.asarray(step), "w": np.arange(3.0) * step}


def test_units_keep_and_latest(tmp_path):
    for step in (1, 2, 3):
        fs.save_checkpoint(
            tmp_path, step, tree(step), {"who": "test"}, {"extra.txt": lambda p: open(p, "w").write("x")}
        )
    assert [p.name for p in _checkpoint.list_checkpoints(tmp_path)] == ["ckpt-0000000002", "ckpt-0000000003"]
    assert (tmp_path / "LATEST").read_text() == "ckpt-0000000003"
    loaded, meta, folder = fs.load_checkpoint(tmp_path, tree(0), step_of=lambda t: t["step"])
    assert int(loaded["step"]) == 3 and meta["who"] == "test" and set(meta["files"]) == {"state.eqx", "extra.txt"}
    (folder / "extra.txt").write_text("y")  # a damaged extra file is caught by its checksum too
    with pytest.warns(UserWarning, match="resuming from the previous one, ckpt-0000000002"):
        loaded, _, _ = fs.load_checkpoint(tmp_path, tree(0))
    assert int(loaded["step"]) == 2


def test_the_earlier_single_slot_layout_is_read(tmp_path):
    _checkpoint.save_tree(tmp_path / "state.eqx", tree(5))
    (tmp_path / "meta.json").write_text(json.dumps({"step": 5, "seed": 0}))
    # keys it did not record yet (a dataset hash) are not held against it; those it did are checked
    loaded, meta, folder = fs.load_checkpoint(
        tmp_path, tree(0), meta={"seed": 0, "data": "abc"}, keys=("seed", "data"), step_of=lambda t: t["step"]
    )
    assert int(loaded["step"]) == 5 and folder == tmp_path
    with pytest.raises(fs.CheckpointError, match=r"seed \(0 saved, 1 now\)"):
        fs.load_checkpoint(tmp_path, tree(0), meta={"seed": 1, "data": "abc"}, keys=("seed", "data"))


def test_an_unwritable_directory_is_one_line(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(fs.CheckpointError, match=r"cannot write in .* \(Permission denied\); choose a directory"):
        fs.save_checkpoint(tmp_path, 1, tree(1), {})
