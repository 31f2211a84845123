r"""Exact oracles for a Gaussian base model: verify any set-up against closed forms.

Base law $X_1 \sim \mathcal N(\mu, \Sigma)$ under the linear path with $X_0 \sim \mathcal N(0, I)$:
$X_t \sim \mathcal N(t\mu, C_t)$ with $C_t = (1-t)^2 I + t^2\Sigma$, and the flow-matching velocity

$$v(t, x) = \mu + (t\Sigma - (1-t)I)\,C_t^{-1}(x - t\mu).$$

Rewards: linear $r(x) = b^\top x$ and quadratic $r(x) = -\tfrac12 (x-c)^\top A (x-c)$. The tilted
target is $p^* \propto p_{\rm base}\,e^{r/\lambda}$. All functions act on float arrays (use float64
for tight checks) and are jittable.
"""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Real


def marginal_cov(cov: Float[ArrayLike, "d d"], t: Real[ArrayLike, ""]) -> Float[Array, "d d"]:
    r"""$C_t = (1-t)^2 I + t^2 \Sigma$, the covariance of $X_t$."""
    cov = jnp.asarray(cov)
    return (1 - t) ** 2 * jnp.eye(cov.shape[0], dtype=cov.dtype) + t**2 * cov


def velocity_matrix(cov: Float[ArrayLike, "d d"], t: Real[ArrayLike, ""]) -> Float[Array, "d d"]:
    r"""$M_t = (t\Sigma - (1-t)I)\,C_t^{-1}$, the (state-independent, symmetric) Jacobian of $v$."""
    cov = jnp.asarray(cov)
    eye = jnp.eye(cov.shape[0], dtype=cov.dtype)
    return jnp.linalg.solve(marginal_cov(cov, t), (t * cov - (1 - t) * eye).T).T


class GaussianVelocity(eqx.Module):
    r"""The exact flow-matching velocity of $\mathcal N(\mu, \Sigma)$ as a velocity field,
    `field(t, x, args)`, for states of shape `(..., d)`:

    $$v(t, x) = \mu + (t\Sigma - (1-t)I)\,C_t^{-1}(x - t\mu).$$
    """

    mean: Float[Array, " d"]
    cov: Float[Array, "d d"]

    def __init__(self, mean: Float[ArrayLike, " d"], cov: Float[ArrayLike, "d d"]):
        self.mean = jnp.asarray(mean)
        self.cov = jnp.asarray(cov)
        if self.mean.ndim != 1 or self.cov.shape != (self.mean.shape[0],) * 2:
            raise ValueError(f"GaussianVelocity: mean {self.mean.shape} and cov {self.cov.shape} do not fit.")

    def __call__(self, t, x, args=None):
        x = jnp.asarray(x)
        m = velocity_matrix(self.cov, t)
        mean = jnp.broadcast_to(self.mean, x.shape)
        return mean + (x - t * mean) @ m.T


def flow_map(
    mean: Float[ArrayLike, " d"], cov: Float[ArrayLike, "d d"], t: Real[ArrayLike, ""], x0: Float[ArrayLike, "*batch d"]
) -> Float[Array, "*batch d"]:
    r"""The exact ODE flow map from noise: $X_t = t\mu + C_t^{1/2} X_0$ (symmetric square root)."""
    evals, evecs = jnp.linalg.eigh(marginal_cov(cov, t))
    root = (evecs * jnp.sqrt(evals)[None, :]) @ evecs.T
    x0 = jnp.asarray(x0)
    return t * jnp.broadcast_to(jnp.asarray(mean), x0.shape) + x0 @ root.T


def tilt_linear(
    mean: Float[ArrayLike, " d"],
    cov: Float[ArrayLike, "d d"],
    b: Float[ArrayLike, " d"],
    lam: Real[ArrayLike, ""] = 1.0,
) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
    r"""Tilt by $r = b^\top x$: $\mathcal N(\mu, \Sigma)\,e^{r/\lambda} \propto \mathcal N(\mu + \Sigma b/\lambda, \Sigma)$."""
    cov = jnp.asarray(cov)
    return jnp.asarray(mean) + cov @ jnp.asarray(b) / lam, cov


