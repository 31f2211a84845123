"""A trainer for the driver's tests: no JAX, no compilation, every behaviour observable.

The state is `{"step": n, "total": 1 + 2 + ... + n}` (NumPy arrays): step `i` adds `i`, so any lost,
repeated or reordered step shows in `total`. Evaluation rows hold the total at their position. The
trainer can send itself a real SIGINT in a chosen phase at a chosen position, or report a non-finite
value at a chosen step, and charge each phase a time on a fake clock (`Clock`) for the progress tests.
"""

import os
import signal
import sys

import numpy as np

import flowsoc as fs


def fresh():
    return {"step": np.asarray(0), "total": np.asarray(0.0)}


class Clock:
    """A fake clock: `clock()` reads it, the trainer advances it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Counter(fs.AbstractTrainer):
    identity_keys = ("name",)

    def __init__(
        self,
        *,
        sigint: tuple[str, int] | None = None,
        nan_at: int | None = None,
        name: str = "toy",
        clock: Clock | None = None,
        costs: dict[str, float] | None = None,
    ):
        """`costs` (seconds on `clock`): `"step"` each step, `"compile"` more for a block of a new size,
        `"first_eval"` and `"eval"` an evaluation, `"save"` a checkpoint."""
        self.sigint, self.nan_at, self.name = sigint, nan_at, name
        self.clock, self.costs = clock, costs or {}
        self.blocks: list[int] = []
        self.sizes: set[int] = set()
        self.evaluations = 0

    def _spend(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.now += seconds

    def _maybe_sigint(self, phase: str, position: int) -> None:
        if self.sigint == (phase, position):
            self.sigint = None
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; Python raises at the next instruction

    def position(self, state):
        return int(state["step"])

    def block(self, state, n):
        p = int(state["step"])
        self._maybe_sigint("block", p)
        self.blocks.append(p)
        self._spend(n * self.costs.get("step", 0.0) + (n not in self.sizes) * self.costs.get("compile", 0.0))
        self.sizes.add(n)
        if self.nan_at is not None and p < self.nan_at <= p + n:
            return fs.Block(state, [], f"total at step {self.nan_at}")
        new = {"step": np.asarray(p + n), "total": np.asarray(float(state["total"]) + sum(range(p + 1, p + n + 1)))}
        return fs.Block(new, [{"kind": "train", "step": p + n, "total": float(new["total"])}])

    def evaluate(self, state, position):
        self._maybe_sigint("eval", position)
        self._spend(self.costs.get("eval" if self.evaluations else "first_eval", 0.0))
        self.evaluations += 1
        return [{"kind": "eval", "step": position, "eval/total": float(state["total"])}]

    def identity(self):
        return {"name": self.name}

    def save(self, state):
        self._maybe_sigint("save", int(state["step"]))
        self._spend(self.costs.get("save", 0.0))
        return fs.Saved(state, {"note": "toy"})

    def restore(self, tree, meta, folder, state):
        return tree

    def step_of(self, tree):
        return tree["step"]

    def postfix(self, row, last_eval):
        shown = {"total": f"{row['total']:g}"} if row else {}
        if last_eval:
            shown["eval"] = f"{last_eval['eval/total']:g}"
        return shown


def run(directory, total=12, resume=False, **kwargs):
    """The reference schedule: blocks of 2, evaluation every 4 (and at the start), checkpoint every 4."""
    trainer_kwargs = {k: kwargs.pop(k) for k in ("sigint", "nan_at", "name", "clock", "costs") if k in kwargs}
    trainer = Counter(**trainer_kwargs)
    settings = dict(block_size=2, eval_every=4, eval_at_start=True, checkpoint_every=4, progress=False)
    settings.update(kwargs)
    return fs.drive(trainer, fresh(), total=total, run_dir=directory, resume=resume, **settings)


if __name__ == "__main__":
    # The crash tests' child: run with checkpoints at every block, and end the process abruptly (as kill -9:
    # no `finally`, no cleanup) at file-system operation number `crash_at` counted from step `after`.
    directory, crash_at, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import shutil

    from flowsoc import _checkpoint

    count = {"n": 0, "armed": False}

    def crashing(fn):
        def wrapped(*args, **kwargs):
            if count["armed"]:
                count["n"] += 1
                if count["n"] == crash_at:
                    os._exit(9)
            return fn(*args, **kwargs)

        return wrapped

    for module, name in ((os, "replace"), (os, "fsync"), (shutil, "rmtree"), (os, "mkdir")):
        setattr(module, name, crashing(getattr(module, name)))
    _write_tree = _checkpoint._write_tree
    _checkpoint._write_tree = crashing(_write_tree)

    class Arming(Counter):
        def save(self, state):
            count["armed"] = int(state["step"]) >= after
            return super().save(state)

    fs.drive(Arming(), fresh(), total=12, run_dir=directory, block_size=2, checkpoint_every=2, progress=False)
    print(f"ops={count['n']}")
