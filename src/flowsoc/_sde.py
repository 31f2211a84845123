r"""Samplers: the flow ODE and the memoryless SDE, written as Diffrax terms.

The memoryless SDE of a velocity field $v$ (linear path, Adjoint Matching eq. 27) is

$$dX = \big(2v(t, X) - X/(t+s)\big)\,dt + g_s(t)\,dB, \qquad g_s(t) = \sqrt{2(1-t+s)/(t+s)},$$

with $s$ the `shift` (see [`flowsoc.shifted_sigma`][]). It is solved by `diffrax.diffeqsolve` on
the terms `MultiTerm(ODETerm(drift), ControlTerm(diffusion, brownian))`, the diffusion being a
`lineax.DiagonalLinearOperator` (additive, diagonal noise).
"""

from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray, Real

from ._brownian import GridBrownianPath
from ._paths import (
    check_finite,
    check_grid,
    default_final_ode_step,
    resolve_shift,
    shifted_sigma,
    VelocityField,
)


class MemorylessDrift(eqx.Module):
    r"""Vector field $b(t, x) = 2v(t, x) - x/(t + s)$ of the memoryless SDE (an `ODETerm`'s field)."""

    field: VelocityField
    shift: Real[Array, ""] | float

    def __call__(self, t, x, args):
        # In the state's dtype: the time grid may be wider (float64 times, float32 states).
        v = jnp.asarray(self.field(t, x, args)).astype(x.dtype)
        return 2 * v - x / jnp.asarray(t + self.shift).astype(x.dtype)


class MemorylessDiffusion(eqx.Module):
    r"""Diffusion $g_s(t) I$ of the memoryless SDE, as a diagonal lineax operator (a `ControlTerm`'s field)."""

    shift: Real[Array, ""] | float

    def __call__(self, t, x, args):
        return lx.DiagonalLinearOperator(jnp.broadcast_to(shifted_sigma(t, self.shift), x.shape).astype(x.dtype))


def memoryless_terms(field: VelocityField, brownian: dfx.AbstractBrownianPath, shift) -> dfx.MultiTerm:
    """The Diffrax terms of the memoryless SDE of `field`: drift `ODETerm` plus additive-noise `ControlTerm`."""
    return dfx.MultiTerm(
        dfx.ODETerm(MemorylessDrift(field, shift)),
        dfx.ControlTerm(MemorylessDiffusion(shift), brownian),
    )


def _levy_area(solver) -> type:
    minimal = getattr(solver, "minimal_levy_area", None)
    if minimal is None or issubclass(dfx.BrownianIncrement, minimal):
        return dfx.BrownianIncrement
    if issubclass(dfx.SpaceTimeLevyArea, minimal):
        return dfx.SpaceTimeLevyArea
    raise ValueError(
        f"sample_sde: solver {type(solver).__name__} needs Lévy area {minimal.__name__}, which flowsoc's "
        "Brownian paths do not provide; use Euler, Heun, ShARK, SRA1, SEA or another solver needing at "
        "most space-time Lévy area."
    )


def _check_x0(x0, name):
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"{name}: x0 must be a floating-point array, got dtype {x0.dtype}.")
    return check_finite(x0, "x0", name)


def _check_field(field, t0, x0, args, name):
    """Refuse a field that cannot take `x0`, or that returns dx/dt of another shape (which the solvers would
    otherwise broadcast silently), naming both shapes. Returns the output's dtype."""
    try:
        out = eqx.filter_eval_shape(field, t0, x0, args)
    except Exception as err:  # the field's own shape error, e.g. a matmul of the wrong width
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{name}: the field cannot take x0 of shape {tuple(x0.shape)} ({first}); give x0 the shape the field "
            "expects (a field on one sample needs jax.vmap for a batch)."
        ) from err
    shape = getattr(out, "shape", None)
    if shape != x0.shape:
        raise ValueError(
            f"{name}: field(t, x, args) returned shape {shape} for x of shape {tuple(x0.shape)}; it must return "
            "dx/dt shaped like x (a field on one sample needs jax.vmap for a batch)."
        )
    return out.dtype


UNROLL_MAX_STEPS = 64
"""Fixed Euler grids of at most this many steps are solved by an unrolled Python loop instead of a Diffrax while
loop: the same arithmetic in the same order (identical results), which XLA fuses across steps and counts in full
(its cost analysis counts a while loop's body once). Longer grids use Diffrax."""


def _euler_fast_path(solver, stepsize_controller, ts, *dtypes) -> bool:
    """Fixed-step Euler on a short grid, all in one dtype: the unrolled loops below reproduce Diffrax's
    `Euler` + `StepTo` step for step (`y1 = y0 + Δt·f` for an ODE, `y1 = y0 + (Δt·b + g·ΔW)` for the SDE)."""
    euler = solver is None or type(solver) is dfx.Euler
    return (
        euler
        and stepsize_controller is None
        and ts.shape[0] - 1 <= UNROLL_MAX_STEPS
        and all(jnp.dtype(d) == ts.dtype for d in dtypes)
    )


