"""Quick start: the SOC core on a Gaussian base, checked against the exact answers.

A base flow for N(mu, Sigma) is tilted by a linear reward r(x) = b.x with trust-region parameter
lambda: the target is N(mu + Sigma b / lambda, Sigma), at path KL b.Sigma b / (2 lambda^2). The
script samples the memoryless SDE, solves the lean adjoint, evaluates the adjoint-matching loss
at the base field and at the analytic optimum, and compares the path KL with its closed form.

    python examples/quickstart.py
"""

import jax
import jax.numpy as jnp
import jax.random as jr

import flowsoc as fs
from flowsoc import gaussian as G


jax.config.update("jax_enable_x64", True)

mu, cov, b = jnp.array([0.5, -1.0]), jnp.array([[1.0, 0.3], [0.3, 0.5]]), jnp.array([1.0, 0.5])
base = G.GaussianVelocity(mu, cov)
t0, n = 0.005, 4096
ts = fs.uniform_grid(400, t0=t0)  # exact schedule (shift=0) on a grid that avoids t=0

print(
    f"{'lambda':>7} {'loss(base)':>11} {'loss(v*)':>10} {'path KL':>9} {'exact KL':>9} {'mean of X1':>18} {'target mean':>18}"
)
for lam in (0.5, 1.0, 2.0):
    optimum = G.GaussianVelocity(*G.tilt_linear(mu, cov, b, lam))
    x0 = G.flow_map(*G.tilt_linear(mu, cov, b, lam), t0, jr.normal(jr.key(0), (n, 2)))  # X_t0 of the tilted flow
    xs = fs.sample_sde(optimum, x0, ts, jr.key(1), shift=0.0)  # (len(ts), n, 2)
    adj = fs.lean_adjoint(base, xs, ts, jnp.broadcast_to(-b, x0.shape), shift=0.0)
    loss_base = fs.adjoint_matching_loss(base, base, xs, ts, adj, lam=lam, shift=0.0) / n
    loss_opt, kl = fs.adjoint_matching_loss(optimum, base, xs, ts, adj, lam=lam, shift=0.0, with_kl=True)
    mean = xs[-1].mean(0)
    target = G.tilt_linear(mu, cov, b, lam)[0]
    print(
        f"{lam:>7.2f} {loss_base:>11.3f} {loss_opt / n:>10.5f} {kl / n:>9.4f} {G.kl_linear(cov, b, lam):>9.4f}"
        f" {str(jnp.round(mean, 3)):>18} {str(jnp.round(target, 3)):>18}"
    )
