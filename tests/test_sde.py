"""Samplers against the exact Gaussian flow: the ODE flow map, the memoryless SDE's terminal law
and independence of X_0 and X_1, additive-noise solvers, bad input."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jaxtyping
import pytest
from tests.helpers import B, COV, moments, MU

import flowsoc as fs
from flowsoc import gaussian as G


BASE = G.GaussianVelocity(MU, COV)
# The exact-schedule tests share one grid (and so one compiled solve for each kind of field).
T0, EXACT_GRID = 0.02, fs.uniform_grid(300, t0=0.02)


class OptimalLinear(eqx.Module):
    """v* = v_base + (1-t) C_t^{-1} Σ b/λ (`G.optimal_velocity_linear`) as a field whose λ is an array,
    so that every λ runs the same compiled solve."""

    lam: jax.Array

    def __call__(self, t, x, args=None):
        return G.optimal_velocity_linear(MU, COV, B, self.lam, t, x)


def test_uniform_grid_and_sigma():
    ts = fs.uniform_grid(4, t0=0.2)
    assert ts.shape == (5,) and ts[0] == 0.2 and ts[-1] == 1.0
    assert jnp.allclose(jnp.diff(ts), 0.2)
    t = jnp.array([0.1, 0.5, 0.9])
    assert jnp.allclose(fs.memoryless_sigma(t) ** 2, 2 * (1 - t) / t)
    assert jnp.allclose(fs.shifted_sigma(t, 0.0), fs.memoryless_sigma(t))
    # The reference codes' values at K = 10: g(0) = sqrt(22), g(0.9) = sqrt(0.4).
    assert jnp.allclose(fs.shifted_sigma(jnp.array([0.0, 0.9]), 0.1), jnp.sqrt(jnp.array([22.0, 0.4])))


def test_ode_maps_noise_to_base_law(getkey):
    """Per sample, X_1 = mu + Sigma^{1/2} X_0; Euler's error halves as the steps double."""
    x0 = jr.normal(getkey(), (20000, 2))
    exact = G.flow_map(MU, COV, 1.0, x0)
    sample = eqx.filter_jit(lambda x, ts: fs.sample_ode(BASE, x, ts))
    errors = [jnp.max(jnp.abs(sample(x0, fs.uniform_grid(k)) - exact)) for k in (25, 50, 100, 200)]
    ratios = [errors[i + 1] / errors[i] for i in range(3)]
    assert all(0.4 < r < 0.6 for r in ratios), (errors, ratios)
    accurate = fs.sample_ode(
        BASE, x0, fs.uniform_grid(10), solver=dfx.Tsit5(), stepsize_controller=dfx.PIDController(rtol=1e-9, atol=1e-9)
    )
    assert jnp.max(jnp.abs(accurate - exact)) < 1e-6
    mean, cov = moments(accurate)
    assert jnp.allclose(mean, MU, atol=0.03) and jnp.allclose(cov, COV, atol=0.03)


def test_sde_exact_schedule_has_base_law(getkey):
    """shift = 0 on a grid from t0 > 0, X_t0 ~ N(t0 mu, C_t0): the terminal law is N(mu, Sigma)."""
    n, t0, ts = 20000, T0, EXACT_GRID
    x0 = G.flow_map(MU, COV, t0, jr.normal(getkey(), (n, 2)))
    xs = fs.sample_sde(BASE, x0, ts, getkey(), shift=0.0)
    assert xs.shape == (301, n, 2) and jnp.array_equal(xs[0], x0)
    mean, cov = moments(xs[-1])
    assert jnp.allclose(mean, MU, atol=0.03) and jnp.allclose(cov, COV, atol=0.04)
    # The marginal half-way (t = 0.49) is N(t mu, C_t) as well.
    mean, cov = moments(xs[144])
    t = ts[144]
    assert jnp.allclose(mean, t * MU, atol=0.03) and jnp.allclose(cov, G.marginal_cov(COV, t), atol=0.04)


def test_sde_reference_scheme_is_memoryless(getkey):
    """The reference discretisation from t = 0 (shift = h, noiseless last step): X_0 ⟂ X_1 and the
    terminal law approaches N(mu, Sigma) as K grows."""
    n = 20000
    x0 = jr.normal(getkey(), (n, 2))
    xs = fs.sample_sde(BASE, x0, fs.uniform_grid(400), getkey())
    cross = (x0 - x0.mean(0, keepdims=True)).T @ (xs[-1] - xs[-1].mean(0, keepdims=True)) / n
    assert jnp.max(jnp.abs(cross)) < 0.03
    mean, cov = moments(xs[-1])
    assert jnp.allclose(mean, MU, atol=0.03) and jnp.allclose(cov, COV, atol=0.05)


@pytest.mark.parametrize("solver", [dfx.ShARK(), dfx.SRA1(), dfx.Heun()], ids=lambda s: type(s).__name__)
def test_additive_noise_solvers(getkey, solver):
    n, t0 = 20000, 0.05
    ts = fs.uniform_grid(100, t0=t0)
    x0 = G.flow_map(MU, COV, t0, jr.normal(getkey(), (n, 2)))
    xs = fs.sample_sde(BASE, x0, ts, getkey(), shift=0.0, solver=solver)
    mean, cov = moments(xs[-1])
    assert jnp.allclose(mean, MU, atol=0.03) and jnp.allclose(cov, COV, atol=0.05)


