"""Scalar adjoint matching against exact answers: the bridge states' law, the loss's minimiser on a Gaussian
base with a linear reward (solved exactly from the quadratic loss), the fixed point's terminal law (the flow ODE
of that minimiser against the closed form with I(s)), and a hand-written evaluation of the loss and its KL."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from tests.helpers import B, COV, MLPField, MU

import flowsoc as fs
from flowsoc import gaussian as G


def test_bridge_states_law():
    """x_τ = (1-τ)ε + τ x1: mean τ x1, standard deviation 1-τ, independent across τ and entries."""
    x1 = jnp.array([0.8, -0.3])
    taus = fs.bridge_times(4)
    assert np.allclose(taus, [0.25, 0.5, 0.75, 1.0])
    n = 200_000
    xs = jax.vmap(lambda k: fs.bridge_states(x1, taus, k))(jr.split(jr.key(0), n))  # (n, 4, 2)
    assert xs.shape == (n, 4, 2)
    mean, std = xs.mean(0), xs.std(0)
    se = np.maximum(np.asarray(1 - taus), 1e-12)[:, None] / np.sqrt(n)
    assert np.all(np.abs(mean - taus[:, None] * x1[None]) < 5 * se + 1e-12)
    assert np.allclose(std[:-1], (1 - taus[:-1])[:, None], rtol=0.01)
    assert np.all(xs[:, -1] == x1[None])  # τ = 1 is the sample itself
    flat = (xs[:, :-1] - mean[None, :-1]).reshape(n, -1)
    corr = np.corrcoef(np.asarray(flat).T)
    assert np.max(np.abs(corr - np.eye(corr.shape[0]))) < 0.02


class TableShift(eqx.Module):
    """v(t, x) = v_base(t, x) + δ_k at the bridge time τ_k = t (a free vector per bridge time)."""

    base: G.GaussianVelocity
    deltas: jax.Array  # (K, d)

    def __call__(self, t, x, args=None):
        k = jnp.round(t * self.deltas.shape[0]).astype(int) - 1
        return self.base(t, x) + self.deltas[k][None]


@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_minimiser_is_the_scalar_adjoint_optimum_on_a_gaussian_base(lam):
    """For r = bᵀx the adjoint at τ is -τ b wherever the sample is, so the loss is quadratic in the shifts δ_k and
    its exact minimiser (one Newton step) is δ_k = τ_k g_s(τ_k)² b / (2λ), the closed-form optimum."""
    k_bridges = 10
    base = G.GaussianVelocity(MU, COV)
    x1 = jnp.asarray(np.random.default_rng(0).standard_normal((16, 2)))  # any samples: the optimum ignores them
    adj1 = -jnp.broadcast_to(B, x1.shape)

    def loss(deltas):
        field = TableShift(base, deltas)
        return fs.scalar_adjoint_matching_loss(field, base, x1, adj1, jr.key(3), num_times=k_bridges, lam=lam)

    zero = jnp.zeros((k_bridges, 2))
    hess = jax.jit(jax.hessian(loss))(zero).reshape(2 * k_bridges, 2 * k_bridges)
    grad = jax.jit(jax.grad(loss))(zero).reshape(-1)
    solved = -jnp.linalg.solve(hess, grad).reshape(k_bridges, 2)
    taus = fs.bridge_times(k_bridges)
    optimum = jax.vmap(lambda t: G.scalar_adjoint_velocity_linear(MU, COV, B, lam, t, x1[0], 1 / k_bridges))(taus)
    optimum = optimum - jax.vmap(lambda t: base(t, x1[0]))(taus)
    assert np.allclose(solved, optimum, rtol=1e-10, atol=1e-12)
    assert abs(float(loss(solved))) < 1e-18 * float(loss(zero)) + 1e-20  # the optimum fits exactly


@pytest.mark.parametrize("s", [0.3, 1.0, 2.0])
def test_fixed_point_law_shifts_the_mean_by_s_times_i_of_s(s):
    """The flow ODE of v_base + (1-t) c/λ (the minimiser at every time, s = 0) maps N(0, 1) to N(m + s I(s) c/λ,
    s²): solved with flowsoc's Euler sampler on a fine grid (affine in the noise: mean from x0 = 0, scale from
    x0 = 1), against the closed form, and not the tilt's s² c/λ."""
    m, c, lam = 0.4, 1.5, 0.5
    cov = jnp.array([[s**2]])

    def field(t, x, args=None):
        return G.scalar_adjoint_velocity_linear(jnp.array([m]), cov, jnp.array([c]), lam, t, x)

    ts = fs.uniform_grid(2000)
    ends = fs.sample_ode(field, jnp.array([[0.0], [1.0]]), ts)[:, 0]
    shift, scale = float(ends[0]) - m, float(ends[1] - ends[0])
    mean, cov_out = G.scalar_adjoint_tilt_linear(jnp.array([m]), cov, jnp.array([c]), lam)
    assert np.isclose(shift, float(mean[0]) - m, rtol=2e-3) and np.isclose(scale**2, float(cov_out[0, 0]), rtol=2e-3)
    assert np.isclose(float(mean[0]) - m, s * float(G.scalar_adjoint_integral(s)) * c / lam, rtol=1e-12)
    tilt = float(G.tilt_linear(jnp.array([m]), cov, jnp.array([c]), lam)[0][0]) - m
    assert abs(shift - tilt) > 0.05 * abs(tilt)  # s I(s) ≠ s²: I(1) ≈ 0.62


