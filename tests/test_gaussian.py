"""The Gaussian oracles against independent computations (quadrature, autodiff, Monte Carlo)."""

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest
from scipy import integrate
from tests.helpers import B, COV, MU

import flowsoc as fs
from flowsoc import gaussian as G


def test_velocity_is_conditional_expectation(getkey):
    """v(t, x) = E[X1 - X0 | X_t = x]: regress X1 - X0 on X_t over joint samples."""
    n, t = 400000, 0.4
    x0 = jr.normal(getkey(), (n, 2))
    x1 = G.flow_map(MU, COV, 1.0, jr.normal(getkey(), (n, 2)))
    xt = fs.interpolate(x0, x1, t)
    design = jnp.concatenate([xt, jnp.ones((n, 1))], axis=1)
    coef, *_ = jnp.linalg.lstsq(design, x1 - x0)
    probe = jnp.array([[0.3, -0.2], [1.0, 0.5]])
    fitted = jnp.concatenate([probe, jnp.ones((2, 1))], axis=1) @ coef
    assert jnp.allclose(fitted, G.GaussianVelocity(MU, COV)(t, probe), atol=0.02)
    assert jnp.allclose(G.GaussianVelocity(MU, COV)(0.0, probe), MU[None, :] - probe)
    assert jnp.allclose(G.GaussianVelocity(MU, COV)(1.0, probe), probe)


def test_flow_map_solves_the_ode():
    x0 = jnp.array([0.7, -0.4])
    field = G.GaussianVelocity(MU, COV)
    for t in (0.2, 0.6):
        derivative = jax.jacfwd(lambda s: G.flow_map(MU, COV, s, x0))(t)
        assert jnp.allclose(derivative, field(t, G.flow_map(MU, COV, t, x0)), atol=1e-10)


def test_lean_adjoint_linear_solves_its_ode():
    """dã/dt = -(2M_t - I/t)ᵀ ã with ã(1) = -b, by autodiff of the closed form."""
    for t in (0.1, 0.5, 0.9):
        d = jax.jacfwd(lambda s: G.lean_adjoint_linear(COV, B, s))(t)
        jac = 2 * G.velocity_matrix(COV, t) - jnp.eye(2) / t
        assert jnp.allclose(d, -jac.T @ G.lean_adjoint_linear(COV, B, t), atol=1e-10)
    assert jnp.allclose(G.lean_adjoint_linear(COV, B, 1.0), -B)


def test_optimal_velocity_is_tilted_flow():
    lam = 0.6
    field = G.GaussianVelocity(*G.tilt_linear(MU, COV, B, lam))
    x = jnp.array([[0.1, 0.2], [-1.0, 2.0]])
    for t in (0.0, 0.3, 0.8):
        assert jnp.allclose(G.optimal_velocity_linear(MU, COV, B, lam, t, x), field(t, x), atol=1e-12)


def test_control_cost_integral_is_terminal_kl():
    """½∫‖u*‖² dt = ∫ 2‖v* - v‖²/g² dt = bᵀΣb/(2λ²), by quadrature."""
    lam = 1.5

    def integrand(t):
        gap = (1 - t) * jnp.linalg.solve(G.marginal_cov(COV, t), COV @ B) / lam
        return float(2 * jnp.sum(gap**2) / fs.memoryless_sigma(t) ** 2)

    value, _ = integrate.quad(integrand, 0.0, 1.0, epsabs=1e-12)
    assert jnp.allclose(value, G.kl_linear(COV, B, lam), rtol=1e-8)


def test_quadratic_tilt_by_importance_weights(getkey):
    a = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    c = jnp.array([1.0, 0.0])
    lam = 0.8
    x = G.flow_map(MU, COV, 1.0, jr.normal(getkey(), (400000, 2)))
    r = -0.5 * jnp.einsum("ni,ij,nj->n", x - c[None, :], a, x - c[None, :])
    w = jax.nn.softmax(r / lam)
    mean = w @ x
    cov = (x - mean[None, :]).T @ ((x - mean[None, :]) * w[:, None])
    new_mean, new_cov = G.tilt_quadratic(MU, COV, a, c, lam)
    assert jnp.allclose(mean, new_mean, atol=0.01) and jnp.allclose(cov, new_cov, atol=0.01)
    assert jnp.allclose(fs.optimal_kl(r, lam), G.kl_quadratic(MU, COV, a, c, lam), rtol=0.03)


@pytest.mark.parametrize("budget", [0.1, 0.5, 2.0])
def test_lambda_for_budget(budget):
    assert jnp.allclose(
        G.lambda_for_budget(lambda lam: G.kl_linear(COV, B, lam), budget),
        G.dual_lambda_linear(COV, B, budget),
        rtol=1e-8,
    )
    a, c = jnp.eye(2), jnp.array([2.0, -1.0])
    lam = G.lambda_for_budget(lambda lam: G.kl_quadratic(MU, COV, a, c, lam), budget)
    assert jnp.allclose(G.kl_quadratic(MU, COV, a, c, lam), budget, rtol=1e-8)


@pytest.mark.parametrize("s", [0.05, 0.5, 1.0, 3.0])
def test_scalar_adjoint_integral_closed_form_against_quadrature(s):
    want, _ = integrate.quad(lambda t: (1 - t) / ((1 - t) ** 2 + s**2 * t**2) ** 0.5, 0, 1, epsabs=1e-13)
    assert abs(float(G.scalar_adjoint_integral(s)) - want) < 1e-11
