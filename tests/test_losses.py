"""Flow matching and adjoint matching losses at the analytic optimum; the SOC objective's
gradient through the SDE against a plain loop, and BAM's loss against the official formula."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest
from tests.helpers import B, COV, MLPField, MU, normal, unchecked

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
        residual = 2 / sigma * gap + sigma * G.lean_adjoint_linear(COV, B, t)[None, :]
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


def _unrolled_soc(field, base, x0, ts, normals, reward, lam, stop_base=False, args=None):
    """J by hand: K-1 Euler-Maruyama steps, each charged λ·2h/g²·‖v - v_base‖², then the noiseless
    base step and the reward. `stop_base=True` is flowsoc's old gradient (base output held constant)."""
    s, k = ts[1] - ts[0], ts.shape[0] - 1
    x, running = x0, 0.0
    for i in range(k - 1):
        t, h = ts[i], ts[i + 1] - ts[i]
        g = jnp.sqrt(2 * (1 - t + s) / (t + s))
        v, v_base = field(t, x, args), base(t, x, args)
        v_base = jax.lax.stop_gradient(v_base) if stop_base else v_base
        running = running + 2 * h / g**2 * jnp.sum((v - v_base) ** 2)
        x = x + h * (2 * v - x / (t + s)) + g * jnp.sqrt(h) * normals[i]
    x = x + (ts[k] - ts[k - 1]) * base(ts[k - 1], x, args)
    return lam * running - reward(x, args)


def _leaves(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_array))


def test_soc_objective_gradient_equals_unrolled_backprop(getkey):
    """The basic adjoint: the gradient of the Diffrax objective equals backprop through a plain loop with
    the same noise, including the path through v_base(x_i) in x_i; the old stop-gradient on the base's
    output gives a different gradient, and the base's own parameters get none."""
    dim, k, lam = 2, 10, 0.5
    field, base = MLPField(dim, getkey()), MLPField(dim, getkey())
    x0, key = normal(getkey(), (4, dim)), getkey()
    ts = fs.uniform_grid(k)
    reward = lambda x, args: jnp.sum(jnp.sin(x))
    normals = fs.GridBrownianPath(ts[:-1], key, x0.shape).normals

    def objective(fields):
        return fs.soc_objective(fields[0], fields[1], x0, ts, key, reward, lam=lam)

    # Each side compiled whole: eagerly, the backward passes compile ~200 small kernels.
    value, (grad, grad_base) = eqx.filter_jit(eqx.filter_value_and_grad(objective))((field, base))
    reference = lambda f, stop: _unrolled_soc(f, base, x0, ts, normals, reward, lam, stop_base=stop)
    value_ref, grad_ref = eqx.filter_jit(eqx.filter_value_and_grad(reference))(field, False)
    grad_old = eqx.filter_jit(eqx.filter_grad(reference))(field, True)
    assert jnp.allclose(value, value_ref, rtol=1e-12)
    for a, b in zip(_leaves(grad), _leaves(grad_ref)):
        assert jnp.allclose(a, b, rtol=1e-9, atol=1e-12)
    flat = lambda tree: jnp.concatenate([leaf.ravel() for leaf in _leaves(tree)])
    old_gap = jnp.linalg.norm(flat(grad_old) - flat(grad_ref)) / jnp.linalg.norm(flat(grad_ref))
    assert old_gap > 1e-3, old_gap
    assert all(jnp.all(leaf == 0) for leaf in _leaves(grad_base))


