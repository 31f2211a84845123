r"""The linear interpolation path and the memoryless noise schedule.

Conventions (as everywhere in flowsoc): noise at $t=0$, data at $t=1$,
$X_t = (1-t)X_0 + tX_1$ with $X_0 \sim \mathcal N(0, I)$. A velocity field is any callable
`field(t, x, args) -> dx/dt` (Diffrax's vector-field convention).
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real


VelocityField = Callable[[Any, Any, Any], Any]
"""`field(t, x, args) -> dx/dt`, with `dx/dt` shaped like `x`."""


def uniform_grid(num_steps: int, t0: float = 0.0) -> Float[Array, " n"]:
    r"""The uniform time grid $t_0 < t_0 + h < \dots < 1$ with $h = (1 - t_0)/K$.

    **Arguments:**

    - `num_steps`: the number of steps $K \geq 1$.
    - `t0`: the first time, in $[0, 1)$.

    **Returns:**

    An array of shape `(num_steps + 1,)`, whose last entry is exactly `1.0`.
    """
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"uniform_grid: num_steps must be an integer >= 1, got {num_steps!r}.")
    if not 0.0 <= float(t0) < 1.0:
        raise ValueError(f"uniform_grid: t0 must lie in [0, 1), got {t0!r}.")
    return jnp.linspace(t0, 1.0, num_steps + 1)


def memoryless_sigma(t: Real[ArrayLike, "..."]) -> Float[Array, "..."]:
    r"""The memoryless noise schedule of the linear path, $g(t) = \sqrt{2(1-t)/t}$.

    With this schedule the SDE $dX = (2v(t, X) - X/t)\,dt + g(t)\,dB$ has the same marginals
    as the flow ODE $dX = v\,dt$ and makes $X_0$ independent of $X_1$. Infinite at $t=0$.
    """
    t = jnp.asarray(t)
    return jnp.sqrt(2 * (1 - t) / t)


def shifted_sigma(t: Real[ArrayLike, "..."], shift: Real[ArrayLike, ""]) -> Float[Array, "..."]:
    r"""The schedule evaluated with the reference codes' shift $s$ (Adjoint Matching eq. 236):

    $$g_s(t) = \sqrt{2(1 - t + s)/(t + s)}.$$

    $s = 0$ gives [`flowsoc.memoryless_sigma`][]; $s = h$ (the grid step) removes the
    singularity at $t = 0$ and keeps the noise positive on the last step.
    """
    t = jnp.asarray(t)
    return jnp.sqrt(2 * (1 - t + shift) / (t + shift))


def memoryless_drift(
    field: VelocityField, t: Real[ArrayLike, ""], x: Array, args: Any, shift: Real[ArrayLike, ""]
) -> Array:
    r"""The memoryless drift of a velocity field, $b(x, t) = 2v(t, x) - x/(t + s)$."""
    return 2 * field(t, x, args) - x / (t + shift)


def interpolate(
    x0: Float[Array, "*shape"], x1: Float[Array, "*shape"], t: Real[ArrayLike, ""]
) -> Float[Array, "*shape"]:
    r"""The linear interpolant $X_t = (1-t)X_0 + tX_1$."""
    return (1 - t) * x0 + t * x1


# ---------------------------------------------------------------------------------------
# Grid handling shared by the samplers, the adjoint and the losses.


def _is_concrete(x) -> bool:
    try:
        np.asarray(x)
    except Exception:  # a tracer
        return False
    return True


def result_dtype(*values) -> Any:
    """The dtype JAX's standard promotion gives `values`, computed explicitly (so that it can be used to
    cast the operands of a mixed-precision expression under `jax_numpy_dtype_promotion="strict"`)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(*values)


def check_grid(ts: Array, name: str) -> Array:
    """Validate a time grid: one dimension, at least two points, strictly increasing, in [0, 1].

    Checked eagerly when the grid is concrete, and at run time (`eqx.error_if`) when traced.
    """
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"{name}: the time grid `ts` must be 1-D with at least 2 points, got shape {ts.shape}.")
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        ts = ts.astype(float)
    if _is_concrete(ts):
        t = np.asarray(ts)
        if not np.all(np.isfinite(t)):
            raise ValueError(f"{name}: the time grid `ts` contains non-finite values.")
        if not np.all(np.diff(t) > 0):
            raise ValueError(f"{name}: the time grid `ts` must be strictly increasing, got {t}.")
        if t[0] < 0 or t[-1] > 1:
            raise ValueError(f"{name}: the time grid `ts` must lie in [0, 1], got [{t[0]}, {t[-1]}].")
        return ts
    bad = jnp.any(jnp.diff(ts) <= 0) | (ts[0] < 0) | (ts[-1] > 1) | ~jnp.all(jnp.isfinite(ts))
    return eqx.error_if(ts, bad, f"{name}: the time grid `ts` must be strictly increasing within [0, 1].")


def default_final_ode_step(shift) -> bool:
    """The samplers' default for a noiseless last step: on, unless `shift` is a concrete 0 (the exact SDE,
    whose last step is noisy). Call it with the shift as given, before `resolve_shift`."""
    return not (shift is not None and _is_concrete(shift) and float(np.asarray(shift)) == 0.0)


def resolve_shift(ts: Array, shift, name: str):
    """`shift=None` means the reference default, the first grid step. Validates `shift >= 0`
    and that a grid starting at t=0 has a positive shift (the schedule is singular there)."""
    if shift is None:
        return ts[1] - ts[0]
    if _is_concrete(shift):
        s = float(np.asarray(shift))
        if not np.isfinite(s) or s < 0:
            raise ValueError(f"{name}: shift must be finite and >= 0, got {s}.")
        if s == 0 and _is_concrete(ts) and float(np.asarray(ts)[0]) == 0.0:
            raise ValueError(
                f"{name}: shift=0 needs a grid starting at t0 > 0 (g(t) and x/t are singular at "
                "t=0); use uniform_grid(K, t0=...) or a positive shift."
            )
        return jnp.asarray(s, dtype=ts.dtype)
    return shift


def check_lam(lam, name: str):
    """Validate the trust-region parameter λ > 0 (eagerly if concrete, at run time if traced)."""
    if _is_concrete(lam):
        value = np.asarray(lam)
        if value.ndim != 0 or not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: lam must be a finite scalar > 0, got {lam!r}.")
        return jnp.asarray(lam)
    lam = jnp.asarray(lam)
    return eqx.error_if(lam, ~(lam > 0) | ~jnp.isfinite(lam), f"{name}: lam must be finite and > 0.")


def check_finite(x: Array, what: str, name: str) -> Array:
    """Raise (eagerly or at run time) if `x` holds NaN or infinity."""
    if _is_concrete(x):
        if not np.all(np.isfinite(np.asarray(x))):
            raise ValueError(f"{name}: {what} contains NaN or infinite values.")
        return x
    return eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), f"{name}: {what} contains NaN or infinite values.")


def check_path_shapes(xs: Array, ts: Array, name: str, **others: Array) -> None:
    """`xs` must be `(len(ts), *shape)`; every array in `others` must match `xs`."""
    if xs.ndim < 1 or xs.shape[0] != ts.shape[0]:
        raise ValueError(
            f"{name}: `xs` must have shape (len(ts), *state_shape) = ({ts.shape[0]}, ...), got {xs.shape}."
        )
    for key, value in others.items():
        if value.shape != xs.shape:
            raise ValueError(f"{name}: `{key}` has shape {value.shape} but `xs` has shape {xs.shape}.")
