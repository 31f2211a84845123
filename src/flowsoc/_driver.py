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


class AbstractProgressMeter(abc.ABC):
    """Shows a run's progress (after Diffrax's `AbstractProgressMeter`): `start` returns a handle that
    `update` and `close` receive."""

    @abc.abstractmethod
    def start(self, total: int, initial: int, unit: str, desc: str) -> Any: ...

    @abc.abstractmethod
    def update(self, handle: Any, n: int, postfix: dict[str, str]) -> None: ...

    @abc.abstractmethod
    def close(self, handle: Any) -> None: ...


class NoProgressMeter(AbstractProgressMeter):
    """Shows nothing."""

    def start(self, total, initial, unit, desc):
        return None

    def update(self, handle, n, postfix):
        pass

    def close(self, handle):
        pass


@dataclasses.dataclass
class _TextHandle:
    total: int
    done: int
    unit: str
    desc: str
    started: float
    first: int
    last_print: float = -math.inf


@dataclasses.dataclass(frozen=True)
class TextProgressMeter(AbstractProgressMeter):
    """One plain line every `min_interval` seconds (and at the end): for logs and non-interactive jobs."""

    min_interval: float = 10.0
    file: Any = None

    def start(self, total, initial, unit, desc):
        return _TextHandle(total, initial, unit, desc, time.monotonic(), initial)

    def update(self, handle, n, postfix):
        handle.done += n
        now = time.monotonic()
        if now - handle.last_print >= self.min_interval or handle.done >= handle.total:
            handle.last_print = now
            rate = (handle.done - handle.first) / max(now - handle.started, 1e-9)
            left = (handle.total - handle.done) / rate if rate > 0 else math.inf
            eta = "?" if not math.isfinite(left) else time.strftime("%H:%M:%S", time.gmtime(left))
            extra = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(
                f"{handle.desc + ': ' if handle.desc else ''}{handle.done}/{handle.total} {handle.unit}s "
                f"({100 * handle.done / handle.total:.0f}%, {rate:.3g} {handle.unit}/s, ETA {eta}) {extra}".rstrip(),
                file=self.file or sys.stdout,
                flush=True,
            )

    def close(self, handle):
        pass


class TqdmProgressMeter(AbstractProgressMeter):
    """A tqdm bar with the live metrics as its postfix."""

    def start(self, total, initial, unit, desc):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=desc or None, dynamic_ncols=True)

    def update(self, handle, n, postfix):
        handle.update(n)
        handle.set_postfix(postfix, refresh=False)

    def close(self, handle):
        handle.close()


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
    - `loggers`: extra backends receiving every row; `progress`: a progress meter, or a bool for tqdm;
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
    last_eval = next((r for r in reversed(log.rows) if r["kind"] == "eval"), None)

    def write(new_rows):
        log.write(new_rows)
        for logger in loggers:
            logger.write(new_rows)

    def checkpoint(s, done_eval: bool) -> pathlib.Path | None:
        nonlocal last_saved
        if ckpt_dir is None or not writes:
            return None
        saved = trainer.save(s)
        meta = {**identity, **saved.meta, "driver": {"rows": len(log.rows), "evaluated": done_eval}}
        last_saved = save_checkpoint(ckpt_dir, trainer.position(s), saved.tree, meta, saved.files, keep=keep)
        return last_saved

    def evaluate(s, p):
        nonlocal last_eval, evaluated
        evaluated = False
        new_rows = trainer.evaluate(s, p)
        with _DeferInterrupts():
            write(new_rows)
            evaluated = True
        if new_rows:
            last_eval = {k: v for r in new_rows for k, v in r.items() if "/" in k}

    meter = progress_meter(progress)
    handle = meter.start(total, position, trainer.unit, trainer.desc)
    try:
        if not evaluated:  # an evaluation that a Ctrl-C interrupted: do it, and record that it is done
            evaluate(state, position)
            with _DeferInterrupts():
                checkpoint(state, evaluated)
        elif position == 0 and eval_at_start and eval_every:
            evaluate(state, 0)
        while position < total:
            n = min(block_size, total - position)
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
            meter.update(handle, position - before, trainer.postfix(result.rows[-1] if result.rows else {}, last_eval))
            if not evaluated:
                evaluate(state, position)
            if _due(checkpoint_every, before, position) or position == total:
                with _DeferInterrupts():
                    checkpoint(state, evaluated)
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
