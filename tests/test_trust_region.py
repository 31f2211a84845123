"""DualDescent against a synthetic KL(λ) = c/λ² and hand-computed steps."""

import jax
import jax.numpy as jnp
import pytest

import flowsoc as fs


def _run(dual, kl_of_lam, steps):
    def body(state, _):
        return dual.update(state, kl_of_lam(dual.effective_lam(state))), None

    state, _ = jax.lax.scan(body, dual.init(), None, length=steps)
    return state


@pytest.mark.parametrize("log_space", [False, True])
@pytest.mark.parametrize("budget", [0.2, 1.0])
def test_converges_to_dual_fixed_point(budget, log_space):
    c = 3.0
    dual = fs.DualDescent(
        kl_budget=budget, step_size=0.05 if not log_space else 0.02, lam_scale=1.0, log_space=log_space
    )
    state = _run(dual, lambda lam: c / lam**2, 20000)
    assert jnp.allclose(state.lam, jnp.sqrt(c / budget), rtol=1e-3)
    assert jnp.allclose(state.kl_avg, budget, rtol=1e-3)


def test_fixed_multiplier_inside_sigma():
    """With lam_scale = 3 (TRQAM's multiplier) the effective λ, not the stored one, meets the budget."""
    c, budget = 3.0, 0.5
    dual = fs.DualDescent(kl_budget=budget, step_size=0.05, lam_scale=3.0)
    state = _run(dual, lambda lam: c / lam**2, 20000)
    assert jnp.allclose(dual.effective_lam(state), jnp.sqrt(c / budget), rtol=1e-3)
    assert jnp.allclose(state.lam, jnp.sqrt(c / budget) / 3, rtol=1e-3)


def test_the_core_default_puts_lambda_itself_inside_sigma():
    """A generic user gets σ = g/√λ: the default multiplier is 1, TRQAM's 3 lives in its configuration."""
    dual = fs.DualDescent(kl_budget=1.0)
    state = dual.update(dual.init(), 5.0)
    assert dual.lam_scale == 1.0 and dual.effective_lam(state) == state.lam
    from flowsoc.rl import AgentConfig

    assert AgentConfig().trust_region == fs.DualDescent(kl_budget=1.0, lam_scale=3.0)


def test_projection_holds_at_both_bounds():
    dual = fs.DualDescent(kl_budget=1.0, step_size=0.5, lam_min=0.1, lam_max=5.0, lam_scale=1.0)
    low = _run(dual, lambda lam: jnp.zeros(()), 500)  # KL always below budget: λ falls to lam_min
    assert low.lam == 0.1
    high = _run(dual, lambda lam: jnp.asarray(50.0), 500)  # always above: λ rises to lam_max
    assert high.lam == 5.0


def test_single_steps_clip_and_ema_by_hand():
    dual = fs.DualDescent(kl_budget=0.5, lam_scale=3.0)  # official defaults: η=0.01, ρ=0.1, c=2, λ0=1, multiplier 3
    state = dual.init()
    assert state.lam == 1.0 and state.kl_avg == 0.0
    state = dual.update(state, 10.0)  # clipped to 2 * 0.5 = 1
    assert jnp.allclose(state.kl_avg, 0.1 * 1.0)
    assert jnp.allclose(state.lam, 1.0 + 0.01 * (0.1 - 0.5))
    state2 = dual.update(state, 0.3)
    kl_avg = 0.9 * 0.1 + 0.1 * 0.3
    assert jnp.allclose(state2.kl_avg, kl_avg)
    assert jnp.allclose(state2.lam, state.lam + 0.01 * (kl_avg - 0.5))
    assert jnp.allclose(dual.effective_lam(state2), 3 * state2.lam)
    # The update compiles once: the state is arrays from init on.
    update = jax.jit(dual.update)
    s = update(update(dual.init(), 1.0), 2.0)
    assert update._cache_size() == 1 and s.lam.shape == ()


def test_bad_hyperparameters_and_kl():
    for kwargs, match in [
        (dict(kl_budget=0.0), "kl_budget must be > 0"),
        (dict(kl_budget=-1.0), "kl_budget must be > 0"),
        (dict(kl_budget=1.0, lam_min=10.0, lam_max=1.0), "lam_min < lam_max"),
        (dict(kl_budget=1.0, lam_init=1000.0), "outside"),
        (dict(kl_budget=1.0, ema=0.0), "ema must lie"),
        (dict(kl_budget=1.0, step_size=-0.1), "step_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            fs.DualDescent(**kwargs)
    dual = fs.DualDescent(kl_budget=1.0)
    with pytest.raises(Exception, match="NaN or infinite"):
        jax.block_until_ready(dual.update(dual.init(), jnp.nan))
