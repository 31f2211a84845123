"""flowsoc.rl._networks: exact forward passes against hand-written numpy, the reference initialisation,
the batched fast path of the velocity field, the stacked critic ensemble, EMA arithmetic."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowsoc as fs
from flowsoc.rl._networks import count_params, CriticEnsemble, ema_update, MLP, normalise, VelocityMLP


EPS = 1e-6  # Flax's LayerNorm default, which the reference networks use (flowsoc.rl._networks.LAYER_NORM_EPS)


def _np_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _np_layernorm(x, weight, bias, eps=EPS):
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _np_mlp(mlp: MLP, x):
    """The forward pass written out by hand from the module's own arrays."""
    h = np.asarray(x, np.float64)
    for i, layer in enumerate(mlp.layers[:-1]):
        h = _np_gelu(np.asarray(layer.weight) @ h + np.asarray(layer.bias))
        if mlp.layer_norm:
            h = _np_layernorm(h, np.asarray(mlp.norms[i].weight), np.asarray(mlp.norms[i].bias))
    last = mlp.layers[-1]
    return np.asarray(last.weight) @ h + np.asarray(last.bias)


def _randomise(module, seed=0):
    """Replace every inexact array with random normal values (so zero biases / unit LN scales don't hide bugs)."""
    rng = np.random.default_rng(seed)
    params, static = eqx.partition(module, eqx.is_inexact_array)
    params = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), params)
    return eqx.combine(params, static)


_call = eqx.filter_jit(lambda module, *args: module(*args))  # one compile per architecture, shared by the tests


def _normal(shape, seed=0):
    """Test inputs from numpy (no JAX RNG kernels to compile)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


# ---------------------------------------------------------------------------------------------- MLP


def _autodiff_normalise(h, eps=EPS):
    """LayerNorm's normalisation with jnp.var, differentiated by JAX (the reference for the written-out tangent)."""
    mean = jnp.mean(h, axis=-1, keepdims=True)
    return (h - mean) / jnp.sqrt(jnp.var(h, axis=-1, keepdims=True) + eps)


def test_normalise_values_and_exact_tangent():
    """Flax's variance E[h^2] - E[h]^2 gives jnp.var's values to rounding, and the written-out tangent is the
    derivative of the normalisation (JAX's autodiff of the jnp.var form, forward and reverse, float64)."""
    rng = np.random.default_rng(0)
    h = jnp.asarray(3.0 + 2.0 * rng.standard_normal((4, 3, 17)))
    dh = jnp.asarray(rng.standard_normal(h.shape))
    np.testing.assert_allclose(normalise(h, EPS), _autodiff_normalise(h), rtol=1e-12, atol=1e-12)
    _, tangent = jax.jvp(lambda x: normalise(x, EPS), (h,), (dh,))
    _, expected = jax.jvp(_autodiff_normalise, (h,), (dh,))
    np.testing.assert_allclose(tangent, expected, rtol=1e-10, atol=1e-12)
    weights = jnp.asarray(rng.standard_normal(h.shape))
    grad = jax.grad(lambda x: jnp.sum(weights * normalise(x, EPS) ** 3))(h)
    expected_grad = jax.grad(lambda x: jnp.sum(weights * _autodiff_normalise(x) ** 3))(h)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-12)
    # finite differences of one entry's output along a direction
    step = 1e-6
    fd = (normalise(h + step * dh, EPS) - normalise(h - step * dh, EPS)) / (2 * step)
    np.testing.assert_allclose(tangent, fd, rtol=1e-6, atol=1e-8)
    # a constant row: zero variance, finite output and gradient
    flat = jnp.full((5,), 2.0)
    assert np.all(np.asarray(normalise(flat, EPS)) == 0.0)
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda x: jnp.sum(normalise(x, EPS) * jnp.arange(5.0)))(flat))))


@pytest.mark.parametrize("hidden", [(), (8,), (8, 6)])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_mlp_shape_and_structure(getkey, hidden, layer_norm):
    mlp = MLP(4, 3, hidden, layer_norm=layer_norm, key=getkey())
    assert eqx.filter_eval_shape(mlp, jnp.ones(4)).shape == (3,)
    sizes = (4, *hidden, 3)
    assert len(mlp.layers) == len(hidden) + 1
    assert [(lin.in_features, lin.out_features) for lin in mlp.layers] == list(zip(sizes[:-1], sizes[1:]))
    assert len(mlp.norms) == (len(hidden) if layer_norm else 0)
    for norm, h in zip(mlp.norms, hidden):
        assert norm.shape == (h,) and norm.eps == EPS
    linear = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    assert count_params(mlp) == linear + (2 * sum(hidden) if layer_norm else 0)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_mlp_forward_equals_hand_written(getkey, layer_norm):
    mlp = _randomise(MLP(4, 3, (8, 6), layer_norm=layer_norm, key=getkey()))
    for seed in range(3):
        x = _normal((4,), seed)
        np.testing.assert_allclose(np.asarray(_call(mlp, x)), _np_mlp(mlp, x), rtol=1e-12, atol=1e-12)
    # With its real initialisation too (zero biases, unit LayerNorm scale), and eagerly.
    mlp = MLP(4, 3, (8, 6), layer_norm=layer_norm, key=getkey())
    x = _normal((4,), 2)
    np.testing.assert_allclose(np.asarray(mlp(x)), _np_mlp(mlp, x), rtol=1e-12, atol=1e-12)