def tilt_quadratic(
    mean: Float[ArrayLike, " d"],
    cov: Float[ArrayLike, "d d"],
    a: Float[ArrayLike, "d d"],
    c: Float[ArrayLike, " d"],
    lam: Real[ArrayLike, ""] = 1.0,
) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
    r"""Tilt by $r = -\tfrac12(x-c)^\top A(x-c)$: $\mathcal N(m', \Sigma')$ with
    $\Sigma'^{-1} = \Sigma^{-1} + A/\lambda$ and $m' = \Sigma'(\Sigma^{-1}\mu + Ac/\lambda)$."""
    cov, a = jnp.asarray(cov), jnp.asarray(a)
    prec = jnp.linalg.inv(cov)
    new_cov = jnp.linalg.inv(prec + a / lam)
    new_mean = new_cov @ (prec @ jnp.asarray(mean) + a @ jnp.asarray(c) / lam)
    return new_mean, new_cov


def lean_adjoint_linear(
    cov: Float[ArrayLike, "d d"], b: Float[ArrayLike, " d"], t: Real[ArrayLike, ""]
) -> Float[Array, " d"]:
    r"""The lean adjoint for $r = b^\top x$ (deterministic): $\tilde a(t) = -t\,C_t^{-1}\Sigma b$,
    with $\tilde a(1) = -b$."""
    cov = jnp.asarray(cov)
    return -t * jnp.linalg.solve(marginal_cov(cov, t), cov @ jnp.asarray(b))


def optimal_velocity_linear(
    mean: Float[ArrayLike, " d"],
    cov: Float[ArrayLike, "d d"],
    b: Float[ArrayLike, " d"],
    lam: Real[ArrayLike, ""],
    t: Real[ArrayLike, ""],
    x: Float[ArrayLike, "*batch d"],
) -> Float[Array, "*batch d"]:
    r"""$v^*(t, x) = v_{\rm base}(t, x) + (1-t)\,C_t^{-1}\Sigma b/\lambda$: the adjoint-matching optimum
    for $r = b^\top x$, equal to the flow-matching velocity of the tilted target."""
    cov = jnp.asarray(cov)
    shift = (1 - t) * jnp.linalg.solve(marginal_cov(cov, t), cov @ jnp.asarray(b)) / lam
    v = GaussianVelocity(mean, cov)(t, x)
    return v + jnp.broadcast_to(shift, v.shape)


def kl(
    mean_p: Float[ArrayLike, " d"],
    cov_p: Float[ArrayLike, "d d"],
    mean_q: Float[ArrayLike, " d"],
    cov_q: Float[ArrayLike, "d d"],
) -> Float[Array, ""]:
    r"""$\mathrm{KL}(\mathcal N(m_p, S_p) \Vert \mathcal N(m_q, S_q)) =
    \tfrac12[\mathrm{tr}(S_q^{-1}S_p) - d + (m_p - m_q)^\top S_q^{-1}(m_p - m_q) + \log\det S_q - \log\det S_p]$."""
    cov_p, cov_q = jnp.asarray(cov_p), jnp.asarray(cov_q)
    diff = jnp.asarray(mean_p) - jnp.asarray(mean_q)
    d = cov_p.shape[0]
    trace = jnp.trace(jnp.linalg.solve(cov_q, cov_p))
    maha = diff @ jnp.linalg.solve(cov_q, diff)
    logdet = jnp.linalg.slogdet(cov_q)[1] - jnp.linalg.slogdet(cov_p)[1]
    return 0.5 * (trace - d + maha + logdet)


def kl_linear(
    cov: Float[ArrayLike, "d d"], b: Float[ArrayLike, " d"], lam: Real[ArrayLike, ""] = 1.0
) -> Float[Array, ""]:
    r"""$\mathrm{KL}^*(\lambda) = b^\top\Sigma b/(2\lambda^2)$ for the linear tilt (terminal and path KL)."""
    b = jnp.asarray(b)
    return b @ jnp.asarray(cov) @ b / (2 * lam**2)


def kl_quadratic(
    mean: Float[ArrayLike, " d"],
    cov: Float[ArrayLike, "d d"],
    a: Float[ArrayLike, "d d"],
    c: Float[ArrayLike, " d"],
    lam: Real[ArrayLike, ""] = 1.0,
) -> Float[Array, ""]:
    r"""$\mathrm{KL}^*(\lambda)$ of the quadratic tilt to the base (terminal and path KL at the optimum)."""
    new_mean, new_cov = tilt_quadratic(mean, cov, a, c, lam)
    return kl(new_mean, new_cov, mean, cov)


def dual_lambda_linear(
    cov: Float[ArrayLike, "d d"], b: Float[ArrayLike, " d"], budget: Real[ArrayLike, ""]
) -> Float[Array, ""]:
    r"""The λ whose tilt spends exactly the KL budget ε for $r = b^\top x$: $\lambda^* = \sqrt{b^\top\Sigma b/(2\varepsilon)}$."""
    b = jnp.asarray(b)
    return jnp.sqrt(b @ jnp.asarray(cov) @ b / (2 * budget))


