"""The Diffrax implementation against hand-written lax.scan loops of the reference discretisation
(K = 10 steps, shift = h, noiseless last step with the base field): forward states, adjoints,
loss and KL agree to float tolerance."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from tests.helpers import MLPField, normal, reference_lean_adjoint, reference_loss_and_kl, reference_sde

import flowsoc as fs


@pytest.mark.parametrize("conditioned", [False, True])
def test_library_equals_plain_scan(getkey, conditioned):
    dim, batch, k = 3, 8, 10
    cond_dim = 2 if conditioned else 0
    field = MLPField(dim, getkey(), cond_dim=cond_dim)
    base = MLPField(dim, getkey(), cond_dim=cond_dim)
    args = normal(getkey(), (batch, cond_dim)) if conditioned else None
    x0 = normal(getkey(), (batch, dim))
    ts = fs.uniform_grid(k)
    h = 1.0 / k
    key = getkey()
    lam = 0.7

    xs = fs.sample_sde(field, x0, ts, key, args=args, final_field=base)
    normals = fs.GridBrownianPath(ts[:-1], key, x0.shape).normals
    xs_ref = reference_sde(field, base, x0, ts, normals, h, args=args)
    assert xs.shape == (k + 1, batch, dim)
    assert jnp.allclose(xs, xs_ref, rtol=1e-12, atol=1e-12)

    terminal = -normal(getkey(), (batch, dim))
    adj = fs.lean_adjoint(base, xs, ts, terminal, args=args)
    adj_ref = reference_lean_adjoint(base, xs, ts, terminal, h, args=args)
    assert adj.shape == xs.shape
    assert jnp.allclose(adj, adj_ref, rtol=1e-12, atol=1e-12)

    loss, kl = fs.adjoint_matching_loss(field, base, xs, ts, adj, lam=lam, args=args, with_kl=True)
    loss_ref, kl_ref = reference_loss_and_kl(field, base, xs, ts, adj, lam, h, args=args)
    assert jnp.allclose(loss, loss_ref, rtol=1e-12)
    assert jnp.allclose(kl, kl_ref, rtol=1e-12)
    assert jnp.allclose(fs.path_kl(field, base, xs, ts, args=args), kl_ref, rtol=1e-12)

    # And the parameter gradients of the loss (each compiled whole: eagerly, the two backward
    # passes compile ~100 small kernels).
    grad = eqx.filter_jit(
        eqx.filter_grad(lambda f: fs.adjoint_matching_loss(f, base, xs, ts, adj, lam=lam, args=args))
    )(field)
    grad_ref = eqx.filter_jit(
        eqx.filter_grad(lambda f: reference_loss_and_kl(f, base, xs, ts, adj, lam, h, args=args)[0])
    )(field)
    for a, b in zip(
        jax.tree.leaves(eqx.filter(grad, eqx.is_array)), jax.tree.leaves(eqx.filter(grad_ref, eqx.is_array))
    ):
        assert jnp.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_batched_state_equals_vmapped_paths(getkey):
    """Functions act on one sample; a batched state is the same computation as vmapping."""
    dim, batch = 3, 8  # as above: the batched solves are compiled once for both tests
    field, base = MLPField(dim, getkey()), MLPField(dim, getkey())
    ts = fs.uniform_grid(10)
    x0 = normal(getkey(), (batch, dim))
    terminal = normal(getkey(), (batch, dim))
    xs = fs.sample_sde(field, x0, ts, getkey(), final_field=base)
    adj_batched = fs.lean_adjoint(base, xs, ts, terminal)
    adj_vmapped = jax.vmap(lambda x, a: fs.lean_adjoint(base, x, ts, a), in_axes=(1, 0), out_axes=1)(xs, terminal)
    assert jnp.allclose(adj_batched, adj_vmapped, rtol=1e-12, atol=1e-12)
    loss_batched = fs.adjoint_matching_loss(field, base, xs, ts, adj_batched)
    loss_vmapped = jax.vmap(lambda x, a: fs.adjoint_matching_loss(field, base, x, ts, a), in_axes=(1, 1))(
        xs, adj_batched
    )
    assert jnp.allclose(loss_batched, loss_vmapped.sum(), rtol=1e-12)
