"""The one host loop every trainer runs in, after Diffrax's `diffeqsolve`: one loop, its variants
passed in as objects.

`drive(trainer, state, ...)` runs blocks of fused steps until `total`, and around them does what every
trainer needs once and the same way: metric rows to `metrics.jsonl`/CSV (and TensorBoard or W&B), a stop
on the first non-finite value naming the step and the last good checkpoint, evaluation and checkpoints
at their cadence and at the end, a save on Ctrl-C, exact resume (no row, evaluation or step lost or
repeated), and progress through one progress meter. A trainer supplies only its block, its evaluation,
what it saves and how it restores (`AbstractTrainer`).
"""

import abc
import contextlib
import dataclasses
import math
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from ._checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_debris,
    save_checkpoint,
)
from ._logging import AbstractLogger, MetricsLog, read_rows


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss, metric or state; the message names the step and where the
    last good state was saved."""


# --------------------------------------------------------------------------------- progress meters


def _interval(seconds: float) -> str:
    """`[H:]MM:SS`, as tqdm writes durations."""
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _rate(rate: float | None, unit: str) -> str:
    if rate is None:
        return f"? {unit}/s"
    return f"{rate:,.0f} {unit}/s" if rate >= 100 else f"{rate:.3g} {unit}/s"


class AbstractProgressMeter(abc.ABC):
    """Shows a run's progress (after Diffrax's `AbstractProgressMeter`): `start` returns a handle that
    `phase`, `update` and `close` receive."""

    @abc.abstractmethod
    def start(self, total: int, initial: int, unit: str, desc: str) -> Any:
        """Begin showing a run at `initial` of `total` `unit`s, named `desc`; returns the handle."""

    def phase(self, handle: Any, name: str) -> None:
        """The run enters phase `name`, shown until the next. `drive` announces `"compiling"` (a block of a size
        not run before in this call: the first, and a shorter last one), `"training"`, `"evaluating"`,
        `"checkpointing"` and, at the end, `"done"`. Ignored by default."""

    @abc.abstractmethod
    def update(
        self, handle: Any, n: int, postfix: dict[str, str], rate: float | None = None, eta: float | None = None
    ) -> None:
        """`n` more units done (0 after an evaluation); `postfix`: the live values; `rate`: units per second
        over training blocks only; `eta`: seconds left, training and the evaluations and checkpoints to come
        (`None`: not known yet)."""

    @abc.abstractmethod
    def close(self, handle: Any) -> None:
        """Stop showing the run (leaving its last state)."""


class NoProgressMeter(AbstractProgressMeter):
    """Shows nothing."""

    def start(self, total, initial, unit, desc):
        return None

    def update(self, handle, n, postfix, rate=None, eta=None):
        pass

    def close(self, handle):
        pass


@dataclasses.dataclass
class _TextHandle:
    total: int
    done: int
    unit: str
    desc: str
    phase: str = ""
    postfix: dict = dataclasses.field(default_factory=dict)
    rate: float | None = None
    eta: float | None = None
    last_print: float = -math.inf


@dataclasses.dataclass(frozen=True)
class TextProgressMeter(AbstractProgressMeter):
    """Plain lines for logs and non-interactive jobs, at most one every `min_interval` seconds, and always
    when compiling starts and when the run is done:
    `desc: 400/24000 steps (2%, 41.2 step/s, ETA 09:32) [training] loss=0.31 policy=5%`."""

    min_interval: float = 10.0
    file: Any = None

    def start(self, total, initial, unit, desc):
        return _TextHandle(total, initial, unit, desc)

    def phase(self, handle, name):
        handle.phase = name
        self._print(handle, force=name in ("compiling", "done"))

    def update(self, handle, n, postfix, rate=None, eta=None):
        handle.done += n
        handle.postfix, handle.rate, handle.eta = postfix, rate, eta
        self._print(handle)

    def _print(self, handle, force=False):
        now = time.monotonic()
        if not force and now - handle.last_print < self.min_interval:
            return
        handle.last_print = now
        eta = "?" if handle.eta is None else _interval(handle.eta)
        phase = f" [{handle.phase}]" if handle.phase else ""
        extra = "".join(f" {k}={v}" for k, v in handle.postfix.items())
        print(
            f"{handle.desc + ': ' if handle.desc else ''}{handle.done}/{handle.total} {handle.unit}s "
            f"({100 * handle.done / max(handle.total, 1):.0f}%, {_rate(handle.rate, handle.unit)}, ETA {eta})"
            f"{phase}{extra}",
            file=self.file or sys.stdout,
            flush=True,
        )

    def close(self, handle):
        pass


@dataclasses.dataclass
class _TqdmHandle:
    bar: Any
    desc: str
    unit: str


@dataclasses.dataclass(frozen=True)
class TqdmProgressMeter(AbstractProgressMeter):
    """A tqdm bar (to `file`, default stderr) with the phase after its name, and the driver's rate and ETA
    (training speed alone, plus the evaluations and checkpoints to come) in place of tqdm's:
    `desc [training]:  2%|▏     | 400/24000 [00:41<09:32, 41.2 step/s, loss=0.31, policy=5%]`."""

    file: Any = None

    def start(self, total, initial, unit, desc):
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total, initial=initial, unit=unit, desc=desc or None, dynamic_ncols=True, file=self.file,
            bar_format=self._format(None, None, unit),
        )  # fmt: skip
        return _TqdmHandle(bar, desc, unit)

    @staticmethod
    def _format(rate, eta, unit) -> str:
        right = f"<{'?' if eta is None else _interval(eta)}, {_rate(rate, unit)}".replace("{", "{{").replace("}", "}}")
        return "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}" + right + "{postfix}]"

    def phase(self, handle, name):
        handle.bar.set_description(f"{handle.desc} [{name}]" if handle.desc else name, refresh=True)

    def update(self, handle, n, postfix, rate=None, eta=None):
        handle.bar.bar_format = self._format(rate, eta, handle.unit)
        handle.bar.set_postfix(postfix, refresh=False)
        if n:
            handle.bar.update(n)  # refreshed at tqdm's own pace
        else:
            handle.bar.refresh()  # an evaluation's result: shown at once

    def close(self, handle):
        handle.bar.close()


def progress_meter(progress: bool | AbstractProgressMeter) -> AbstractProgressMeter:
    """`True`: a tqdm bar; `False`: nothing; a meter: itself."""
    if isinstance(progress, AbstractProgressMeter):
        return progress
    return TqdmProgressMeter() if progress else NoProgressMeter()


# --------------------------------------------------------------------------------- trainers


class Block(NamedTuple):
    """What one block of fused steps returns: the new state, its metric rows, and `problem`, a
    description of the first non-finite value (`None` when the block is clean)."""

    state: Any
    rows: list[dict]
    problem: str | None = None


class Saved(NamedTuple):
    """What a checkpoint holds: the pytree written to `state.eqx`, JSON metadata, and extra files
    (`name -> write(path)`)."""

    tree: Any
    meta: dict
    files: dict = {}


class AbstractTrainer(abc.ABC):
    """The variant parts of a training loop. `drive` calls `block` until `position(state)` reaches the
    total and does everything else. The state is whatever the trainer needs (an `eqx.Module`, or a tuple
    with host data); it is replaced, never mutated, so that a Ctrl-C in a block leaves the last complete
    one to save."""

    unit: str = "step"
    """What the position counts (shown by the progress meter)."""
    desc: str = ""
    """A short name shown by the progress meter."""
    identity_keys: tuple[str, ...] = ()
    """Entries of `identity()` a resumed run must share with the checkpoint."""
    writes: bool = True
    """Whether this process writes checkpoints and files (only one process does in a multi-host run)."""

    @abc.abstractmethod
    def position(self, state) -> int:
        """The step counter the cadences and the total refer to."""

    @abc.abstractmethod
    def block(self, state, n: int) -> Block:
        """Advance `state` by `n` steps."""

    def evaluate(self, state, position: int) -> list[dict]:
        """Evaluation rows at `position` (none by default)."""
        return []

    def identity(self) -> dict:
        """Metadata naming what this run is (written into every checkpoint)."""
        return {}

    @abc.abstractmethod
    def save(self, state) -> Saved:
        """What to checkpoint."""

    @abc.abstractmethod
    def restore(self, tree, meta: dict, folder: pathlib.Path, state):
        """The state from a checkpoint's `tree` (read into the structure of `self.save(state).tree`),
        its `meta` and `folder` (for extra files); `state` is the fresh initial state."""

    def step_of(self, tree) -> Any:
        """The step counter inside a saved tree, checked against `meta.json` (`None`: not checked)."""
        return None

    def locate(self, state, n: int, problem: str) -> str:
        """A finer description of a non-finite block (e.g. which seed); `problem` by default."""
        return problem

    def postfix(self, row: dict, last_eval: dict | None) -> dict[str, str]:
        """The progress meter's live values after a block."""
        return {}

    def finish(self, rows: list[dict], directory: pathlib.Path | None) -> None:
        """Called once after the last step (e.g. to draw the figures)."""