def test_adaptive_controller_uses_brownian_tree(getkey):
    n, t0 = 5000, 0.05
    ts = fs.uniform_grid(50, t0=t0)
    x0 = G.flow_map(MU, COV, t0, jr.normal(getkey(), (n, 2)))
    xs = fs.sample_sde(BASE, x0, ts, getkey(), shift=0.0, stepsize_controller=dfx.ConstantStepSize())
    assert xs.shape == (51, n, 2)
    mean, cov = moments(xs[-1])
    assert jnp.allclose(mean, MU, atol=0.06) and jnp.allclose(cov, COV, atol=0.08)


def test_grid_brownian_path(getkey):
    ts = jnp.array([0.0, 0.1, 0.4, 1.0])
    path = fs.GridBrownianPath(ts, getkey(), (50000,), levy_area=dfx.SpaceTimeLevyArea)
    w = path.evaluate(ts[1], ts[2])
    assert jnp.allclose(jnp.var(w), 0.3, rtol=0.03)
    levy = path.evaluate(ts[2], ts[3], use_levy=True)
    assert jnp.allclose(jnp.var(levy.H), 0.6 / 12, rtol=0.03)
    assert abs(jnp.corrcoef(levy.W, levy.H)[0, 1]) < 0.02
    with pytest.raises(Exception, match="not a grid cell"):
        jax.block_until_ready(path.evaluate(0.05, 0.4))


def test_sde_bad_input(getkey):
    ts = fs.uniform_grid(10)
    x0 = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="strictly increasing"):
        fs.sample_sde(BASE, x0, jnp.array([0.0, 0.5, 0.4, 1.0]), getkey())
    with pytest.raises(ValueError, match="shift=0 needs a grid starting at t0 > 0"):
        fs.sample_sde(BASE, x0, ts, getkey(), shift=0.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fs.sample_sde(BASE, x0.at[0, 0].set(jnp.nan), ts, getkey())
    with pytest.raises(ValueError, match="shift must be finite and >= 0"):
        fs.sample_sde(BASE, x0, ts, getkey(), shift=-0.1)
    # (Under the test suite's jaxtyping hook the annotation catches it first.)
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="floating-point|Float"):
        fs.sample_ode(BASE, jnp.zeros((4, 2), dtype=jnp.int32), ts)
    with pytest.raises(ValueError, match="num_steps"):
        fs.uniform_grid(0)
    # A field whose output has another shape than x would be broadcast silently by the solvers.
    summed = lambda t, x, args: jnp.sum(BASE(t, x, args), axis=-1, keepdims=True)
    for sampler in (lambda f, x: fs.sample_sde(f, x, ts, jr.key(0)), lambda f, x: fs.sample_ode(f, x, ts)):
        with pytest.raises(ValueError, match=r"returned shape \(4, 1\) for x of shape \(4, 2\)"):
            sampler(summed, x0)
    # An x0 the field cannot take: one line naming the shape, not a raw broadcasting error.
    matrix = jnp.ones((2, 2))
    linear = lambda t, x, args: x @ matrix
    with pytest.raises(ValueError, match=r"the field cannot take x0 of shape \(4, 3\)"):
        fs.sample_sde(linear, jnp.zeros((4, 3)), ts, jr.key(0))
    # Traced inputs are checked at run time.
    with pytest.raises(Exception, match="NaN or infinite"):
        jax.block_until_ready(jax.jit(lambda x: fs.sample_sde(BASE, x, ts, jr.key(0)))(x0.at[0, 0].set(jnp.inf)))


@pytest.mark.parametrize("lam", [0.5, 1.0, 4.0])
def test_sampling_with_optimal_field_lands_on_tilted_target(getkey, lam):
    """v* = v_base + (1-t) C_t^{-1} Σ b/λ carries N(0, I) to N(μ + Σb/λ, Σ) (ODE, per sample) and
    the memoryless SDE with v* has that terminal law."""
    optimum = OptimalLinear(jnp.asarray(lam))
    target_mean, target_cov = G.tilt_linear(MU, COV, B, lam)
    x0 = jr.normal(getkey(), (20000, 2))
    x1 = fs.sample_ode(
        optimum,
        x0,
        fs.uniform_grid(10),
        solver=dfx.Tsit5(),
        stepsize_controller=dfx.PIDController(rtol=1e-9, atol=1e-9),
    )
    assert jnp.max(jnp.abs(x1 - G.flow_map(target_mean, target_cov, 1.0, x0))) < 1e-6
    xs = fs.sample_sde(optimum, G.flow_map(target_mean, target_cov, T0, x0), EXACT_GRID, getkey(), shift=0.0)
    mean, cov = moments(xs[-1])
    assert jnp.allclose(mean, target_mean, atol=0.04) and jnp.allclose(cov, target_cov, atol=0.05)


def test_sampling_quadratic_tilt(getkey):
    a, c, lam = jnp.array([[2.0, 0.5], [0.5, 1.0]]), jnp.array([1.0, 0.0]), 0.8
    target_mean, target_cov = G.tilt_quadratic(MU, COV, a, c, lam)
    optimum = G.GaussianVelocity(target_mean, target_cov)
    x0 = jr.normal(getkey(), (20000, 2))
    xs = fs.sample_sde(optimum, G.flow_map(target_mean, target_cov, T0, x0), EXACT_GRID, getkey(), shift=0.0)
    mean, cov = moments(xs[-1])
    assert jnp.allclose(mean, target_mean, atol=0.04) and jnp.allclose(cov, target_cov, atol=0.05)