def test_mlp_order_dense_gelu_layernorm(getkey):
    """LayerNorm comes after GELU: the last hidden activation is exactly normalised."""
    mlp = MLP(3, 1, (16,), layer_norm=True, key=getkey())
    layer, norm = mlp.layers[0], mlp.norms[0]
    x = _normal((3,), 3)
    h = _call(lambda x: norm(jax.nn.gelu(layer(x), approximate=True)), x)
    np.testing.assert_allclose(float(jnp.mean(h)), 0.0, atol=1e-12)
    np.testing.assert_allclose(float(jnp.var(h)), 1.0, rtol=1e-3)  # var/(var+eps)
    np.testing.assert_allclose(np.asarray(_call(mlp, x)), np.asarray(_call(mlp.layers[1], h)), rtol=1e-12, atol=1e-12)


def test_mlp_init_biases_zero_layernorm_identity(getkey):
    mlp = MLP(5, 2, (9, 9), layer_norm=True, key=getkey())
    for lin in mlp.layers:
        assert jnp.all(lin.bias == 0)
    for norm in mlp.norms:
        assert jnp.all(norm.weight == 1) and jnp.all(norm.bias == 0)


@pytest.mark.parametrize("fan_in,fan_out", [(512, 512), (512, 128)])
def test_mlp_init_glorot_uniform(getkey, fan_in, fan_out):
    mlp = MLP(fan_in, fan_out, (), layer_norm=False, key=getkey())
    w = np.asarray(mlp.layers[0].weight)
    assert w.shape == (fan_out, fan_in)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    np.testing.assert_allclose(w.var(), 2.0 / (fan_in + fan_out), rtol=0.02)
    assert abs(w.mean()) < 0.05 * np.sqrt(2.0 / (fan_in + fan_out))


def test_mlp_different_keys_and_dtype(getkey):
    a = MLP(4, 2, (8,), layer_norm=False, key=getkey())
    b = MLP(4, 2, (8,), layer_norm=False, key=getkey())
    assert not jnp.allclose(a.layers[0].weight, b.layers[0].weight)
    f32 = MLP(4, 2, (8,), layer_norm=True, dtype=jnp.float32, key=getkey())
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(eqx.filter(f32, eqx.is_array)))
    assert _call(f32, jnp.ones(4, jnp.float32)).dtype == jnp.float32


def test_mlp_rejects_wrong_input(getkey):
    mlp = MLP(4, 2, (8,), layer_norm=False, key=getkey())
    with pytest.raises((ValueError, TypeError)):
        mlp(jnp.ones(5))


# ---------------------------------------------------------------------------------- VelocityMLP


def _field(getkey, **kw):
    return VelocityMLP(3, 2, (16, 16), key=getkey(), **kw)


def test_velocity_field_is_mlp_of_obs_x_t(getkey):
    field = _randomise(_field(getkey))
    assert field.mlp.in_size == 3 + 2 + 1 and field.mlp.out_size == 2 and not field.mlp.layer_norm
    obs, x = _normal((3,), 4), _normal((2,), 5)
    for t in (0.0, 0.3, 0.9):
        out = _call(field, jnp.asarray(t), x, obs)
        assert out.shape == x.shape
        expected = _np_mlp(field.mlp, np.concatenate([np.asarray(obs), np.asarray(x), [t]]))
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-12)
    assert not jnp.allclose(_call(field, jnp.asarray(0.1), x, obs), _call(field, jnp.asarray(0.7), x, obs))
    # The time enters raw: its first-layer column is the last one of the kernel.
    w_t = field.mlp.layers[0].weight[:, -1]
    h0 = _call(field.mlp.layers[0], jnp.concatenate([obs, x, jnp.array([0.0])]))
    h1 = _call(field.mlp.layers[0], jnp.concatenate([obs, x, jnp.array([0.5])]))
    np.testing.assert_allclose(np.asarray(h1 - h0), np.asarray(0.5 * w_t), rtol=1e-12, atol=1e-12)


