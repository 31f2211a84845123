"""Shared test utilities: a small MLP velocity field and the hand-written reference loops."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


MU = jnp.array([0.5, -1.0])
COV = jnp.array([[1.0, 0.3], [0.3, 0.5]])
B = jnp.array([1.0, 0.5])


def _rng(key):
    """A numpy generator seeded from a JAX key."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())


def normal(key, shape):
    """Standard normal test inputs drawn by numpy from a JAX key: JAX's RNG compiles its kernel
    anew for every shape (about a second each on 2 CPU cores), numpy costs nothing."""
    return jnp.asarray(_rng(key).standard_normal(shape))


class MLPField(eqx.Module):
    """A small velocity field `field(t, x, args)` on states of shape (..., d) (args: optional
    conditioning vector, broadcast). Equinox's MLP with its default initialisation law
    (weights and biases uniform on ±1/sqrt(fan_in)), drawn by numpy from `key`."""

    mlp: eqx.nn.MLP

    def __init__(self, dim, key, cond_dim=0, width=32, depth=2):
        shapes = eqx.filter_eval_shape(
            eqx.nn.MLP, dim + 1 + cond_dim, dim, width, depth, activation=jax.nn.gelu, key=key
        )
        rng = _rng(key)

        def draw(layer):
            bound = 1.0 / np.sqrt(layer.in_features)
            weight, bias = (
                jnp.asarray(rng.uniform(-bound, bound, leaf.shape), leaf.dtype) for leaf in (layer.weight, layer.bias)
            )
            return eqx.tree_at(lambda lin: (lin.weight, lin.bias), layer, (weight, bias))

        self.mlp = eqx.tree_at(lambda m: m.layers, shapes, tuple(draw(layer) for layer in shapes.layers))

    def __call__(self, t, x, args=None):
        parts = [x, jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1] + (1,))]
        if args is not None:
            parts.append(jnp.broadcast_to(args, x.shape[:-1] + args.shape[-1:]))
        inp = jnp.concatenate(parts, axis=-1)
        flat = inp.reshape(-1, inp.shape[-1])
        return jax.vmap(self.mlp)(flat).reshape(x.shape)


def g_shift(t, s):
    return jnp.sqrt(2 * (1 - t + s) / (t + s))


def reference_sde(field, base, x0, ts, normals, s, args=None, final_ode_step=True):
    """Euler-Maruyama of the memoryless SDE as a plain lax.scan, noise given as normals."""
    n_sde = ts.shape[0] - (1 if final_ode_step else 0)

    def step(x, inp):
        t, t_next, z = inp
        h = t_next - t
        x_new = x + h * (2 * field(t, x, args) - x / (t + s)) + jnp.sqrt(h) * g_shift(t, s) * z
        return x_new, x_new

    _, xs = jax.lax.scan(step, x0, (ts[: n_sde - 1], ts[1:n_sde], normals))
    xs = jnp.concatenate([x0[None], xs])
    if final_ode_step:
        x_last = xs[-1] + (ts[-1] - ts[-2]) * base(ts[-2], xs[-1], args)
        xs = jnp.concatenate([xs, x_last[None]])
    return xs


def reference_lean_adjoint(base, xs, ts, terminal, s, args=None):
    """The default discrete lean adjoint as a reverse scan: a_i = a_{i+1} + h_i J_i^T a_{i+1} with
    J_i = d/dx [2 v_base(m_i, x) - x/(t_i+s)] at x_i, m_i = (t_i + t_{i+1})/2, and on the last cell (the
    sampler's noiseless ODE step) J = d/dx v_base(m_i, x)."""
    last = jnp.arange(ts.shape[0] - 1) == ts.shape[0] - 2

    def step(a, inp):
        t, t_next, x, is_last = inp
        mid = (t + t_next) / 2

        def drift(y):
            v = base(mid, y, args)
            return jnp.where(is_last, v, 2 * v - y / (t + s))

        _, vjp = jax.vjp(drift, x)
        a_new = a + (t_next - t) * vjp(a)[0]
        return a_new, a_new

    _, adj = jax.lax.scan(step, terminal, (ts[:-1], ts[1:], xs[:-1], last), reverse=True)
    return jnp.concatenate([adj, terminal[None]])


def reference_loss_and_kl(field, base, xs, ts, adj, lam, s, args=None):
    loss, kl = 0.0, 0.0
    for i in range(ts.shape[0] - 1):
        t, h = ts[i], ts[i + 1] - ts[i]
        gap = field(t, xs[i], args) - base(t, xs[i], args)
        sigma = g_shift(t, s) / jnp.sqrt(lam)
        loss = loss + jnp.sum((2 / sigma * gap + sigma * adj[i]) ** 2)
        kl = kl + 2 * h / g_shift(t, s) ** 2 * jnp.sum(gap**2)
    return loss, kl


def moments(x):
    """Mean and covariance of samples of shape (n, d)."""
    return x.mean(0), jnp.cov(x.T)


def unchecked(fn):
    """`fn` without the test suite's jaxtyping/beartype wrapper: what a user without the hook
    runs, so that the library's own error messages are tested too."""
    return getattr(fn, "__wrapped__", fn)
