"""The lean adjoint against its closed form on the Gaussian base with a linear reward."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import jaxtyping
import pytest
from tests.helpers import B, COV, MLPField, MU, normal, unchecked

import flowsoc as fs
from flowsoc import gaussian as G


BASE = G.GaussianVelocity(MU, COV)


def _adjoint_error(k, solver=None, t0=0.01):
    ts = fs.uniform_grid(k, t0=t0)
    # The Gaussian's Jacobian does not depend on the state, so any path serves.
    xs = normal(jr.key(0), (k + 1, 2))
    adj = fs.lean_adjoint(BASE, xs, ts, -B, shift=0.0, solver=solver)
    exact = jax.vmap(lambda t: G.lean_adjoint_linear(COV, B, t))(ts)
    return jnp.max(jnp.abs(adj - exact)), adj, exact


def test_lean_adjoint_closed_form_fine_grid():
    """ã(t) = -t C_t^{-1} Σ b on a fine grid (shift = 0, t0 > 0); Euler converges at order 1."""
    errors = [_adjoint_error(k)[0] for k in (500, 1000, 2000)]
    assert errors[-1] < 2e-3, errors
    ratios = [errors[i + 1] / errors[i] for i in range(2)]
    assert all(0.4 < r < 0.6 for r in ratios), ratios


def test_lean_adjoint_higher_order_solver():
    error, adj, exact = _adjoint_error(200, solver=dfx.Tsit5())
    assert error < 1e-8
    assert jnp.allclose(adj[-1], -B)


def test_lean_adjoint_never_calls_the_fine_tuned_field(getkey):
    """Only the base enters: a NaN-producing fine-tuned field cannot leak into the adjoint, and the
    adjoint has no gradient with respect to the states."""
    base = MLPField(2, getkey())
    ts = fs.uniform_grid(10)
    xs = fs.sample_sde(base, normal(getkey(), (3, 2)), ts, getkey())
    terminal = normal(getkey(), (3, 2))
    grad = jax.grad(lambda x: jnp.sum(fs.lean_adjoint(base, x, ts, terminal)))(xs)
    assert jnp.all(grad == 0)


def test_lean_adjoint_bad_input(getkey):
    ts = fs.uniform_grid(10)
    xs = jnp.zeros((11, 2))
    lean_adjoint = unchecked(fs.lean_adjoint)
    with pytest.raises(ValueError, match=r"`xs` must have shape \(len\(ts\)"):
        lean_adjoint(BASE, xs[:5], ts, -B)
    with pytest.raises(ValueError, match="`terminal` has shape"):
        lean_adjoint(BASE, xs, ts, jnp.zeros(3))
    # The test suite's jaxtyping hook catches shape mismatches at the annotation as well.
    with pytest.raises((ValueError, jaxtyping.TypeCheckError)):
        fs.lean_adjoint(BASE, xs[:5], ts, -B)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fs.lean_adjoint(BASE, xs.at[3, 1].set(jnp.nan), ts, -B)
    with pytest.raises(ValueError, match="strictly increasing"):
        fs.lean_adjoint(BASE, xs, ts[::-1], -B)
    with pytest.raises(ValueError, match="interpolation"):
        lean_adjoint(BASE, xs, ts, -B, interpolation="cubic")