def test_velocity_field_layer_norm_option(getkey):
    assert _field(getkey, layer_norm=True).mlp.layer_norm
    assert len(_field(getkey, layer_norm=True).mlp.norms) == 2


@pytest.mark.parametrize("batch", [(5,), (2, 3)])
def test_velocity_field_batched_equals_vmap(getkey, batch):
    field = _randomise(_field(getkey))
    obs, x = _normal((*batch, 3), 6), _normal((*batch, 2), 7)
    t = jnp.asarray(0.4)
    out = _call(field, t, x, obs)
    assert out.shape == x.shape
    single = field
    for _ in batch:
        single = jax.vmap(single, in_axes=(None, 0, 0))
    np.testing.assert_allclose(np.asarray(out), np.asarray(jax.jit(single)(t, x, obs)), rtol=1e-13, atol=1e-13)


def test_velocity_field_batched_through_core_ode(getkey):
    """The core's batched fast path (one Euler ODE over the whole batch) equals per-sample Euler steps."""
    field = _field(getkey)
    obs, x0 = _normal((4, 3), 8), _normal((4, 2), 9)
    ts = fs.uniform_grid(5)
    batched = fs.sample_ode(field, x0, ts, args=obs)
    assert batched.shape == x0.shape
    for i in range(4):
        x = x0[i]
        for t0, t1 in zip(ts[:-1], ts[1:]):
            x = x + (t1 - t0) * _call(field, t0, x, obs[i])
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(x), rtol=1e-12, atol=1e-12)


def test_velocity_field_dtypes(getkey):
    field = _field(getkey, dtype=jnp.float32)
    x, obs = jnp.ones((4, 2), jnp.float32), jnp.ones((4, 3), jnp.float64)
    assert _call(field, jnp.asarray(0.5, jnp.float64), x, obs).dtype == jnp.float32
    assert field(0.5, x[0], obs[0]).dtype == jnp.float32


def test_velocity_field_shape_errors(getkey):
    field = _field(getkey)
    with pytest.raises(ValueError, match="observation"):
        field(0.5, jnp.ones((4, 2)), jnp.ones((5, 3)))  # batch mismatch
    with pytest.raises(ValueError, match="observation"):
        field(0.5, jnp.ones((4, 2)), jnp.ones(3))  # unbatched obs, batched x
    with pytest.raises(ValueError, match="observation"):
        field(0.5, jnp.ones(2), jnp.ones(4))  # wrong obs_dim
    with pytest.raises(ValueError, match="x must have shape"):
        field(0.5, jnp.ones((4, 3)), jnp.ones((4, 3)))  # wrong action_dim
    with pytest.raises((ValueError, TypeError)):  # jaxtyping's check or the module's own
        field(jnp.ones(4), jnp.ones((4, 2)), jnp.ones((4, 3)))  # per-sample t: vmap instead


# --------------------------------------------------------------------------------- CriticEnsemble


def test_critic_ensemble_structure_and_init(getkey):
    ens = CriticEnsemble(3, 2, (8, 8), num_members=4, key=getkey())
    assert ens.num_members == 4 and ens.mlp.layer_norm  # LayerNorm on by default
    assert ens.mlp.layers[0].weight.shape == (4, 8, 5)
    assert [norm.weight.shape for norm in ens.mlp.norms] == [(4, 8), (4, 8)]  # type: ignore[union-attr]
    assert ens.mlp.layers[-1].weight.shape == (4, 1, 8)
    members = ens.members
    assert len(members) == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert not jnp.allclose(members[i].layers[0].weight, members[j].layers[0].weight)
    for lin in ens.mlp.layers:
        assert jnp.all(lin.bias == 0)
    assert not CriticEnsemble(3, 2, (8, 8), num_members=4, layer_norm=False, key=getkey()).mlp.layer_norm


def test_critic_ensemble_equals_members(getkey):
    ens = _randomise(CriticEnsemble(3, 2, (8, 8), num_members=4, key=getkey()))
    obs, action = _normal((3,), 10), _normal((2,), 11)
    out = _call(ens, obs, action)
    assert out.shape == (4,)
    inputs = np.concatenate([np.asarray(obs), np.asarray(action)])
    for k in range(4):
        member = jax.tree.map(lambda a: a[k], ens.mlp)
        np.testing.assert_allclose(float(out[k]), float(_call(member, jnp.asarray(inputs))[0]), rtol=1e-12)
        np.testing.assert_allclose(float(out[k]), _np_mlp(member, inputs)[0], rtol=1e-12)
        assert eqx.tree_equal(member, ens.members[k])


