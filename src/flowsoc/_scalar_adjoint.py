r"""Scalar adjoint matching: adjoint matching on bridge states around a terminal sample, with the adjoint
approximated by a scalar multiple of the terminal one (SQAM, "Q-Learning with Scalar Adjoint Matching").

Exact adjoint matching rolls the fine-tuned SDE forward and solves the lean adjoint ODE backward through
the base (one vector-Jacobian product per step). Scalar adjoint matching does neither: from one terminal
sample $\hat x$ (the fine-tuned flow's ODE) it draws independent bridge states of the linear path,

$$x_{\tau_k} = (1 - \tau_k)\,\varepsilon_k + \tau_k\,\hat x, \qquad \varepsilon_k \sim \mathcal N(0, I),
\qquad \tau_k = k/K,\ k = 1 \dots K,$$

and regresses on them with the adjoint $\tilde a_{\tau} = \tau\,\tilde a_1$, $\tilde a_1 = -\nabla r(\hat x)$
(the lean adjoint of a linear path with a point-mass base; one reward gradient per sample).

Its fixed point is not the tilted law $p_{\rm base}\,e^{r/\lambda}$: for a Gaussian base
$\mathcal N(\mu, \Sigma)$ and $r = b^\top x$ the minimiser is $v_\theta = v_{\rm base} + \tau g(\tau)^2 b/(2\lambda)$,
whose terminal law is $\mathcal N(\mu + \Sigma^{1/2} I(\Sigma^{1/2})\,b/\lambda, \Sigma)$ where exact adjoint
matching gives $\mathcal N(\mu + \Sigma b/\lambda, \Sigma)$ ([`flowsoc.gaussian.scalar_adjoint_tilt_linear`][]).
"""

from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, Real

from ._paths import check_finite, check_lam, result_dtype, shifted_sigma, VelocityField


def bridge_times(num_times: int) -> Float[Array, " k"]:
    r"""The bridge times $\tau_k = k/K$, $k = 1 \dots K$."""
    if not isinstance(num_times, int) or isinstance(num_times, bool) or num_times < 1:
        raise ValueError(f"bridge_times: num_times must be a positive integer, got {num_times!r}.")
    return jnp.arange(1, num_times + 1, dtype=jnp.result_type(float)) / num_times


def bridge_states(x1: Float[Array, "*shape"], taus: Float[Array, " k"], key: PRNGKeyArray) -> Float[Array, "k *shape"]:
    r"""States of the linear path pinned at $x_1$: $x_{\tau_k} = (1-\tau_k)\,\varepsilon_k + \tau_k x_1$ with
    independent $\varepsilon_k \sim \mathcal N(0, I)$, so $x_{\tau} \sim \mathcal N(\tau x_1, (1-\tau)^2 I)$."""
    x1 = jnp.asarray(x1)
    taus = jnp.asarray(taus, x1.dtype)
    eps = jr.normal(key, taus.shape + x1.shape, x1.dtype)
    expand = (slice(None),) + (None,) * x1.ndim
    return (1 - taus)[expand] * eps + taus[expand] * x1[None]


def scalar_adjoint_matching_loss(
    field: VelocityField,
    base: VelocityField,
    x1: Float[Array, "*shape"],
    terminal_adjoint: Float[Array, "*shape"],
    key: PRNGKeyArray,
    *,
    num_times: int = 10,
    lam: float | Real[Array, ""] = 1.0,
    args: Any = None,
    shift: float | None = None,
    with_kl: bool = False,
) -> Float[Array, ""] | tuple[Float[Array, ""], Float[Array, ""]]:
    r"""The scalar adjoint matching loss of one terminal sample:

    $$L(\theta) = \sum_{k=1}^{K} \Big\lVert \frac{2}{\sigma_k}\big(v_\theta(\tau_k, x_{\tau_k})
    - v_{\rm base}(\tau_k, x_{\tau_k})\big) + \sigma_k\,\tau_k\,\tilde a_1 \Big\rVert^2,
    \qquad \sigma_k = g_s(\tau_k)/\sqrt\lambda,$$

    on the bridge states $x_{\tau_k}$ of [`flowsoc.bridge_states`][] at $\tau_k = k/K$, summed over
    bridge times and state entries (average over a batch yourself). The states, the adjoint and the base
    velocities are constants. The minimiser at each bridge time is
    $v_\theta = v_{\rm base} - \frac{g_s(\tau)^2}{2\lambda}\,\tau\,\tilde a_1$.

    **Arguments:**

    - `field`: the fine-tuned velocity field $v_\theta$ (differentiate with respect to it).
    - `base`: the base velocity field.
    - `x1`: the terminal sample $\hat x$ (usually the fine-tuned flow's ODE from noise; held fixed).
    - `terminal_adjoint`: $\tilde a_1 = -\nabla r(\hat x)$, the shape of `x1` (held fixed).
    - `key`: the bridges' noise.
    - `num_times`: $K$, the number of bridge times.
    - `lam`: the trust-region parameter λ > 0.
    - `args`: passed to both fields.
    - `shift`: the schedule shift $s$ of $g_s$ (default $1/K$).
    - `with_kl`: also return the path-KL estimate on the bridge states,
      $\sum_k \frac{2h}{g_s(\tau_k)^2}\lVert v_\theta - v_{\rm base}\rVert^2$ with $h = 1/K$, without gradient.

    **Returns:**

    The scalar loss, or `(loss, kl)` with `with_kl=True`.
    """
    name = "scalar_adjoint_matching_loss"
    x1, adj1 = jnp.asarray(x1), jnp.asarray(terminal_adjoint)
    if adj1.shape != x1.shape:
        raise ValueError(f"{name}: terminal_adjoint {adj1.shape} and x1 {x1.shape} differ in shape.")
    lam = check_lam(lam, name)
    taus = bridge_times(num_times)
    shift = 1.0 / num_times if shift is None else shift
    if not (shift >= 0):
        raise ValueError(f"{name}: shift must be >= 0, got {shift}.")
    x1 = check_finite(jax.lax.stop_gradient(x1), "x1", name)
    adj1 = jax.lax.stop_gradient(adj1)
    xs = bridge_states(x1, taus.astype(x1.dtype), key)
    v_field = jax.vmap(lambda t, x: field(t, x, args))(taus, xs)
    v_base = jax.lax.stop_gradient(jax.vmap(lambda t, x: base(t, x, args))(taus, xs))
    gaps = v_field - v_base
    g = shifted_sigma(taus, shift)
    expand = (slice(None),) + (None,) * x1.ndim
    dtype = result_dtype(g, lam, gaps, adj1)
    sigma = (g.astype(dtype) / jnp.sqrt(lam.astype(dtype)))[expand]
    adj = taus.astype(dtype)[expand] * adj1.astype(dtype)[None]
    loss = jnp.sum(((2 / sigma) * gaps.astype(dtype) + sigma * adj) ** 2)
    if not with_kl:
        return loss
    per_time = jnp.sum(jax.lax.stop_gradient(gaps).reshape(num_times, -1) ** 2, axis=1).astype(dtype)
    kl = jnp.sum((2.0 / num_times) / g.astype(dtype) ** 2 * per_time)
    return loss, kl
