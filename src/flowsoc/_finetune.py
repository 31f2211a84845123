r"""Generic reward fine-tuning of any flow model by adjoint matching, with a fixed λ or a KL
trust region (projected dual descent on λ).

Each step: sample the memoryless SDE of the fine-tuned field, solve the lean adjoint from
$\tilde a(1) = -\nabla r(X_1)$ through the base, take an optax step on the adjoint-matching loss with
$\sigma = g/\sqrt\lambda$, and (trust region) a dual step on λ from the path-KL estimate measured
with the pre-update field. Many steps are fused per dispatch with `lax.scan`.
"""

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ._adjoint import lean_adjoint
from ._driver import AbstractProgressMeter, AbstractTrainer, Block, drive, Saved
from ._logging import AbstractLogger
from ._losses import adjoint_matching_loss
from ._paths import uniform_grid, VelocityField
from ._sde import sample_sde
from ._trust_region import DualDescent, DualState


Reward = Callable[[Array, Any], Array]
"""`reward(x, args) -> scalar` for one sample `x` of shape `sample_shape`, differentiable in `x`."""


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Hyperparameters of [`flowsoc.finetune`][]. Either a fixed `lam` (plain adjoint matching
    towards $p_{\\rm base}e^{r/\\lambda}$) or a `trust_region` (λ adapted by projected dual descent so that
    the path KL to the base sits at its budget):

        fs.FinetuneConfig(lam=0.5)                                          # fixed λ
        fs.FinetuneConfig(trust_region=fs.DualDescent(kl_budget=2.0))       # KL held at 2 nats
    """

    num_steps: int = 2000
    """Fine-tuning steps."""
    batch_size: int = 256
    """Paths sampled per step."""
    num_flow_steps: int = 20
    """Steps of the uniform grid from 0 to 1 on which the SDE and the lean adjoint are solved."""
    shift: float | None = None
    """The schedule shift $s$; `None` is the reference codes' choice, the grid step."""
    learning_rate: float = 1e-3
    """Adam's learning rate."""
    grad_clip: float | None = 1.0
    """Global-norm gradient clip; `None` switches it off."""
    lam: float | None = 1.0
    """The fixed λ, used when `trust_region` is `None`."""
    trust_region: DualDescent | None = None
    """Projected dual descent on λ holding the path KL (mean over paths) at `trust_region.kl_budget`
    ([`flowsoc.DualDescent`][]); `None` for the fixed `lam`."""
    steps_per_dispatch: int = 100
    """Steps fused by `lax.scan` into one compiled call."""
    checkpoint_every: int = 1000
    """Steps between checkpoints, rounded up to whole dispatches."""
    seed: int = 0
    """Seed of the run's random key."""

    def __post_init__(self):
        for name in ("num_steps", "batch_size", "num_flow_steps", "steps_per_dispatch", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FinetuneConfig: {name} must be a positive integer, got {value!r}.")
        if self.num_flow_steps < 2:
            raise ValueError(
                f"FinetuneConfig: num_flow_steps must be >= 2, got {self.num_flow_steps} (the last step is a noiseless "
                "base step: with one step nothing would be fine-tuned)."
            )
        if not np.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"FinetuneConfig: learning_rate must be > 0, got {self.learning_rate}.")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"FinetuneConfig: grad_clip must be > 0 or None, got {self.grad_clip}.")
        if self.shift is not None and not (np.isfinite(self.shift) and self.shift > 0):
            raise ValueError(
                f"FinetuneConfig: shift must be > 0 or None (the samplers start at t=0), got {self.shift}."
            )
        if self.trust_region is None:
            if self.lam is None or not np.isfinite(self.lam) or self.lam <= 0:
                raise ValueError(
                    "FinetuneConfig: give a fixed lam > 0 or trust_region=DualDescent(kl_budget=...); "
                    f"got lam={self.lam}."
                )
        elif not isinstance(self.trust_region, DualDescent):
            kind = type(self.trust_region).__name__
            raise TypeError(f"FinetuneConfig: trust_region must be a flowsoc.DualDescent or None, got {kind}.")

    @classmethod
    def fixed(cls, lam: float, **overrides) -> "FinetuneConfig":
        """Plain adjoint matching at a fixed λ (QAM's inverse temperature is 1/λ)."""
        return cls(lam=lam, trust_region=None, **overrides)


class FinetuneState(eqx.Module):
    """Everything a run needs to continue exactly: the fine-tuned field, the optimiser state,
    the dual state (λ and the KL average), the RNG key and the step."""

    field: PyTree
    opt_state: PyTree
    dual: DualState
    key: PRNGKeyArray
    step: Int[Array, ""]


class _PerSample(eqx.Module):
    """Apply a one-sample field to a batch of states (the conditioning `args` is shared)."""

    field: VelocityField

    def __call__(self, t, x, args):
        return jax.vmap(lambda xi: self.field(t, xi, args))(x)