def test_critic_ensemble_gradient_reaches_every_member(getkey):
    ens = CriticEnsemble(3, 2, (8, 8), num_members=4, key=getkey())
    obs, action = _normal((3,), 12), _normal((2,), 13)
    # jac[k, j] = d Q_k / d (member j's parameters): non-zero exactly on the diagonal, so every
    # member receives gradient, and only from its own output.
    jac = eqx.filter_jit(eqx.filter_jacrev(lambda e: e(obs, action)))(ens)
    for leaf in jax.tree.leaves(eqx.filter(jac, eqx.is_inexact_array)):
        assert leaf.shape[:2] == (4, 4)
        norms = np.sqrt(np.sum(np.asarray(leaf).reshape(4, 4, -1) ** 2, axis=-1))
        assert np.all(np.diag(norms) > 0), norms
        np.testing.assert_array_equal(norms[~np.eye(4, dtype=bool)], 0.0)


def test_critic_ensemble_vmap_over_batch(getkey):
    ens = _randomise(CriticEnsemble(3, 2, (8, 8), num_members=4, key=getkey()))
    obs, action = _normal((6, 3), 14), _normal((6, 2), 15)
    out = jax.jit(jax.vmap(ens))(obs, action)
    assert out.shape == (6, 4)
    loop = np.stack([np.asarray(_call(ens, o, a)) for o, a in zip(obs, action)])
    np.testing.assert_allclose(np.asarray(out), loop, rtol=1e-12, atol=1e-12)
    with pytest.raises((ValueError, TypeError)):
        ens(obs, action)  # batched input: vmap instead


def test_critic_ensemble_param_count(getkey):
    k, obs_dim, action_dim, hidden = 4, 3, 2, (8, 8)
    ens = CriticEnsemble(obs_dim, action_dim, hidden, num_members=k, key=getkey())
    one = MLP(obs_dim + action_dim, 1, hidden, layer_norm=True, key=getkey())
    assert count_params(ens) == k * count_params(one)
    sizes = (obs_dim + action_dim, *hidden, 1)
    per_member = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:])) + 2 * sum(hidden)
    assert count_params(ens) == k * per_member


# ---------------------------------------------------------------------------------------- ema_update


class _Tiny(eqx.Module):
    w: jax.Array
    b: jax.Array
    steps: jax.Array  # integer array: not averaged
    name: str  # non-array leaf


def test_ema_update_exact_arithmetic():
    target = _Tiny(jnp.array([1.0, 2.0, -4.0]), jnp.array(8.0), jnp.array(3), "target")
    online = _Tiny(jnp.array([3.0, -2.0, 4.0]), jnp.array(0.0), jnp.array(99), "online")
    new = ema_update(target, online, 0.25)
    np.testing.assert_array_equal(np.asarray(new.w), np.array([1.5, 1.0, -2.0]))
    np.testing.assert_array_equal(np.asarray(new.b), np.array(6.0))
    assert int(new.steps) == 3 and new.name == "target"
    assert new.w.dtype == target.w.dtype
    # Pure: the inputs are unchanged.
    np.testing.assert_array_equal(np.asarray(target.w), np.array([1.0, 2.0, -4.0]))


def test_ema_update_endpoints_and_jit(getkey):
    target = MLP(4, 3, (8, 6), layer_norm=True, key=getkey())
    online = _randomise(target)
    assert eqx.tree_equal(ema_update(target, online, 0.0), target)
    same = ema_update(target, online, 1.0)
    assert eqx.tree_equal(eqx.filter(same, eqx.is_array), eqx.filter(online, eqx.is_array))
    rate = 0.005
    new = eqx.filter_jit(ema_update)(target, online, jnp.asarray(rate))
    for a, t, o in zip(*(jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (new, target, online))):
        np.testing.assert_allclose(np.asarray(a), (1 - rate) * np.asarray(t) + rate * np.asarray(o), rtol=1e-14)


def test_ema_update_keeps_dtype_and_rejects_mismatch(getkey):
    target = MLP(4, 2, (8,), layer_norm=False, dtype=jnp.float32, key=getkey())
    new = ema_update(target, target, jnp.asarray(0.1, jnp.float64))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(eqx.filter(new, eqx.is_array)))
    with pytest.raises(ValueError):
        ema_update(target, MLP(4, 2, (6,), layer_norm=False, dtype=jnp.float32, key=getkey()), 0.1)
    with pytest.raises(ValueError):
        ema_update(target, MLP(4, 2, (8, 8), layer_norm=False, key=getkey()), 0.1)


def test_count_params():
    assert count_params(eqx.nn.LayerNorm(7)) == 14
    assert count_params(_Tiny(jnp.ones(3), jnp.ones(()), jnp.array(1), "x")) == 4
