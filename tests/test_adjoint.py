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


def _reference_recursion(base, xs, ts, terminal, t_input):
    """The backward recursion written out: ã_i = ã_{i+1} + h ∇_x(2 v(τ_i, x) - x/(t_i + h))ᵀ ã_{i+1} at
    x = x_i, with the base's time input τ_i = t_input(i)."""
    h = ts[1] - ts[0]
    adj, out = terminal, [terminal]
    for i in reversed(range(ts.shape[0] - 1)):
        _, vjp = jax.vjp(lambda x: 2 * base(t_input(i), x) - x / (ts[i] + h), xs[i])
        adj = adj + h * vjp(adj)[0]
        out.append(adj)
    return jnp.stack(out[::-1])


@pytest.mark.parametrize(
    "base_time, t_input",
    [
        ("grid", lambda ts, i: ts[i]),
        ("next", lambda ts, i: ts[i] + (ts[1] - ts[0])),  # the official QAM/TRQAM codes' time input
        ("mid", lambda ts, i: ts[i] + (ts[1] - ts[0]) / 2),
    ],
)
def test_lean_adjoint_base_time_matches_written_out_recursion(getkey, base_time, t_input):
    base = MLPField(3, getkey())
    ts = fs.uniform_grid(10)
    xs = fs.sample_sde(base, normal(getkey(), (4, 3)), ts, getkey())
    terminal = normal(getkey(), (4, 3))
    adj = fs.lean_adjoint(base, xs, ts, terminal, base_time=base_time, final_ode_step=False)
    expected = _reference_recursion(base, xs, ts, terminal, lambda i: t_input(ts, i))
    assert jnp.allclose(adj, expected, rtol=1e-12, atol=1e-12)


def test_lean_adjoint_chain_is_the_exact_vjp_of_the_sampled_base_chain(getkey):
    """With base_time="grid" and final_ode_step=True, ã_i = (∂x_n/∂x_i)ᵀ ã_n for the Euler chain the
    sampler ran with the base (noisy memoryless steps, then the noiseless last ODE step), noise held fixed."""
    base = MLPField(3, getkey())
    ts = fs.uniform_grid(5)
    h = ts[1] - ts[0]
    x0, noise = normal(getkey(), (2, 3)), normal(getkey(), (4, 2, 3))

    def run(x, start):
        xs = [x]
        for i in range(start, 5):
            if i < 4:
                g = fs.shifted_sigma(ts[i], h)
                x = x + h * (2 * base(ts[i], x) - x / (ts[i] + h)) + jnp.sqrt(h) * g * noise[i]
            else:
                x = x + h * base(ts[i], x)
            xs.append(x)
        return jnp.stack(xs)

    xs = run(x0, 0)
    terminal = normal(getkey(), (2, 3))
    adj = fs.lean_adjoint(base, xs, ts, terminal, base_time="grid", final_ode_step=True)
    for i in range(5):
        _, vjp = jax.vjp(lambda x: run(x, i)[-1], xs[i])
        assert jnp.allclose(adj[i], vjp(terminal)[0], rtol=1e-10, atol=1e-12), i
    # Without final_ode_step the last cell uses the SDE drift's Jacobian: a different recursion.
    plain = fs.lean_adjoint(base, xs, ts, terminal, base_time="grid", final_ode_step=False)
    assert not jnp.allclose(plain[-2], adj[-2], rtol=1e-3)


def test_lean_adjoint_base_time_bad_input():
    ts = fs.uniform_grid(10)
    xs = jnp.zeros((11, 2))
    with pytest.raises(ValueError, match="base_time must be"):
        unchecked(fs.lean_adjoint)(BASE, xs, ts, -B, base_time="left")
    with pytest.raises(ValueError, match="needs interpolation='frozen'"):
        fs.lean_adjoint(BASE, xs, ts, -B, interpolation="linear", base_time="next")