@dataclasses.dataclass
class DriveResult:
    state: Any
    rows: list[dict]
    checkpoint: pathlib.Path | None


# --------------------------------------------------------------------------------- the loop


class _DeferInterrupts:
    """Within the block, a Ctrl-C waits until the block ends (then raises): keeps a state update and
    the rows written for it together. A no-op outside the main thread."""

    def __enter__(self):
        self.pending = False
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        self.pending = True

    def __exit__(self, *exc):
        if self.installed:  # `None`: the previous handler was not set from Python; Python's own is the fallback
            signal.signal(signal.SIGINT, signal.default_int_handler if self.previous is None else self.previous)
        if self.pending and exc[0] is None:
            raise KeyboardInterrupt
        return False


def _due(every: int, before: int, after: int) -> bool:
    """Whether a multiple of `every` lies in `(before, after]` (`every == 0`: never)."""
    return bool(every) and after // every > before // every


def _blocks_with(every: int, block_size: int, position: int, total: int) -> int:
    """How many of the blocks from `position` to `total` end with the event of cadence `every`: those
    crossing a multiple of it, and the last (`every == 0`: the last alone)."""
    if position >= total:
        return 0
    blocks = -(-(total - position) // block_size)
    if not every:
        return 1
    if block_size >= every:  # every full block crosses a multiple
        return blocks
    last_start = position + block_size * (blocks - 1)  # each block holds at most one multiple
    return total // every - position // every + (not _due(every, last_start, total))


def _eval_values(rows: list[dict]) -> dict:
    """The `/` entries of one evaluation's rows (e.g. `policy/success`), numbers averaged over the rows
    holding them (one per seed in a multi-seed run)."""
    values: dict[str, list] = {}
    for r in rows:
        for k, v in r.items():
            if "/" in k:
                values.setdefault(k, []).append(v)
    numbers = (int, float)
    return {
        k: sum(v) / len(v) if all(isinstance(x, numbers) for x in v) and len(v) > 1 else v[-1]
        for k, v in values.items()
    }


_clock = time.perf_counter
"""The driver's clock (replaced by the tests)."""


def _typical(times: list[float]) -> float:
    """The mean of `times` after the first (which may have compiled), or the first alone (0 without any)."""
    later = times[1:] or times
    return sum(later) / len(later) if later else 0.0


@dataclasses.dataclass
class _Pace:
    """Wall time per phase, for the rate and ETA the progress meter shows: training blocks alone (not the
    compiling ones) give the rate; evaluations and checkpoints their typical time."""

    total: int
    block_size: int
    eval_every: int
    checkpoint_every: int
    checkpoints: bool
    trained: int = 0
    training: float = 0.0
    evals: list[float] = dataclasses.field(default_factory=list)
    saves: list[float] = dataclasses.field(default_factory=list)

    def rate(self) -> float | None:
        return self.trained / self.training if self.trained and self.training > 0 else None

    def estimate(self, position: int, eval_pending: bool, save_pending: bool) -> dict:
        """`rate` and `eta` at `position`; `*_pending`: an evaluation or checkpoint due there not yet done."""
        rate = self.rate()
        if position < self.total and rate is None:
            return {"rate": None, "eta": None}
        evals = _blocks_with(self.eval_every, self.block_size, position, self.total) + eval_pending
        saves = _blocks_with(self.checkpoint_every, self.block_size, position, self.total) + save_pending
        eta = (self.total - position) / rate if rate else 0.0
        eta += evals * _typical(self.evals) + (saves * _typical(self.saves) if self.checkpoints else 0.0)
        return {"rate": rate, "eta": eta}


def drive(
    trainer: AbstractTrainer,
    state,
    *,
    total: int,
    block_size: int,
    run_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    eval_every: int = 0,
    eval_at_start: bool = False,
    checkpoint_every: int = 0,
    keep: int = 2,
    rows: Sequence[dict] = (),
    loggers: Sequence[AbstractLogger] = (),
    progress: bool | AbstractProgressMeter = True,
    resume_flag: str = "resume=True",
) -> DriveResult:
    """Run `trainer` from `state` until `trainer.position(state) == total`, in blocks of `block_size`.

    **Arguments:**

    - `run_dir`: where `metrics.jsonl` and the CSVs go (`None`: rows only in memory);
    - `checkpoint_dir`: where checkpoints go (default `run_dir/checkpoint`; none without a run directory);
    - `resume`: continue from the newest checkpoint; otherwise a directory holding one is refused;
    - `eval_every`, `checkpoint_every`: cadences in positions (0: only at the end); `eval_at_start`:
      evaluate before the first block;
    - `keep`: checkpoints kept (at least 2: a crash while writing one leaves the previous);
    - `rows`: rows already in the log before this run (e.g. an earlier phase's), kept in front;
    - `loggers`: extra backends receiving every row; `progress`: a progress meter, or a bool for tqdm (it
      shows the phase, the rate of training blocks alone, an ETA adding the evaluations and checkpoints to
      come, and each evaluation's result as soon as it is done);
    - `resume_flag`: how the user asks for resume, for the messages (e.g. `--resume`).

    Evaluation and checkpoints happen when their cadence is crossed and at `total`, evaluation first.
    A non-finite block saves the last good state and raises `NonFiniteError`; Ctrl-C saves the state
    of the last complete block (noting an evaluation it interrupted, which a resumed run does first)
    and re-raises.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    if keep < 2:
        raise ValueError(f"keep must be >= 2 (a crash while writing one must leave another), got {keep}.")
    directory = None if run_dir is None else pathlib.Path(run_dir)
    ckpt_dir = (
        pathlib.Path(checkpoint_dir)
        if checkpoint_dir is not None
        else (None if directory is None else directory / "checkpoint")
    )
    writes = trainer.writes
    if writes:
        for d in (directory, ckpt_dir):
            if d is not None:
                remove_debris(d)
    identity = trainer.identity()
    evaluated = True  # whether the evaluation due at the current position has been done
    last_saved: pathlib.Path | None = None
    if resume:
        if ckpt_dir is None:
            raise ValueError(f"{resume_flag} needs a run directory.")
        like = trainer.save(state).tree
        tree, saved, folder = load_checkpoint(
            ckpt_dir, like, meta=identity, keys=trainer.identity_keys, step_of=trainer.step_of
        )
        state = trainer.restore(tree, saved, folder, state)
        last_saved = folder
        driver = saved.get("driver", {})
        evaluated = bool(driver.get("evaluated", True))
        count = driver.get("rows")
        if directory is None:
            kept: list[dict] = []
        elif count is not None:
            kept = read_rows(directory, count=int(count))
        else:  # a checkpoint of the earlier layout: rows up to its step
            kept = read_rows(directory, up_to_step=saved["step"])
        log = MetricsLog(directory if writes else None, kept)
        if trainer.position(state) > total:
            raise ValueError(
                f"the checkpoint in {folder} is at {trainer.unit} {trainer.position(state)}, beyond the {total} "
                f"asked for; ask for at least {trainer.position(state)} to resume it."
            )
    else:
        if ckpt_dir is not None and list_checkpoints(ckpt_dir):
            raise FileExistsError(
                f"{directory or ckpt_dir} already holds a run (checkpoint at {latest_checkpoint(ckpt_dir)}). Pass "
                f"{resume_flag} to continue it, or choose another run directory."
            )
        log = MetricsLog(directory if writes else None, rows)
    for logger in loggers:
        logger.write(log.rows)
    position = trainer.position(state)
    evals = [r for r in log.rows if r["kind"] == "eval"]
    last_eval = _eval_values([r for r in evals if r["step"] == evals[-1]["step"]]) if evals else None

    def write(new_rows):
        log.write(new_rows)
        for logger in loggers:
            logger.write(new_rows)

    meter = progress_meter(progress)
    handle = meter.start(total, position, trainer.unit, trainer.desc)
    pace = _Pace(total, block_size, eval_every, checkpoint_every, ckpt_dir is not None and writes)
    shown = {"phase": None, "row": {}}

    def enter(name):
        if shown["phase"] != name:
            shown["phase"] = name
            meter.phase(handle, name)

    def show(n, eval_pending=False, save_pending=False):
        timing = pace.estimate(position, eval_pending, save_pending)
        meter.update(handle, n, trainer.postfix(shown["row"], last_eval), **timing)

    def checkpoint(s, done_eval: bool) -> pathlib.Path | None:
        nonlocal last_saved
        if ckpt_dir is None or not writes:
            return None
        enter("checkpointing")
        t0 = _clock()
        saved = trainer.save(s)
        meta = {**identity, **saved.meta, "driver": {"rows": len(log.rows), "evaluated": done_eval}}
        last_saved = save_checkpoint(ckpt_dir, trainer.position(s), saved.tree, meta, saved.files, keep=keep)
        pace.saves.append(_clock() - t0)
        return last_saved

    evaluates = type(trainer).evaluate is not AbstractTrainer.evaluate  # (the default evaluates nothing)

    def evaluate(s, p, save_pending=False):
        nonlocal last_eval, evaluated
        if evaluates:
            enter("evaluating")
        evaluated = False
        t0 = _clock()
        new_rows = trainer.evaluate(s, p)
        with _DeferInterrupts():
            write(new_rows)
            evaluated = True
        pace.evals.append(_clock() - t0)
        if new_rows:
            last_eval = _eval_values(new_rows)
        show(0, save_pending=save_pending)  # the result at once, not one block late

    sizes: set[int] = set()  # block sizes run in this call: a new one compiles
    try:
        if not evaluated:  # an evaluation that a Ctrl-C interrupted: do it, and record that it is done
            evaluate(state, position, save_pending=True)
            with _DeferInterrupts():
                checkpoint(state, evaluated)
        elif position == 0 and eval_at_start and eval_every:
            evaluate(state, 0)
        while position < total:
            n = min(block_size, total - position)
            compiling = n not in sizes
            sizes.add(n)
            enter("compiling" if compiling else "training")
            t0 = _clock()
            result = trainer.block(state, n)
            if result.problem is not None:
                what = trainer.locate(state, n, result.problem)
                saved_at = checkpoint(state, evaluated)
                where = (
                    f"the last good state ({trainer.unit} {position}) is saved in {saved_at}"
                    if saved_at is not None
                    else "no run directory was given, so nothing was saved"
                )
                raise NonFiniteError(
                    f"non-finite {what}; training stopped and {where}. Check the data for NaN/inf, or lower the "
                    f"learning rate / clip gradients, then resume ({resume_flag})."
                )
            with _DeferInterrupts():
                before, state = position, result.state
                position = trainer.position(state)
                evaluated = not (_due(eval_every, before, position) or position == total)
                write(result.rows)
            if not compiling:
                pace.trained += position - before
                pace.training += _clock() - t0
            shown["row"] = result.rows[-1] if result.rows else {}
            save_due = _due(checkpoint_every, before, position) or position == total
            show(position - before, eval_pending=not evaluated, save_pending=save_due)
            if not evaluated:
                evaluate(state, position, save_pending=save_due)
            if save_due:
                with _DeferInterrupts():
                    checkpoint(state, evaluated)
        show(0)  # the ETA now 0
        enter("done")
    except KeyboardInterrupt:
        saved_at = checkpoint(state, evaluated)
        meter.close(handle)
        where = f"; the state is saved in {saved_at}, continue with {resume_flag}" if saved_at is not None else ""
        print(f"\nInterrupted at {trainer.unit} {position} of {total}{where}.", file=sys.stderr)
        raise
    except BaseException:
        meter.close(handle)
        raise
    finally:
        for logger in loggers:
            with contextlib.suppress(Exception):
                logger.close()
    meter.close(handle)
    if writes:
        trainer.finish(log.rows, directory)
    return DriveResult(state, log.rows, last_saved)


__all__ = [
    "AbstractProgressMeter",
    "AbstractTrainer",
    "Block",
    "CheckpointError",
    "DriveResult",
    "NoProgressMeter",
    "NonFiniteError",
    "Saved",
    "TextProgressMeter",
    "TqdmProgressMeter",
    "drive",
    "progress_meter",
]