def test_soc_objective_running_cost_skips_noiseless_last_step(getkey):
    """The running cost sums the K-1 noisy steps only; the last gap (here 1000x the others) enters with
    `cost_final_step=True` (then it is λ·path_kl of the path) or when every step is noisy."""
    dim, k, lam = 2, 6, 0.7
    base, x0, key = MLPField(dim, getkey()), normal(getkey(), (3, dim)), getkey()
    ts = fs.uniform_grid(k)
    gap = lambda t: jnp.where(t > 1 - 1.5 / k, 100.0, 0.1)  # large only at t_{K-1}
    field = lambda t, x, args: base(t, x, args) + gap(t)
    zero = lambda x, args: jnp.zeros(())
    weights = 2 * jnp.diff(ts) / fs.shifted_sigma(ts[:-1], 1.0 / k) ** 2
    per_step = jax.vmap(gap)(ts[:-1]) ** 2 * x0.size

    @jax.jit  # one compilation for all the variants (eagerly each costs seconds)
    def values():
        run = lambda **kw: fs.soc_objective(field, base, x0, ts, key, zero, lam=lam, **kw)
        xs = fs.sample_sde(field, x0, ts, key, final_field=base)
        one = fs.soc_objective(field, base, x0, fs.uniform_grid(1), key, lambda x, a: jnp.sum(x), lam=lam)
        kl = fs.path_kl(field, base, xs, ts)
        return run(), run(cost_final_step=True), kl, run(final_ode_step=False), one

    value, charged, kl, noisy, one = values()
    assert jnp.allclose(value, lam * jnp.sum(weights[:-1] * per_step[:-1]), rtol=1e-12)
    assert jnp.allclose(charged, lam * jnp.sum(weights * per_step), rtol=1e-12)
    assert charged > 100 * value
    assert jnp.allclose(charged, lam * kl, rtol=1e-12)
    assert jnp.allclose(noisy, lam * jnp.sum(weights * per_step), rtol=1e-12)
    # One step, noiseless: no running cost at all.
    assert jnp.allclose(one, -jnp.sum(x0 + base(0.0, x0, None)), rtol=1e-12)


def test_bam_actor_loss_is_official_bam_loss():
    """flowsoc's BAM actor loss and its gradient equal the official BAM's (qam agents/bam.py,
    `compute_sde` and `actor_loss`), written out: -τ·mean_b (mean - ρ·std)_k Q_k(s, x_K)
    + mean_b Σ_{i<K-1} 2/σ_i² ‖v_θ - v_β‖², σ_i² = 2(1 - t_i + h)/(t_i + h), t_i = i/K, last step x + h·v_β."""
    from flowsoc.rl import AgentConfig, BAM
    from flowsoc.rl.ogbench._data import ChunkBatch

    b, obs_dim, act, horizon, k, tau = 6, 5, 2, 3, 4, 2.0
    config = AgentConfig.small(
        horizon=horizon, actor_hidden=(16, 16), critic_hidden=(16, 16), num_critics=4, flow_steps=k, inv_temp=tau
    )
    agent = BAM.create(jr.key(0), obs_dim, act, config)
    obs = normal(jr.key(1), (b, obs_dim))
    zeros = jnp.zeros((b, horizon))
    batch = ChunkBatch(  # only the observations enter the actor loss
        observations=obs,
        actions=jnp.zeros((b, horizon, act)),
        rewards=zeros,
        masks=zeros,
        terminals=zeros,
        valid=zeros + 1,
        next_observations=jnp.zeros((b, horizon, obs_dim)),
    )
    key = jr.key(11)
    k_noise, k_sde = jr.split(key)
    x0 = jr.normal(k_noise, (b, horizon * act), obs.dtype)
    noises = fs.GridBrownianPath(agent.times[:-1], k_sde, x0.shape, dtype=x0.dtype).normals
    members, base, rho = agent.nets.critic.members, agent.base, config.pessimism

    def official(policy):
        x, h, bc_loss = x0, 1 / k, 0.0
        for i in range(k):
            t = i / k
            sigma = jnp.sqrt(2 * (1 - t + h) / (t + h))
            if i != k - 1:
                v, v_slow = policy(t, x, obs), base(t, x, obs)
                bc_loss += jnp.sum((v - v_slow) ** 2, axis=-1) * 2 / sigma**2
                x = x + h * (2 * v - x / (t + h)) + jnp.sqrt(h) * sigma * noises[i]
            else:
                x = x + h * base(t, x, obs)
        qs = jnp.stack([jax.vmap(lambda o, a: m(jnp.concatenate([o, a]))[0])(obs, x) for m in members])
        q = (qs.mean(axis=0) - rho * qs.std(axis=0)).mean()
        return -q * tau + bc_loss.mean()

    loss_fn = lambda policy: agent.actor_loss(policy, batch, key)[0]
    loss, grad = eqx.filter_jit(eqx.filter_value_and_grad(loss_fn))(agent.nets.policy)
    expected, grad_expected = eqx.filter_jit(eqx.filter_value_and_grad(official))(agent.nets.policy)
    assert jnp.allclose(loss, expected, rtol=1e-10)
    for a, c in zip(_leaves(grad), _leaves(grad_expected)):
        assert jnp.allclose(a, c, rtol=1e-8, atol=1e-12)


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
