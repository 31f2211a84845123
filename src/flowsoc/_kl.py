r"""Path-space KL between the fine-tuned and base memoryless SDEs (Girsanov), and the
closed-form KL at the tilted optimum."""

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Real

from ._paths import (
    check_finite,
    check_grid,
    check_lam,
    check_path_shapes,
    resolve_shift,
    result_dtype,
    shifted_sigma,
    VelocityField,
)


def velocity_gaps(
    field: VelocityField, base: VelocityField, xs: Array, ts: Array, args: Any, *, stop_base: bool = True
) -> Array:
    r"""$v_\theta(t_i, x_i) - v_{\rm base}(t_i, x_i)$ for $i = 0 \dots n-2$, the base's output without
    gradient (`stop_base=False`: with gradient, e.g. with respect to the states). The grid points are
    evaluated as one batch (`jax.vmap` over time)."""
    t, x = ts[:-1], xs[:-1]
    v_field = jax.vmap(lambda ti, xi: field(ti, xi, args))(t, x)
    v_base = jax.vmap(lambda ti, xi: base(ti, xi, args))(t, x)
    return v_field - (jax.lax.stop_gradient(v_base) if stop_base else v_base)


def path_kl(
    field: VelocityField,
    base: VelocityField,
    xs: Float[Array, "n *shape"],
    ts: Float[Array, " n"],
    *,
    args: Any = None,
    shift: float | Real[Array, ""] | None = None,
    gaps: Array | None = None,
) -> Float[Array, ""]:
    r"""Girsanov estimate of $\mathrm{KL}(P^u \Vert P^{\rm base})$ along one path (TRQAM, Theorem 1):

    $$\widehat{\rm KL} = \sum_{i=0}^{n-2} \frac{2 h_i}{g_s(t_i)^2}\,
    \big\lVert v_\theta(t_i, x_i) - v_{\rm base}(t_i, x_i) \big\rVert^2, \qquad h_i = t_{i+1} - t_i.$$

    λ cancels: $\frac{1}{2\lambda}\lVert u\rVert^2 = 2\lVert\Delta v\rVert^2/g^2$. For Euler–Maruyama
    steps this is exact, not an approximation: both chains' transitions are Gaussian with the same
    covariance $h_i g_i^2 I$, the KL of step $i$ given $x_i$ is its term, and the chain rule sums
    them; over paths of the fine-tuned chain the mean of the sum is the chains' KL.

    With a noiseless last step (as [`flowsoc.sample_sde`][] takes it by default), the last term,
    $i = n-2$, is not the KL of that step. With `final_field=base` (the reference codes) both chains
    take the same deterministic base step, which adds nothing to their KL: the chains' KL is the sum
    over $i \le n-3$. (Were the fine-tuned field's own noiseless step compared with the base's, the
    two path laws would be mutually singular and their KL infinite.) The term is what that step
    would cost as an Euler–Maruyama step with noise $g_s(t_{n-2})$, as in TRQAM's estimator: it
    charges the fine-tuned field at $t_{n-2}$, where adjoint matching trains it and the policy's
    ODE uses it.

    **Arguments:**

    - `field`, `base`: the fine-tuned and base velocity fields.
    - `xs`: states at `ts` of a path of the fine-tuned SDE, shape `(len(ts), *shape)`.
    - `ts`: the time grid.
    - `args`: passed to both fields.
    - `shift`: the schedule shift (default: the first grid step).
    - `gaps`: precomputed velocity differences at `(ts[:-1], xs[:-1])` (skips the field calls).

    **Returns:**

    The scalar estimate (not divided by anything: average over paths yourself).
    """
    name = "path_kl"
    ts = check_grid(ts, name)
    xs = jnp.asarray(xs)
    check_path_shapes(xs, ts, name)
    shift = resolve_shift(ts, shift, name)
    if gaps is None:
        xs = check_finite(jax.lax.stop_gradient(xs), "the states `xs`", name)
        gaps = velocity_gaps(field, base, xs, ts, args)
    h = jnp.diff(ts)
    weights = 2 * h / shifted_sigma(ts[:-1], shift) ** 2
    per_step = jnp.sum(gaps.reshape(gaps.shape[0], -1) ** 2, axis=1)
    dtype = result_dtype(weights, per_step)
    return jnp.sum(weights.astype(dtype) * per_step.astype(dtype))


def optimal_kl(base_rewards: Float[Array, " samples"], lam: float | Real[Array, ""]) -> Float[Array, ""]:
    r"""The KL of the tilted optimum $p^* \propto p_{\rm base}\,e^{r/\lambda}$ to the base, from
    rewards of base samples:

    $$\mathrm{KL}^*(\lambda) = \frac{\mathbb E_{p^*}[r]}{\lambda} - \log \mathbb E_{p_{\rm base}}\big[e^{r/\lambda}\big],$$

    both expectations estimated by self-normalised importance weights
    $w_j \propto e^{r_j/\lambda}$ over `base_rewards` $= (r(X^{(j)}))_j$, $X^{(j)} \sim p_{\rm base}$.
    With a memoryless SDE this is also the path KL at the optimum. Decreasing in λ
    ($d\mathrm{KL}^*/d\lambda = -\mathrm{Var}_{p^*}(r)/\lambda^3$).

    **Arguments:**

    - `base_rewards`: rewards of samples of the base model, shape `(samples,)`.
    - `lam`: λ > 0.

    **Returns:**

    The scalar $\mathrm{KL}^*(\lambda)$.
    """
    name = "optimal_kl"
    lam = check_lam(lam, name)
    r = jnp.asarray(base_rewards)
    if r.ndim != 1 or r.shape[0] < 1:
        raise ValueError(f"{name}: base_rewards must be a non-empty 1-D array, got shape {r.shape}.")
    r = check_finite(r, "base_rewards", name)
    logits = r / lam
    log_mean_exp = jax.nn.logsumexp(logits) - jnp.log(r.shape[0])
    weights = jax.nn.softmax(logits)
    return jnp.sum(weights * r) / lam - log_mean_exp