def _select(pred, new, old):
    """`new` where `pred` holds, else `old` (array leaves; the static parts are `new`'s)."""
    new_dynamic, static = eqx.partition(new, eqx.is_array)
    old_dynamic = eqx.filter(old, eqx.is_array)
    chosen = jax.tree.map(lambda a, b: jnp.where(pred, a, b), new_dynamic, old_dynamic)
    return eqx.combine(chosen, static)


def _optimizer(config: FinetuneConfig) -> optax.GradientTransformation:
    adam = optax.adam(config.learning_rate)
    return adam if config.grad_clip is None else optax.chain(optax.clip_by_global_norm(config.grad_clip), adam)


class Finetuner(eqx.Module):
    r"""The pure pieces of reward fine-tuning: `init`, one `step`, and `run` (several steps fused
    by `lax.scan`). [`flowsoc.finetune`][] drives them with progress, checkpoints and NaN checks.

    The fields act on one sample of shape `sample_shape` (`field(t, x, args)`); the trainer vmaps
    them over the batch. Only the inexact array leaves of the fine-tuned field are trained; the
    base is never changed.
    """

    base: VelocityField
    reward: Reward = eqx.field(static=True)
    sample_shape: tuple[int, ...] = eqx.field(static=True)
    config: FinetuneConfig = eqx.field(static=True)

    def init(self, field: VelocityField | None = None, key: PRNGKeyArray | None = None) -> FinetuneState:
        """The initial state; `field` defaults to the base itself (fine-tuning starts at the base)."""
        field = self.base if field is None else field
        key = jr.key(self.config.seed) if key is None else key
        params = eqx.filter(field, eqx.is_inexact_array)
        dual = self.config.trust_region
        dual_state = dual.init() if dual is not None else DualState(jnp.asarray(self.config.lam), jnp.zeros(()))
        return FinetuneState(field, _optimizer(self.config).init(params), dual_state, key, jnp.zeros((), jnp.int32))

    def lam(self, state: FinetuneState) -> Float[Array, ""]:
        """The λ inside σ at this state."""
        dual = self.config.trust_region
        return state.dual.lam if dual is None else dual.effective_lam(state.dual)

    def step(self, state: FinetuneState, args: Any = None) -> tuple[FinetuneState, dict[str, Array]]:
        """One fine-tuning step (pure, jittable). A non-finite loss leaves the state unchanged
        but for the step counter, and reports `finite = False` in the metrics."""
        cfg = self.config
        key, key_x0, key_bm = jr.split(state.key, 3)
        ts = uniform_grid(cfg.num_flow_steps)
        x0 = jr.normal(key_x0, (cfg.batch_size,) + self.sample_shape)
        field, base = _PerSample(state.field), _PerSample(self.base)
        xs = sample_sde(field, x0, ts, key_bm, args=args, shift=cfg.shift, final_field=base)
        rewards, reward_grads = jax.vmap(jax.value_and_grad(lambda x: self.reward(x, args)))(xs[-1])
        finite = jnp.all(jnp.isfinite(xs)) & jnp.all(jnp.isfinite(reward_grads)) & jnp.all(jnp.isfinite(rewards))
        # Non-finite samples would stop the adjoint with a run-time error; zero them instead,
        # skip the update below, and let the driver report the step.
        xs = jnp.where(finite, xs, 0.0)
        reward_grads = jnp.where(finite, reward_grads, 0.0)
        adj = lean_adjoint(base, xs, ts, -reward_grads, args=args, shift=cfg.shift)
        lam = self.lam(state)

        def loss_fn(params):
            f = _PerSample(eqx.combine(params, eqx.filter(state.field, eqx.is_inexact_array, inverse=True)))
            loss, kl = adjoint_matching_loss(f, base, xs, ts, adj, lam=lam, args=args, shift=cfg.shift, with_kl=True)
            return loss / cfg.batch_size, kl / cfg.batch_size

        params = eqx.filter(state.field, eqx.is_inexact_array)
        (loss, kl), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(params)
        finite = finite & jnp.isfinite(loss) & jnp.isfinite(kl)
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes a Python float and an int32 count
            updates, opt_state = _optimizer(cfg).update(grads, state.opt_state, params)
        new_field = eqx.apply_updates(state.field, updates)
        dual = cfg.trust_region
        new_dual = state.dual if dual is None else dual.update(state.dual, jnp.where(finite, kl, 0.0))
        new_state = _select(
            finite,
            FinetuneState(new_field, opt_state, new_dual, key, state.step + 1),
            FinetuneState(state.field, state.opt_state, state.dual, key, state.step + 1),
        )
        metrics = {
            "loss": loss,
            "kl": kl,
            "lam": lam,
            "reward": jnp.mean(rewards),
            "kl_avg": new_state.dual.kl_avg,
            "finite": finite,
        }
        return new_state, metrics

    def run(self, state: FinetuneState, num_steps: int, args: Any = None) -> tuple[FinetuneState, dict[str, Array]]:
        """`num_steps` steps fused by `lax.scan`; metrics stacked along a leading axis."""
        dynamic, static = eqx.partition(state, eqx.is_array)

        def body(carry, _):
            new_state, metrics = self.step(eqx.combine(carry, static), args)
            return eqx.filter(new_state, eqx.is_array), metrics

        dynamic, metrics = jax.lax.scan(body, dynamic, None, length=num_steps)
        return eqx.combine(dynamic, static), metrics


