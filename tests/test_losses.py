"""Flow matching and adjoint matching losses at the analytic optimum; the SOC objective's
gradient through the SDE against a plain scan."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest
from tests.helpers import B, COV, MLPField, MU, normal, reference_sde, unchecked

import flowsoc as fs
from flowsoc import gaussian as G


BASE = G.GaussianVelocity(MU, COV)
T0, K = 0.005, 800


def _paths(field, n, key, lam):
    ts = fs.uniform_grid(K, t0=T0)
    x0 = G.flow_map(MU, COV, T0, jr.normal(key, (n, 2)))
    xs = fs.sample_sde(field, x0, ts, jr.fold_in(key, 1), shift=0.0)
    adj = fs.lean_adjoint(BASE, xs, ts, jnp.broadcast_to(-B, x0.shape), shift=0.0)
    return xs, ts, adj


@eqx.filter_jit
def _loss_and_grad(field, xs, ts, adj, lam):
    """The per-path adjoint-matching loss of a Gaussian field and its gradient in the field's
    parameters, compiled once for every field and λ (λ is an array here)."""

    def loss(f):
        return fs.adjoint_matching_loss(f, BASE, xs, ts, adj, lam=lam, shift=0.0) / xs.shape[1]

    return jax.value_and_grad(loss)(field)


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_adjoint_matching_optimum(lam):
    """Loss ≈ 0 at v* = v_base + (1-t) C_t^{-1} Σ b/λ and clearly positive at v_base; the
    gradient with respect to the field's parameters vanishes at v*."""
    optimum = G.GaussianVelocity(*G.tilt_linear(MU, COV, B, lam))
    xs, ts, adj = _paths(optimum, 256, jr.key(0), lam)
    at_optimum, grad_opt = _loss_and_grad(optimum, xs, ts, adj, jnp.asarray(lam))
    at_base, grad_base = _loss_and_grad(BASE, xs, ts, adj, jnp.asarray(lam))
    assert at_base > 1.0
    assert at_optimum < 1e-3 * at_base, (at_optimum, at_base)
    # Zero up to the O(h) discretisation of the adjoint (h ≈ 1.2e-3 here).
    assert jnp.linalg.norm(grad_opt.mean) < 1e-2 * jnp.linalg.norm(grad_base.mean)
    assert jnp.linalg.norm(grad_opt.cov) < 1e-2 * jnp.linalg.norm(grad_base.mean)


def test_residual_is_pointwise_zero_in_continuous_time():
    """(2/σ)(v* - v_base) + σ ã = 0 for every x and t with the exact schedule (λ inside σ)."""
    lam = 0.8
    for t in (0.05, 0.3, 0.7, 0.95):
        x = jr.normal(jr.key(int(100 * t)), (5, 2))
        gap = G.optimal_velocity_linear(MU, COV, B, lam, t, x) - BASE(t, x)
        sigma = fs.memoryless_sigma(t) / jnp.sqrt(lam)
        residual = 2 / sigma * gap + sigma * G.lean_adjoint_linear(COV, B, t)
        assert jnp.max(jnp.abs(residual)) < 1e-12


def test_flow_matching_loss_minimised_by_true_velocity(getkey):
    n = 50000
    x0, x1 = jr.normal(getkey(), (n, 2)), G.flow_map(MU, COV, 1.0, jr.normal(getkey(), (n, 2)))
    t = jr.uniform(getkey(), (n,))

    def mean_loss(field):
        return jnp.mean(jax.vmap(lambda a, b, s: fs.flow_matching_loss(field, a, b, s))(x0, x1, t))

    grad_true = jax.grad(mean_loss)(BASE)
    grad_off = jax.grad(mean_loss)(G.GaussianVelocity(MU + 0.5, COV))
    assert jnp.linalg.norm(grad_true.mean) < 0.03 * jnp.linalg.norm(grad_off.mean)
    with pytest.raises(ValueError, match="differ in shape"):
        unchecked(fs.flow_matching_loss)(BASE, x0[0], x1[0, :1], 0.5)


def test_soc_objective_gradient_equals_scan_backprop(getkey):
    """The basic-adjoint baseline: backprop through the Diffrax SDE equals backprop through a
    plain Euler-Maruyama scan with the same noise."""
    dim, k, lam = 2, 10, 0.5
    field, base = MLPField(dim, getkey()), MLPField(dim, getkey())
    x0, key = normal(getkey(), (4, dim)), getkey()
    ts = fs.uniform_grid(k)
    reward = lambda x, args: jnp.sum(jnp.sin(x))
    normals = fs.GridBrownianPath(ts[:-1], key, x0.shape).normals

    # Backprop through the states as well as the fields (the discrete adjoint).
    def reference_full(f):
        xs = reference_sde(f, base, x0, ts, normals, 1.0 / k)
        gaps = jax.vmap(lambda t, x: f(t, x) - jax.lax.stop_gradient(base(t, x)))(ts[:-1], xs[:-1])
        kl = jnp.sum(2 * jnp.diff(ts) / fs.shifted_sigma(ts[:-1], 1.0 / k) ** 2 * jnp.sum(gaps**2, axis=(1, 2)))
        return lam * kl - reward(xs[-1], None)

    def objective(f):
        return fs.soc_objective(f, base, x0, ts, key, reward, lam=lam)

    # Each side compiled whole: eagerly, the two backward passes compile ~200 small kernels.
    value, grad = eqx.filter_jit(eqx.filter_value_and_grad(objective))(field)
    value_ref, grad_ref = eqx.filter_jit(eqx.filter_value_and_grad(reference_full))(field)
    assert jnp.allclose(value, value_ref, rtol=1e-12)
    for a, b in zip(
        jax.tree.leaves(eqx.filter(grad, eqx.is_array)), jax.tree.leaves(eqx.filter(grad_ref, eqx.is_array))
    ):
        assert jnp.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_loss_bad_input(getkey):
    ts = fs.uniform_grid(10)
    xs, adj = jnp.zeros((11, 2)), jnp.zeros((11, 2))
    for lam in (0.0, -1.0, jnp.nan):
        with pytest.raises(ValueError, match="lam must be"):
            fs.adjoint_matching_loss(BASE, BASE, xs, ts, adj, lam=lam)
    with pytest.raises(ValueError, match="`adj` has shape"):
        unchecked(fs.adjoint_matching_loss)(BASE, BASE, xs, ts, adj[:, :1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        fs.adjoint_matching_loss(BASE, BASE, xs.at[0].set(jnp.inf), ts, adj)
    with pytest.raises(Exception, match="lam must be finite and > 0"):
        jax.block_until_ready(jax.jit(lambda lam: fs.adjoint_matching_loss(BASE, BASE, xs, ts, adj, lam=lam))(-1.0))
