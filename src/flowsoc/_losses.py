r"""Training losses: flow matching, adjoint matching (with λ inside σ), and the SOC objective
for backpropagation through the SDE (the "basic adjoint" baseline)."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from ._adjoint import euler_lean_adjoint, lean_adjoint
from ._kl import path_kl, velocity_gaps
from ._paths import (
    check_finite,
    check_grid,
    check_lam,
    check_path_shapes,
    default_final_ode_step,
    interpolate,
    resolve_shift,
    result_dtype,
    shifted_sigma,
    VelocityField,
)
from ._sde import _euler_fast_path, euler_memoryless_sde, sample_sde


def flow_matching_loss(
    field: VelocityField,
    x0: Float[Array, "*shape"],
    x1: Float[Array, "*shape"],
    t: Real[ArrayLike, ""],
    *,
    args: Any = None,
) -> Float[Array, ""]:
    r"""Conditional flow matching loss of one pair, $\lVert v(t, X_t) - (X_1 - X_0) \rVert^2$
    (summed over the state's entries; average over a batch with `jax.vmap` and `mean`).

    **Arguments:**

    - `field`: the velocity field being trained.
    - `x0`: a noise sample $X_0 \sim \mathcal N(0, I)$.
    - `x1`: a data sample.
    - `t`: a time in $[0, 1]$, usually $\mathcal U[0, 1]$.
    - `args`: passed to the field (conditioning).
    """
    if x0.shape != x1.shape:
        raise ValueError(f"flow_matching_loss: x0 {x0.shape} and x1 {x1.shape} differ in shape.")
    residual = field(t, interpolate(x0, x1, t), args) - (x1 - x0)
    return jnp.sum(residual**2)


def adjoint_matching_loss(
    field: VelocityField,
    base: VelocityField,
    xs: Float[Array, "n *shape"],
    ts: Float[Array, " n"],
    adj: Float[Array, "n *shape"],
    *,
    lam: float | Real[Array, ""] = 1.0,
    args: Any = None,
    shift: float | Real[Array, ""] | None = None,
    with_kl: bool = False,
) -> Float[Array, ""] | tuple[Float[Array, ""], Float[Array, ""]]:
    r"""The adjoint matching loss of one path, with the trust-region parameter λ inside σ:

    $$L(\theta) = \sum_{i=0}^{n-2} \Big\lVert \frac{2}{\sigma_i}\big(v_\theta(t_i, x_i) - v_{\rm base}(t_i, x_i)\big)
    + \sigma_i \tilde a_i \Big\rVert^2, \qquad \sigma_i = g_s(t_i)/\sqrt\lambda,$$

    summed over grid points and state entries (average over a batch yourself, as the reference
    codes do). The states, the adjoint and the base velocities are constants (no backpropagation
    through the SDE). The minimiser is $v_\theta = v_{\rm base} - \frac{g^2}{2\lambda}\tilde a$, whose
    terminal law is $p_{\rm base}\,e^{r/\lambda}/Z$ for $\tilde a(1) = -\nabla r$.

    **Arguments:**

    - `field`: the fine-tuned velocity field $v_\theta$ (differentiate with respect to it).
    - `base`: the base velocity field.
    - `xs`: the states at `ts`, shape `(len(ts), *shape)`, from [`flowsoc.sample_sde`][].
    - `ts`: the time grid.
    - `adj`: the lean adjoint at `ts`, from [`flowsoc.lean_adjoint`][].
    - `lam`: the trust-region parameter λ > 0 (QAM's inverse temperature is 1/λ).
    - `args`: passed to both fields.
    - `shift`: the schedule shift (default: the first grid step).
    - `with_kl`: also return the path KL estimate ([`flowsoc.path_kl`][]) computed from the same
      velocity evaluations, without gradient.

    **Returns:**

    The scalar loss, or `(loss, kl)` with `with_kl=True`.
    """
    name = "adjoint_matching_loss"
    ts = check_grid(ts, name)
    xs, adj = jnp.asarray(xs), jnp.asarray(adj)
    check_path_shapes(xs, ts, name, adj=adj)
    lam = check_lam(lam, name)
    shift = resolve_shift(ts, shift, name)
    xs = check_finite(jax.lax.stop_gradient(xs), "the states `xs`", name)
    gaps = velocity_gaps(field, base, xs, ts, args)
    loss = matching_loss_from_gaps(gaps, adj, ts, lam, shift)
    if not with_kl:
        return loss
    kl = path_kl(field, base, xs, ts, shift=shift, gaps=jax.lax.stop_gradient(gaps))
    return loss, kl


def matching_loss_from_gaps(gaps: Array, adj: Array, ts: Array, lam: Array, shift) -> Array:
    r"""$\sum_i \lVert (2/\sigma_i)\,\Delta v_i + \sigma_i \tilde a_i \rVert^2$ from the velocity gaps
    $\Delta v_i = v_\theta(t_i, x_i) - v_{\rm base}(t_i, x_i)$, $i = 0 \dots n-2$, and the adjoint at `ts` (its last
    entry unused, no gradient): the arithmetic of [`flowsoc.adjoint_matching_loss`][] after its field calls."""
    adj = jax.lax.stop_gradient(adj[:-1])
    g = shifted_sigma(ts[:-1], shift)
    expand = (slice(None),) + (None,) * (gaps.ndim - 1)
    dtype = result_dtype(g, lam, gaps, adj)
    sigma = (g.astype(dtype) / jnp.sqrt(lam.astype(dtype)))[expand]
    return jnp.sum(((2 / sigma) * gaps.astype(dtype) + sigma * adj.astype(dtype)) ** 2)


SHARE_PASSES = True
"""`adjoint_matching_on_sde_path` shares network passes where it can (`False`: the three public calls, for
benchmarks that count the arithmetic saved)."""


def adjoint_matching_on_sde_path(
    field: VelocityField,
    base: VelocityField,
    x0: Array,
    ts: Array,
    key: PRNGKeyArray,
    terminal: Callable[[Array], Array],
    *,
    lam: float | Real[Array, ""],
    args: Any = None,
    base_time: str = "grid",
    final_ode_step: bool = False,
) -> tuple[Array, Array, Array]:
    r"""One adjoint matching pass of the agents: the memoryless SDE of `field` (frozen, its last step the base's
    noiseless step), the lean adjoint through `base` from `terminal(x1)`, and the loss and path KL on that path:

        xs = sample_sde(frozen field, x0, ts, key, args=args, final_field=base)
        adj = lean_adjoint(base, xs, ts, terminal(xs[-1]), args=args, base_time=..., final_ode_step=...)
        loss, kl = adjoint_matching_loss(field, base, xs, ts, adj, lam=lam, args=args, with_kl=True)

    returning `(loss, kl, adj)`. On a fixed Euler grid (the default shift, at most `UNROLL_MAX_STEPS` steps, one
    dtype) each network pass those three calls share is done once, unrolled: the SDE's passes of `field` at $x_i$
    (the states behind `stop_gradient`, the velocities keeping their parameter gradient) are the loss's, the last
    base step's pass is the loss's base at $t_{n-2}$, and with `base_time="grid"` the forward passes of the
    adjoint's vector–Jacobian products are the loss's base at every $t_i$ (with `"next"` and `"mid"` they are at
    other times, and the loss evaluates the base at $t_i$, $i < n-2$, itself, as one batch). The same values at the
    same points as the three calls, up to float rounding; otherwise it makes the three calls."""
    name = "adjoint_matching_loss"
    ts = check_grid(ts, name)
    x0 = jnp.asarray(x0)
    shift = resolve_shift(ts, None, name)
    field_arrays, field_static = eqx.partition(field, eqx.is_array)
    frozen = eqx.combine(jax.lax.stop_gradient(field_arrays), field_static)
    dtypes = [eqx.filter_eval_shape(f, ts[0], x0, args).dtype for f in (field, base)]
    if not (SHARE_PASSES and _euler_fast_path(None, None, ts, x0.dtype, shift.dtype, *dtypes)):
        xs = sample_sde(frozen, x0, ts, key, args=args, final_field=base)
        adj = lean_adjoint(
            base, xs, ts, terminal(xs[-1]), args=args, base_time=base_time, final_ode_step=final_ode_step
        )
        loss, kl = adjoint_matching_loss(field, base, xs, ts, adj, lam=lam, args=args, with_kl=True)
        return loss, kl, adj
    lam = check_lam(lam, name)
    xs, v_field, v_last = euler_memoryless_sde(
        field, x0, ts, key, args=args, shift=shift, final_ode_step=True, final_field=base, stop_states=True
    )
    xs = check_finite(xs, "the states `xs`", name)
    adj, v_adjoint = euler_lean_adjoint(
        base,
        xs,
        ts,
        check_finite(jnp.asarray(terminal(xs[-1])), "`terminal`", "lean_adjoint"),
        args=args,
        shift=shift,
        base_time=base_time,
        final_ode_step=final_ode_step,
    )
    v_theta = jnp.stack(v_field + [jnp.asarray(field(ts[-2], xs[-2], args)).astype(xs.dtype)])
    if base_time == "grid":
        v_base = jnp.stack(v_adjoint)
    else:
        v_base = jax.vmap(lambda t, x: base(t, x, args))(ts[:-2], xs[:-2]).astype(xs.dtype)
        v_base = jnp.concatenate([v_base, v_last[None]])
    gaps = v_theta - jax.lax.stop_gradient(v_base)
    loss = matching_loss_from_gaps(gaps, adj, ts, lam, shift)
    kl = path_kl(field, base, xs, ts, shift=shift, gaps=jax.lax.stop_gradient(gaps))
    return loss, kl, adj


def soc_objective(
    field: VelocityField,
    base: VelocityField,
    x0: Float[Array, "*shape"],
    ts: Float[Array, " n"],
    key: PRNGKeyArray,
    reward: Callable[[Array, Any], Array],
    *,
    lam: float | Real[Array, ""] = 1.0,
    args: Any = None,
    shift: float | Real[Array, ""] | None = None,
    running_cost_scale: float | Real[ArrayLike, ""] = 1.0,
    final_ode_step: bool | None = None,
    cost_final_step: bool = False,
) -> Float[Array, ""]:
    r"""The SOC objective of one sampled path, differentiable through the SDE:

    $$J = \lambda\,c \sum_{i \in I} \frac{2 h_i}{g_s(t_i)^2}
    \big\lVert v_\theta(t_i, x_i) - v_{\rm base}(t_i, x_i) \big\rVert^2 - r(x_{n-1}, \texttt{args}),$$

    the path $x_{0:n-1}$ sampled by [`flowsoc.sample_sde`][] with the fine-tuned field (its last step, by
    default, a noiseless Euler step of the base). $I$ holds the noisy steps, $i = 0 \dots n-3$ with that
    last step (it carries no control, hence no cost), $i = 0 \dots n-2$ without it; $h_i = t_{i+1} - t_i$.
    The sum is [`flowsoc.path_kl`][] over $I$; λ times it discretises $\tfrac12\int\lVert u\rVert^2 dt$.

    Its gradient (the discrete adjoint: the "basic adjoint", BAM in QAM) flows through every state, into
    both fields' outputs, the last base step included; the Brownian increments are constants. The base's
    array leaves are put behind `stop_gradient` here (it is the fixed reference of the problem); the reward
    is the caller's to freeze. QAM's BAM sums the running cost without the step size:
    `running_cost_scale = 1/h`.

    **Arguments:**

    - `field`, `base`: the fine-tuned and base velocity fields.
    - `x0`, `ts`, `key`: initial state, grid and key of the sampler.
    - `reward`: `reward(x1, args) -> scalar`, differentiable.
    - `lam`: the trust-region parameter λ > 0.
    - `args`, `shift`, `final_ode_step`: as in the sampler (the last step on unless `shift == 0`).
    - `running_cost_scale`: the factor $c$ on the running cost (default 1, the exact objective).
    - `cost_final_step`: also charge the noiseless last step's gap at $t_{n-2}$, as `path_kl` does.

    **Returns:**

    The scalar objective (to minimise).
    """
    name = "soc_objective"
    lam = check_lam(lam, name)
    ts = check_grid(ts, name)
    if final_ode_step is None:
        final_ode_step = default_final_ode_step(shift)
    shift = resolve_shift(ts, shift, name)
    base_arrays, base_static = eqx.partition(base, eqx.is_array)
    base = eqx.combine(jax.lax.stop_gradient(base_arrays), base_static)
    xs = sample_sde(field, x0, ts, key, args=args, shift=shift, final_ode_step=final_ode_step, final_field=base)
    charged = ts.shape[0] - (2 if final_ode_step and not cost_final_step else 1)
    if charged == 0:
        running = jnp.zeros((), xs.dtype)
    else:
        xs_c, ts_c = xs[: charged + 1], ts[: charged + 1]
        gaps = velocity_gaps(field, base, xs_c, ts_c, args, stop_base=False)
        running = path_kl(field, base, xs_c, ts_c, shift=shift, gaps=gaps)
    reward_value = jnp.asarray(reward(xs[-1], args))
    scale = jnp.asarray(running_cost_scale)
    dtype = result_dtype(lam, scale, running, reward_value)
    return lam.astype(dtype) * scale.astype(dtype) * running.astype(dtype) - reward_value.astype(dtype)