# ---------------------------------------------------------------------------------------
# The host loop: `flowsoc.drive` with this trainer.

_NOT_CHECKED = ("num_steps", "checkpoint_every", "steps_per_dispatch")


class _FinetuneTrainer(AbstractTrainer):
    identity_keys = ("finetune_config",)
    desc = "finetune"

    def __init__(self, finetuner: Finetuner, args: Any):
        self.run = eqx.filter_jit(finetuner.run, donate="none")
        self.args = args
        config = dataclasses.asdict(finetuner.config)
        self.meta = {"finetune_config": {k: v for k, v in config.items() if k not in _NOT_CHECKED}}

    def position(self, state):
        return int(state.step)

    def block(self, state, n):
        step0 = int(state.step)
        new, metrics = self.run(state, n, self.args)
        metrics = {k: np.asarray(v) for k, v in metrics.items()}
        if not metrics["finite"].all():
            bad = step0 + int(np.argmin(metrics["finite"]))
            return Block(state, [], f"loss, samples or reward at step {bad}")
        names = [k for k in metrics if k != "finite"]
        rows = [{"kind": "train", "step": step0 + i + 1, **{k: float(metrics[k][i]) for k in names}} for i in range(n)]
        return Block(new, rows)

    def identity(self):
        return self.meta

    def save(self, state):
        return Saved(state, {})

    def restore(self, tree, meta, folder, state):
        return tree

    def step_of(self, state):
        return state.step

    def postfix(self, row, last_eval):
        return {k: f"{row[k]:.3g}" for k in ("loss", "kl", "lam", "reward") if k in row}


def finetune(
    base: VelocityField,
    reward: Reward,
    sample_shape: tuple[int, ...],
    config: FinetuneConfig,
    *,
    field: VelocityField | None = None,
    args: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | AbstractProgressMeter = True,
    loggers: Sequence[AbstractLogger] = (),
) -> tuple[VelocityField, dict[str, np.ndarray], FinetuneState]:
    r"""Fine-tune a copy of `base` towards `reward` by adjoint matching, at a fixed λ
    (target $p_{\rm base}\,e^{r/\lambda}$) or under a path-KL budget (trust region).

    **Arguments:**

    - `base`: the pre-trained velocity field `base(t, x, args)` on one sample (any `eqx.Module`).
    - `reward`: `reward(x, args) -> scalar`, differentiable, on one sample.
    - `sample_shape`: the shape of one sample, e.g. `(2,)`.
    - `config`: a [`flowsoc.FinetuneConfig`][].
    - `field`: the initial fine-tuned field (default: `base`).
    - `args`: conditioning passed to both fields and the reward (shared by the batch).
    - `checkpoint_dir`: the run directory: per-step metrics in `metrics.jsonl` and `train.csv`, checkpoints
      in `checkpoint/` every `config.checkpoint_every` steps and at the end (a directory already holding a
      run is refused unless `resume`).
    - `resume`: continue from the checkpoint in `checkpoint_dir`, exactly where it stopped.
    - `progress`: show a progress bar with the live loss, KL, λ and reward (or pass a progress meter).
    - `loggers`: extra metric backends (e.g. [`flowsoc.TensorBoardLogger`][]).

    **Returns:**

    `(field, history, state)`: the fine-tuned field, the per-step metrics (`loss`, `kl`, `lam`,
    `reward`, `kl_avg`) as numpy arrays, and the final [`flowsoc.FinetuneState`][].

    **Raises:**

    [`flowsoc.NonFiniteError`][] (a `FloatingPointError`) when a step's loss, samples or reward are not
    finite (naming the step and the last good checkpoint); [`flowsoc.CheckpointError`][] for an unusable
    checkpoint.
    """
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"finetune: config must be a FinetuneConfig, got {type(config).__name__}.")
    sample_shape = tuple(int(s) for s in sample_shape)
    finetuner = Finetuner(base, reward, sample_shape, config)
    state = finetuner.init(field)
    result = drive(
        _FinetuneTrainer(finetuner, args),
        state,
        total=config.num_steps,
        block_size=config.steps_per_dispatch,
        run_dir=checkpoint_dir,
        resume=resume,
        checkpoint_every=config.checkpoint_every,
        progress=progress,
        loggers=loggers,
    )
    rows = [r for r in result.rows if r["kind"] == "train"]
    names = [k for k in (rows[0] if rows else {}) if k not in ("kind", "step")]
    history = {k: np.asarray([r[k] for r in rows]) for k in names}
    return result.state.field, history, result.state