def test_scalar_adjoint_tilt_in_two_dimensions_by_the_ode():
    """The full-covariance closed form (I on the eigenvalues of Σ^{1/2}) against the ODE on a fine grid."""
    lam = 0.7
    field = lambda t, x, args=None: G.scalar_adjoint_velocity_linear(MU, COV, B, lam, t, x)  # noqa: E731
    ts = fs.uniform_grid(2000)
    x0 = jnp.concatenate([jnp.zeros((1, 2)), jnp.eye(2)])
    ends = fs.sample_ode(field, x0, ts)
    mean = ends[0]
    gain = (ends[1:] - ends[0][None]).T  # x1 = gain @ x0 + mean
    want_mean, want_cov = G.scalar_adjoint_tilt_linear(MU, COV, B, lam)
    assert np.allclose(mean, want_mean, atol=3e-3)
    assert np.allclose(gain @ gain.T, want_cov, atol=3e-3)


def test_loss_and_kl_by_hand():
    """The loss and its KL estimate written out: bridge noise from the same key, σ_k = g_s(τ_k)/√λ, s = 1/K."""
    k, lam = 5, 0.4
    field, base = MLPField(3, jr.key(1), cond_dim=2), MLPField(3, jr.key(2), cond_dim=2)
    x1 = jnp.asarray(np.random.default_rng(1).standard_normal((6, 3)))
    adj1 = jnp.asarray(np.random.default_rng(2).standard_normal((6, 3)))
    args = jnp.asarray(np.random.default_rng(3).standard_normal((6, 2)))
    loss, kl = eqx.filter_jit(fs.scalar_adjoint_matching_loss)(
        field, base, x1, adj1, jr.key(4), num_times=k, lam=lam, args=args, with_kl=True
    )
    eps = jr.normal(jr.key(4), (k, 6, 3), x1.dtype)
    want_loss = want_kl = 0.0
    for i in range(k):
        tau = (i + 1) / k
        x = (1 - tau) * eps[i] + tau * x1
        gap = field(tau, x, args) - base(tau, x, args)
        g = np.sqrt(2 * (1 - tau + 1 / k) / (tau + 1 / k))
        sigma = g / np.sqrt(lam)
        want_loss += jnp.sum((2 / sigma * gap + sigma * tau * adj1) ** 2)
        want_kl += 2 * (1 / k) / g**2 * jnp.sum(gap**2)
    assert np.isclose(loss, want_loss, rtol=1e-12) and np.isclose(kl, want_kl, rtol=1e-12)
    # Gradients reach the fine-tuned field only.
    grad_fn = eqx.filter_jit(
        eqx.filter_grad(lambda f: fs.scalar_adjoint_matching_loss(f, base, x1, adj1, jr.key(4), num_times=k, args=args))
    )
    grads = grad_fn(field)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(eqx.filter(grads, eqx.is_array)))


def test_bad_input_is_named():
    base = G.GaussianVelocity(MU, COV)
    with pytest.raises((ValueError, TypeError), match="terminal_adjoint"):
        fs.scalar_adjoint_matching_loss(base, base, jnp.zeros((4, 2)), jnp.zeros((4, 3)), jr.key(0))
    with pytest.raises(ValueError, match="num_times"):
        fs.scalar_adjoint_matching_loss(base, base, jnp.zeros(2), jnp.zeros(2), jr.key(0), num_times=0)
    with pytest.raises(ValueError, match="lam"):
        fs.scalar_adjoint_matching_loss(base, base, jnp.zeros(2), jnp.zeros(2), jr.key(0), lam=-1.0)