def euler_ode(field: VelocityField, x0: Array, ts: Array, args: Any = None) -> Array:
    """The flow ODE by Euler steps on `ts`, unrolled (`sample_ode`'s fast path; no checks)."""
    x = x0
    for i in range(ts.shape[0] - 1):
        x = x + (ts[i + 1] - ts[i]) * field(ts[i], x, args)
    return x


def euler_memoryless_sde(
    field: VelocityField,
    x0: Array,
    ts: Array,
    key: PRNGKeyArray,
    *,
    args: Any = None,
    shift: Any,
    final_ode_step: bool,
    final_field: VelocityField | None = None,
    stop_states: bool = False,
) -> tuple[Array, list[Array], Array | None]:
    """The memoryless SDE by Euler–Maruyama on `ts`, unrolled (`sample_sde`'s fast path; no checks): the states,
    the field's velocities $v(t_i, x_i)$ at every noisy step and the last ODE step's velocity (or `None`).

    The noise is [`flowsoc.GridBrownianPath`][]'s, so the states equal Diffrax's `Euler` + `StepTo` solve.
    `stop_states=True` puts every state behind `stop_gradient` while the velocities keep their gradient with
    respect to the field's parameters: a loss on those velocities at the sampled states (adjoint matching,
    whose forward values they are) then reuses the sampler's forward passes."""
    ts_sde = ts[:-1] if final_ode_step else ts
    stop = jax.lax.stop_gradient if stop_states else (lambda y: y)
    velocities = []
    x = stop(x0)
    xs = [x]
    if ts_sde.shape[0] >= 2:
        normals = GridBrownianPath(ts_sde, key, x0.shape, dtype=x0.dtype).normals
        for i in range(ts_sde.shape[0] - 1):
            t0, dt = ts_sde[i], ts_sde[i + 1] - ts_sde[i]
            v = jnp.asarray(field(t0, x, args)).astype(x.dtype)
            velocities.append(v)
            b = 2 * v - x / jnp.asarray(t0 + shift).astype(x.dtype)  # MemorylessDrift
            g = jnp.broadcast_to(shifted_sigma(t0, shift), x.shape).astype(x.dtype)  # MemorylessDiffusion
            x = stop(x + (dt * b + g * (normals[i] * jnp.sqrt(dt))))
            xs.append(x)
    v_last = None
    if final_ode_step:
        last_field = field if final_field is None else final_field
        h = (ts[-1] - ts[-2]).astype(x.dtype)
        v_last = jnp.asarray(last_field(ts[-2], x, args)).astype(x.dtype)
        xs.append(stop(x + h * v_last))
    return jnp.stack(xs), velocities, v_last


def sample_ode(
    field: VelocityField,
    x0: Float[Array, "*shape"],
    ts: Float[Array, " n"],
    *,
    args: Any = None,
    solver: dfx.AbstractSolver | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    max_steps: int = 4096,
) -> Float[Array, "*shape"]:
    r"""Integrate the flow ODE $dX/dt = v(t, X)$ from `ts[0]` to `ts[-1]` and return the end state.

    **Arguments:**

    - `field`: the velocity field `field(t, x, args)`.
    - `x0`: the initial state (noise, for `ts[0] = 0`). Any shape: a batched state works when the
      field accepts it.
    - `ts`: the time grid, strictly increasing.
    - `args`: passed to the field.
    - `solver`: any Diffrax ODE solver (default `diffrax.Euler()`, the reference codes' sampler). Euler on the
      grid (no controller) with at most `UNROLL_MAX_STEPS` = 64 steps, states, times and field in one dtype, runs
      as an unrolled loop with Diffrax's arithmetic step for step (faster, and counted in full by XLA).
    - `stepsize_controller`: `None` (default) steps exactly on `ts`; pass e.g.
      `diffrax.PIDController(rtol, atol)` with `diffrax.Tsit5()` for adaptive accuracy, the
      first step then being `ts[1] - ts[0]`.
    - `max_steps`: step budget for adaptive controllers.

    **Returns:**

    $X$ at `ts[-1]`, shaped like `x0`.
    """
    name = "sample_ode"
    ts = check_grid(ts, name)
    x0 = _check_x0(x0, name)
    out_dtype = _check_field(field, ts[0], x0, args, name)
    if _euler_fast_path(solver, stepsize_controller, ts, x0.dtype, out_dtype):
        return euler_ode(field, x0, ts, args)
    solver = dfx.Euler() if solver is None else solver
    if stepsize_controller is None:
        controller, dt0, steps = dfx.StepTo(ts), None, ts.shape[0] - 1
    else:
        controller, dt0, steps = stepsize_controller, ts[1] - ts[0], max_steps
    sol = dfx.diffeqsolve(
        dfx.ODETerm(field),
        solver,
        ts[0],
        ts[-1],
        dt0,
        x0,
        args=args,
        stepsize_controller=controller,
        saveat=dfx.SaveAt(t1=True),
        max_steps=steps,
    )
    assert sol.ys is not None
    return sol.ys[-1]


