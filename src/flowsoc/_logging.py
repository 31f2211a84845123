"""Where a run's metric rows go: `metrics.jsonl` and one CSV per kind of row (always, with a run
directory), and optionally TensorBoard or Weights & Biases, written by their own libraries.

A row is a flat dictionary with a `"kind"` (`"train"`, `"eval"`, ...) and a `"step"`; every other
entry is a number (or a short string)."""

import abc
import csv
import json
import math
import os
import pathlib
from collections.abc import Sequence

from ._checkpoint import write_text


def read_rows(directory: str | os.PathLike, count: int | None = None, up_to_step: int | float = math.inf) -> list[dict]:
    """The rows of `directory/metrics.jsonl`: the first `count` (when given), of those with `step` at
    most `up_to_step`. A line cut short by a crash is skipped."""
    path = pathlib.Path(directory) / "metrics.jsonl"
    rows: list[dict] = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or row.get("step", math.inf) > up_to_step:
            continue
        rows.append(row)
        if count is not None and len(rows) == count:
            break
    return rows


class AbstractLogger(abc.ABC):
    """Receives every row of a run, in order."""

    @abc.abstractmethod
    def write(self, rows: Sequence[dict]) -> None:
        """Record `rows` (appended after those already written)."""

    def close(self) -> None:
        """Flush and release (called once, at the end or on an error)."""


class MetricsLog(AbstractLogger):
    """Rows in memory and, with a directory, in `metrics.jsonl`, `train.csv`, `eval.csv` (one CSV per
    kind). Starting from `rows` rewrites the files with exactly those rows (a resumed run drops what
    an interrupted one wrote after its checkpoint)."""

    def __init__(self, directory: str | os.PathLike | None, rows: Sequence[dict] | None = None):
        self.directory = None if directory is None else pathlib.Path(directory)
        self.rows: list[dict] = list(rows or [])
        self._columns: dict[str, list[str]] = {}
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_text(self.directory / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows))
            for kind in dict.fromkeys(["train", "eval", *(r["kind"] for r in self.rows)]):
                self._rewrite_csv(kind)

    @classmethod
    def restore(cls, directory: str | os.PathLike, up_to_step: int | float) -> "MetricsLog":
        """A log continuing the rows of `directory/metrics.jsonl` up to `up_to_step`."""
        return cls(directory, read_rows(directory, up_to_step=up_to_step))

    def kind(self, kind: str) -> list[dict]:
        return [r for r in self.rows if r["kind"] == kind]

    def append(self, row: dict) -> None:
        self.write([row])

    def write(self, rows: Sequence[dict]) -> None:
        rows = list(rows)
        self.rows.extend(rows)
        if self.directory is None or not rows:
            return
        with open(self.directory / "metrics.jsonl", "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        for kind in dict.fromkeys(r["kind"] for r in rows):
            mine = [r for r in rows if r["kind"] == kind]
            columns = self._columns.get(kind)
            if columns is None or any(k not in columns for r in mine for k in r if k != "kind"):
                self._rewrite_csv(kind)  # new columns: the header changes
            else:
                with open(self.directory / f"{kind}.csv", "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=columns).writerows(_strip(r) for r in mine)

    def _rewrite_csv(self, kind: str) -> None:
        assert self.directory is not None
        rows = self.kind(kind)
        columns = list(dict.fromkeys(k for r in rows for k in r if k != "kind"))
        self._columns[kind] = columns

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(_strip(r) for r in rows)

        from ._checkpoint import atomic_write

        atomic_write(self.directory / f"{kind}.csv", write)


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "kind"}


def _scalars(row: dict) -> dict[str, float]:
    return {
        f"{row['kind']}/{k}": float(v)
        for k, v in row.items()
        if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class TensorBoardLogger(AbstractLogger):
    """Every numeric entry of a row as a TensorBoard scalar `<kind>/<name>` at the row's step, written
    by `tensorboardX` into `directory` (`pip install 'flowsoc[tensorboard]'`; view with
    `tensorboard --logdir <directory>`). A row with a `"seed"` goes to the subfolder `seed-<seed>`."""

    def __init__(self, directory: str | os.PathLike):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as err:
            raise ImportError("TensorBoard logging needs tensorboardX: pip install 'flowsoc[tensorboard]'.") from err
        self._writer_class = SummaryWriter
        self.directory = pathlib.Path(directory)
        self._writers: dict = {}

    def _writer(self, row: dict):
        sub = "" if "seed" not in row else f"seed-{row['seed']}"
        if sub not in self._writers:
            self._writers[sub] = self._writer_class(str(self.directory / sub))
        return self._writers[sub]

    def write(self, rows: Sequence[dict]) -> None:
        for row in rows:
            writer = self._writer(row)
            for name, value in _scalars(row).items():
                if name.endswith("/seed"):
                    continue
                writer.add_scalar(name, value, global_step=int(row["step"]))

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


class WandbLogger(AbstractLogger):
    """Every numeric entry of a row logged to Weights & Biases as `<kind>/<name>` at the row's step
    (`pip install 'flowsoc[wandb]'`). `mode="offline"` writes the run under `directory/wandb` without
    any network (upload it later with `wandb sync`)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        project: str = "flowsoc",
        name: str | None = None,
        mode: str = "offline",
        config: dict | None = None,
    ):
        try:
            import wandb
        except ImportError as err:
            raise ImportError("Weights & Biases logging needs wandb: pip install 'flowsoc[wandb]'.") from err
        pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=project, name=name, dir=str(directory), mode=mode, config=config or {}, reinit="create_new"
        )

    def write(self, rows: Sequence[dict]) -> None:
        for row in rows:
            values = {k: v for k, v in _scalars(row).items() if not k.endswith("/seed")}
            if "seed" in row:
                values = {f"seed-{row['seed']}/{k}": v for k, v in values.items()}
            self._run.log({**values, "step": int(row["step"])})

    def close(self) -> None:
        self._run.finish()


LOGGERS = ("tensorboard", "wandb")
"""The optional logging backends a run can add by name (`make_loggers`)."""


def make_loggers(names: Sequence[str], directory: str | os.PathLike | None, **wandb_kwargs) -> list[AbstractLogger]:
    """The loggers named in `names` (`"tensorboard"`, `"wandb"`), writing under `directory`."""
    out: list[AbstractLogger] = []
    for name in names:
        if name not in LOGGERS:
            raise ValueError(f"unknown logger {name!r}; choose from {', '.join(LOGGERS)}.")
        if directory is None:
            raise ValueError(f"the {name} logger needs a run directory.")
        if name == "tensorboard":
            out.append(TensorBoardLogger(pathlib.Path(directory) / "tensorboard"))
        else:
            out.append(WandbLogger(directory, **wandb_kwargs))
    return out
