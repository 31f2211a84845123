"""The Girsanov path KL: exact for Euler chains (against Gaussian transition densities), equal to
the terminal KL at the optimum, and the closed-form KL*(λ)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest
from tests.helpers import B, COV, g_shift, MLPField, moments, MU, unchecked

import flowsoc as fs
from flowsoc import gaussian as G


BASE = G.GaussianVelocity(MU, COV)


@eqx.filter_jit
def per_path_kl(field, base, xs, ts, shift):
    """`fs.path_kl` of every path of `xs` (paths along axis 1), compiled once per field type: run
    eagerly, the vmapped estimate over tens of thousands of paths costs seconds of unfused ops."""
    return jax.vmap(lambda x: fs.path_kl(field, base, x, ts, shift=shift), in_axes=1)(xs)


@pytest.mark.parametrize("lam", [0.5, 1.0, 3.0])
def test_path_kl_at_optimum_equals_terminal_kl(lam):
    """At v* the estimate averages to bᵀΣb/(2λ²) (deterministic here: v* - v_base does not depend
    on x), and agrees with the KL of the sampled terminal law to the base."""
    t0, k, n = 1e-3, 1000, 20000
    ts = fs.uniform_grid(k, t0=t0)
    optimum = G.GaussianVelocity(*G.tilt_linear(MU, COV, B, lam))
    x0 = G.flow_map(MU, COV, t0, jr.normal(jr.key(0), (n, 2)))
    xs = fs.sample_sde(optimum, x0, ts, jr.key(1), shift=0.0)
    per_path = per_path_kl(optimum, BASE, xs, ts, 0.0)
    exact = G.kl_linear(COV, B, lam)
    assert jnp.allclose(per_path.mean(), exact, rtol=5e-3), (per_path.mean(), exact)
    mean, cov = moments(xs[-1])
    terminal = G.kl(mean, cov, MU, COV)
    assert jnp.allclose(terminal, exact, rtol=0.05, atol=2e-3), (terminal, exact)


@pytest.mark.parametrize("shift", [0.0, 0.1])
def test_path_kl_is_exact_for_euler_chains(getkey, shift):
    """For Euler-Maruyama chains (no noiseless last step) the estimate is the chain rule of the
    Gaussian transitions' KLs, per path; over paths it is the mean log density ratio."""
    dim, k = 2, 10
    field, base = MLPField(dim, getkey()), MLPField(dim, getkey())
    ts = fs.uniform_grid(k, t0=0.1 if shift == 0.0 else 0.0)
    n = 40000
    x0 = jr.normal(getkey(), (n, dim))
    xs = fs.sample_sde(field, x0, ts, getkey(), shift=shift, final_ode_step=False)
    # The shift as an array: a Python float would be a static argument of the compiled functions.
    estimate = per_path_kl(field, base, xs, ts, jnp.asarray(shift))
    direct, log_ratio = chain_kl_and_log_ratio(field, base, xs, ts, jnp.asarray(shift))
    assert jnp.allclose(estimate, direct, rtol=1e-9, atol=1e-12)
    stderr = jnp.std(log_ratio) / jnp.sqrt(n)
    assert abs(log_ratio.mean() - estimate.mean()) < 4 * stderr


@eqx.filter_jit
def chain_kl_and_log_ratio(field, base, xs, ts, shift):
    """Per path of Euler-Maruyama chains `xs` (paths along axis 1): the sum of the Gaussian
    transitions' KLs, and the log density ratio of the path under the two chains (one compile
    serves both shifts: the fields, grid and shift are arguments)."""
    dim = xs.shape[-1]

    def transition(f, t, h, x):  # mean and covariance of one Euler-Maruyama transition
        mean = x + h * (2 * f(t, x) - x / (t + shift))
        return mean, h * g_shift(t, shift) ** 2 * jnp.eye(dim)

    def one_path(path):
        total_kl, log_ratio = 0.0, 0.0
        for i in range(ts.shape[0] - 1):
            t, h = ts[i], ts[i + 1] - ts[i]
            mean_f, cov = transition(field, t, h, path[i])
            mean_b, _ = transition(base, t, h, path[i])
            total_kl = total_kl + G.kl(mean_f, cov, mean_b, cov)
            log_ratio = log_ratio + jax.scipy.stats.multivariate_normal.logpdf(path[i + 1], mean_f, cov)
            log_ratio = log_ratio - jax.scipy.stats.multivariate_normal.logpdf(path[i + 1], mean_b, cov)
        return total_kl, log_ratio

    return jax.vmap(one_path, in_axes=1)(xs)


def test_optimal_kl_closed_form(getkey):
    """KL*(λ) = E_{π*}[r]/λ - log E_base[e^{r/λ}] from base rewards: for a linear reward on the
    Gaussian base it approaches bᵀΣb/(2λ²), and on the empirical base law it equals the KL of the
    importance-weighted empirical law to the uniform one exactly."""
    x = G.flow_map(MU, COV, 1.0, jr.normal(getkey(), (400000, 2)))
    rewards = x @ B
    for lam in (1.0, 2.0, 5.0):
        assert jnp.allclose(fs.optimal_kl(rewards, lam), G.kl_linear(COV, B, lam), rtol=0.03)
    r = jr.normal(getkey(), (50,))
    w = jax.nn.softmax(r / 0.7)
    assert jnp.allclose(fs.optimal_kl(r, 0.7), jnp.sum(w * jnp.log(w * 50)), rtol=1e-12)
    values = [fs.optimal_kl(rewards[:5000], lam) for lam in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(values, values[1:]))  # decreasing in λ
    with pytest.raises(ValueError, match="lam must be"):
        fs.optimal_kl(r, 0.0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        unchecked(fs.optimal_kl)(r[:, None], 1.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fs.optimal_kl(r.at[3].set(jnp.nan), 1.0)