def sample_sde(
    field: VelocityField,
    x0: Float[Array, "*shape"],
    ts: Float[Array, " n"],
    key: PRNGKeyArray,
    *,
    args: Any = None,
    shift: float | Real[Array, ""] | None = None,
    solver: dfx.AbstractSolver | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    final_ode_step: bool | None = None,
    final_field: VelocityField | None = None,
    max_steps: int = 4096,
) -> Float[Array, "n *shape"]:
    r"""Sample the memoryless SDE of `field` and return its states at every time of `ts`:

    $$dX = \big(2v(t, X) - X/(t+s)\big)\,dt + g_s(t)\,dB, \qquad X_{t_0} = x_0.$$

    With the base field this SDE has the flow's marginals and (from $t_0 = 0$) $X_0 \perp X_1$.
    In trust-region form the injected noise is $\sqrt\lambda\,\sigma = g$ whatever λ, so λ does
    not enter the sampler.

    **Arguments:**

    - `field`: the velocity field `field(t, x, args)` driving the SDE (the fine-tuned one).
    - `x0`: the initial state ($\mathcal N(0, I)$ noise for `ts[0] = 0`). Any shape: a batched
      state `(batch, dim)` is the fast path when the field handles the batch itself.
    - `ts`: the time grid, strictly increasing in $[0, 1]$.
    - `key`: a JAX random key for the Brownian motion.
    - `args`: passed to the field (conditioning).
    - `shift`: the schedule shift $s$. `None` (default) is the reference codes' choice, the first
      grid step $h$. `0` gives the exact SDE and needs `ts[0] > 0`.
    - `solver`: a Diffrax SDE solver for additive noise. Default `diffrax.Euler()`
      (Euler–Maruyama, the reference discretisation); `diffrax.ShARK()`, `diffrax.SRA1()`,
      `diffrax.Heun()` also work. Euler on the grid with at most 64 steps (one dtype) runs as an unrolled
      loop with Diffrax's arithmetic and noise step for step.
    - `stepsize_controller`: `None` (default) steps on `ts` with Brownian increments drawn on
      the grid ([`flowsoc.GridBrownianPath`][]); any other controller uses a
      `diffrax.VirtualBrownianTree` and saves by interpolation at `ts`.
    - `final_ode_step`: take the last step $[t_{n-2}, t_{n-1}]$ as a noiseless Euler step of the
      flow ODE, $x_{n-1} = x_{n-2} + h\,v(t_{n-2}, x_{n-2})$, as the reference codes do. Default:
      on unless `shift == 0`.
    - `final_field`: the field of that last ODE step (default `field`; the reference codes use
      the base field, so that the step carries no control).
    - `max_steps`: step budget for adaptive controllers.

    **Returns:**

    The states, shape `(len(ts), *x0.shape)`; `xs[0] == x0`.
    """
    name = "sample_sde"
    ts = check_grid(ts, name)
    x0 = _check_x0(x0, name)
    dtypes = [_check_field(field, ts[0], x0, args, name)]
    if final_field is not None:
        dtypes.append(_check_field(final_field, ts[0], x0, args, name))
    if final_ode_step is None:
        final_ode_step = default_final_ode_step(shift)
    shift = resolve_shift(ts, shift, name)
    if _euler_fast_path(solver, stepsize_controller, ts, x0.dtype, jnp.asarray(shift).dtype, *dtypes):
        return euler_memoryless_sde(
            field, x0, ts, key, args=args, shift=shift, final_ode_step=final_ode_step, final_field=final_field
        )[0]
    solver = dfx.Euler() if solver is None else solver
    ts_sde = ts[:-1] if final_ode_step else ts
    if ts_sde.shape[0] >= 2:
        levy_area = _levy_area(solver)
        if stepsize_controller is None:
            brownian = GridBrownianPath(ts_sde, key, x0.shape, levy_area=levy_area, dtype=x0.dtype)
            controller, dt0, saveat, steps = (
                dfx.StepTo(ts_sde),
                None,
                dfx.SaveAt(t0=True, steps=True),
                ts_sde.shape[0] - 1,
            )
        else:
            tol = (ts_sde[1] - ts_sde[0]) / 8
            brownian = dfx.VirtualBrownianTree(
                ts_sde[0], ts_sde[-1], tol=tol, shape=x0.shape, key=key, levy_area=levy_area
            )
            controller, dt0, saveat, steps = (
                stepsize_controller,
                ts_sde[1] - ts_sde[0],
                dfx.SaveAt(ts=ts_sde),
                max_steps,
            )
        sol = dfx.diffeqsolve(
            memoryless_terms(field, brownian, shift),
            solver,
            ts_sde[0],
            ts_sde[-1],
            dt0,
            x0,
            args=args,
            stepsize_controller=controller,
            saveat=saveat,
            max_steps=steps,
        )
        xs = sol.ys
        assert xs is not None
    else:
        xs = x0[None]
    if final_ode_step:
        last_field = field if final_field is None else final_field
        h = (ts[-1] - ts[-2]).astype(xs.dtype)
        x_last = xs[-1] + h * jnp.asarray(last_field(ts[-2], xs[-1], args)).astype(xs.dtype)
        xs = jnp.concatenate([xs, x_last[None]], axis=0)
    return xs