def lambda_for_budget(
    kl_of_lambda: Callable[[Array], Array], budget: float, lo: float = 1e-4, hi: float = 1e4, iters: int = 200
) -> Array:
    r"""Solve $\mathrm{KL}^*(\lambda) = \varepsilon$ for a decreasing $\mathrm{KL}^*$ by bisection in $\log\lambda$
    (e.g. `lambda lam: kl_quadratic(mean, cov, a, c, lam)`)."""
    log_lo, log_hi = jnp.log(lo), jnp.log(hi)
    for _ in range(iters):
        mid = 0.5 * (log_lo + log_hi)
        too_much = kl_of_lambda(jnp.exp(mid)) > budget
        log_lo = jnp.where(too_much, mid, log_lo)
        log_hi = jnp.where(too_much, log_hi, mid)
    return jnp.exp(0.5 * (log_lo + log_hi))


def scalar_adjoint_integral(s: Real[ArrayLike, "..."]) -> Float[Array, "..."]:
    r"""$I(s) = \int_0^1 \frac{1-\tau}{\sqrt{(1-\tau)^2 + s^2\tau^2}}\,d\tau$ for a base standard deviation $s > 0$:

    $$I(s) = \frac{1-s}{1+s^2} + \frac{s^2}{(1+s^2)^{3/2}}
    \log\frac{\big(\sqrt{1+s^2}+1\big)\big(\sqrt{1+s^2}+s\big)}{s}.$$

    Scalar adjoint matching moves the mean of $\mathcal N(m, s^2)$ by $(c/\lambda)\,s\,I(s)$ for $r = c\,x$, where
    the tilt moves it by $s^2 c/\lambda$ ([`flowsoc.gaussian.scalar_adjoint_tilt_linear`][]). $I(1) \approx 0.623$,
    $I(s) \to 1$ as $s \to 0$."""
    s = jnp.asarray(s)
    root = jnp.sqrt(1 + s**2)
    return (1 - s) / (1 + s**2) + s**2 / root**3 * jnp.log((root + 1) * (root + s) / s)


def scalar_adjoint_velocity_linear(
    mean: Float[ArrayLike, " d"],
    cov: Float[ArrayLike, "d d"],
    b: Float[ArrayLike, " d"],
    lam: Real[ArrayLike, ""],
    t: Real[ArrayLike, ""],
    x: Float[ArrayLike, "*batch d"],
    shift: Real[ArrayLike, ""] = 0.0,
) -> Float[Array, "*batch d"]:
    r"""$v(t, x) = v_{\rm base}(t, x) + t\,g_s(t)^2\,b/(2\lambda)$: the scalar-adjoint-matching optimum for
    $r = b^\top x$ (adjoint $\tilde a_t = -t\,b$), $g_s(t)^2 = 2(1-t+s)/(t+s)$; with $s = 0$ the shift is
    $(1-t)\,b/\lambda$."""
    t = jnp.asarray(t)
    fraction = jnp.where(t + shift > 0, t / jnp.where(t + shift > 0, t + shift, 1.0), 1.0)  # t/(t+s); 1 at t = s = 0
    v = GaussianVelocity(mean, cov)(t, x)
    return v + jnp.broadcast_to((1 - t + shift) * fraction * jnp.asarray(b) / lam, v.shape)


def scalar_adjoint_tilt_linear(
    mean: Float[ArrayLike, " d"],
    cov: Float[ArrayLike, "d d"],
    b: Float[ArrayLike, " d"],
    lam: Real[ArrayLike, ""] = 1.0,
) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
    r"""The terminal law of the flow ODE of [`flowsoc.gaussian.scalar_adjoint_velocity_linear`][] ($s = 0$):

    $$\mathcal N\big(\mu + \Sigma^{1/2}\,I(\Sigma^{1/2})\,b/\lambda,\ \Sigma\big),$$

    $I$ of [`flowsoc.gaussian.scalar_adjoint_integral`][] applied to the eigenvalues of $\Sigma^{1/2}$. The added
    drift $(1-t)b/\lambda$ is state-independent and the base flow is affine, so the covariance is the base's and
    the mean moves by $\int_0^1 \Sigma^{1/2} C_t^{-1/2}(1-t)\,dt\;b/\lambda$."""
    cov = jnp.asarray(cov)
    evals, evecs = jnp.linalg.eigh(cov)
    s = jnp.sqrt(evals)
    gain = (evecs * (s * scalar_adjoint_integral(s))[None, :]) @ evecs.T
    return jnp.asarray(mean) + gain @ jnp.asarray(b) / lam, cov
