r"""Network building blocks of the RL agents: an MLP, an observation-conditioned velocity field,
a critic ensemble, Polyak (EMA) averaging and a parameter count.

Modules act on unbatched inputs (batch with `jax.vmap`), except [`flowsoc.rl.VelocityMLP`][],
which also accepts a batched state so that the SOC core can pass a whole batch at once. The layouts and
the initialisation follow the reference QAM/TRQAM networks: hidden layers `Linear → GELU → LayerNorm`
(LayerNorm optional), Glorot-uniform kernels, zero biases.
"""

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Real


_M = TypeVar("_M")
LAYER_NORM_EPS = 1e-6  # Flax's `nn.LayerNorm` default, which the reference QAM/TRQAM networks use


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def normalise(h: Float[Array, "*rows features"], eps: float) -> Float[Array, "*rows features"]:
    r"""LayerNorm's normalisation over the last axis, $\hat h = (h - \mu)/\sqrt{\sigma^2 + \epsilon}$ with Flax's
    variance $\sigma^2 = \max(0, \overline{h^2} - \mu^2)$ (the reference networks' `nn.LayerNorm`; `jnp.var` up
    to float rounding). Its tangent is written out, $\dot{\hat h} = (\dot h - \overline{\dot h} - \hat h\,
    \overline{\dot h \hat h})/\sqrt{\sigma^2 + \epsilon}$ (exact), so that the backward pass is two row means
    where automatic differentiation of the forward makes more passes over the activations."""
    mean = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.maximum(0.0, jnp.mean(h * h, axis=-1, keepdims=True) - mean * mean)
    return (h - mean) * jax.lax.rsqrt(var + eps)


@normalise.defjvp
def _normalise_jvp(eps, primals, tangents):
    (h,), (dh,) = primals, tangents
    mean = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.maximum(0.0, jnp.mean(h * h, axis=-1, keepdims=True) - mean * mean)
    r = jax.lax.rsqrt(var + eps)
    hat = (h - mean) * r
    mean_dot = jnp.mean(dh, axis=-1, keepdims=True)
    return hat, r * (dh - mean_dot - hat * jnp.mean(dh * hat, axis=-1, keepdims=True))


def _gelu(x: Array) -> Array:
    # Flax's `nn.gelu` (the reference activation) is the tanh approximation.
    return jax.nn.gelu(x, approximate=True)


@functools.partial(jax.jit, static_argnames=("sizes", "dtype"))
def _init_params(key: PRNGKeyArray, sizes: tuple[int, ...], dtype: Any) -> tuple:
    """The reference initialisation, compiled once per architecture: Glorot-uniform kernels of shape
    (out, in), U(±sqrt(6 / (fan_in + fan_out))) (variance_scaling 1, fan_avg, uniform), zero biases,
    unit/zero LayerNorm. One uniform draw is sliced into the kernels (a single RNG call keeps the
    compile short); disjoint slices make the kernels independent."""
    shapes = [(n_out, n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    flat = jr.uniform(key, (sum(o * i for o, i in shapes),), dtype, minval=-1.0, maxval=1.0)
    linears, start = [], 0
    for n_out, n_in in shapes:
        limit = (6.0 / (n_in + n_out)) ** 0.5
        kernel = flat[start : start + n_out * n_in].reshape(n_out, n_in) * jnp.asarray(limit, dtype)
        linears.append((kernel, jnp.zeros((n_out,), dtype)))
        start += n_out * n_in
    norms = tuple((jnp.ones((h,), dtype), jnp.zeros((h,), dtype)) for h in sizes[1:-1])
    return tuple(linears), norms


class MLP(eqx.Module):
    r"""A multilayer perceptron: each hidden layer computes $h \mapsto \mathrm{LN}(\mathrm{gelu}(W h + b))$
    (LayerNorm only with `layer_norm=True`), then a final linear layer $W_L h + b_L$.

    GELU is the tanh approximation; LayerNorm has a learned scale and offset and Flax's default eps
    (1e-6, `LAYER_NORM_EPS`, as the reference networks). Kernels are Glorot-uniform,
    $\mathcal U(\pm\sqrt{6/(n_{\rm in}+n_{\rm out})})$ for a layer of input width $n_{\rm in}$ and output
    width $n_{\rm out}$, and biases start at zero (the reference initialisation).
    """

    layers: tuple[eqx.nn.Linear, ...]
    norms: tuple[eqx.nn.LayerNorm, ...]
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    hidden_sizes: tuple[int, ...] = eqx.field(static=True)
    layer_norm: bool = eqx.field(static=True)
    activation: Callable[[Array], Array] = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        hidden_sizes: tuple[int, ...],
        *,
        layer_norm: bool,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_size`, `out_size`: input and output widths.
        - `hidden_sizes`: widths of the hidden layers, e.g. `(512, 512, 512, 512)`; `()` gives one linear layer.
        - `layer_norm`: whether each hidden layer ends with a LayerNorm.
        - `dtype`: parameter dtype (default: JAX's default float, as in Equinox).
        - `key`: PRNG key for the initialisation.
        """
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        sizes = (int(in_size), *hidden_sizes, int(out_size))
        dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
        linear_params, norm_params = _init_params(key, sizes, dtype)
        # Equinox's modules as skeletons (shapes only, nothing computed), filled with the reference init.
        self.layers = tuple(
            eqx.tree_at(
                lambda lin: (lin.weight, lin.bias),
                eqx.filter_eval_shape(eqx.nn.Linear, n_in, n_out, dtype=dtype, key=key),
                params,
            )
            for n_in, n_out, params in zip(sizes[:-1], sizes[1:], linear_params)
        )
        self.norms = (
            tuple(
                eqx.tree_at(
                    lambda norm: (norm.weight, norm.bias),
                    eqx.filter_eval_shape(eqx.nn.LayerNorm, h, eps=LAYER_NORM_EPS, dtype=dtype),
                    params,
                )
                for h, params in zip(hidden_sizes, norm_params)
            )
            if layer_norm
            else ()
        )
        self.in_size = int(in_size)
        self.out_size = int(out_size)
        self.hidden_sizes = hidden_sizes
        self.layer_norm = bool(layer_norm)
        self.activation = _gelu

    @property
    def dtype(self) -> Any:
        """The parameters' dtype."""
        return self.layers[0].weight.dtype

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
        """The forward pass on one input vector of shape `(in_size,)`, cast to the parameters' dtype."""
        if x.shape != (self.in_size,):
            raise ValueError(f"MLP: expected an input of shape ({self.in_size},), got {x.shape}.")
        x = jnp.asarray(x).astype(self.dtype)
        for i, layer in enumerate(self.layers[:-1]):
            x = self.activation(layer(x))
            if self.layer_norm:
                norm = self.norms[i]
                x = norm.weight.astype(x.dtype) * normalise(x, norm.eps) + norm.bias
        return self.layers[-1](x)


class VelocityMLP(eqx.Module):
    r"""An observation-conditioned flow velocity field with flowsoc's convention
    `field(t, x, args) -> dx/dt`, where `args` is the observation:

    $$v(t, x; s) = \mathrm{MLP}([s, x, t]),$$

    the input being the concatenation of the observation, the state (action) and the raw scalar time
    (no Fourier features), as in the reference `ActorVectorField`.

    Works on one sample (`x`: `(action_dim,)`, `args`: `(obs_dim,)`) and on batched states
    (`x`: `(*batch, action_dim)`, `args`: `(*batch, obs_dim)`, one scalar `t` for all), so the core
    can integrate a whole batch at once. For action chunks `action_dim` is the flattened chunk size.
    """

    mlp: MLP
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        *,
        layer_norm: bool = False,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `obs_dim`: observation width.
        - `action_dim`: state (action, or flattened action chunk) width.
        - `hidden_sizes`: MLP hidden widths (reference: `(512,) * 4`).
        - `layer_norm`: LayerNorm in the hidden layers (reference: off, on for the largest tasks).
        - `dtype`: parameter dtype (default: JAX's default float).
        - `key`: PRNG key for the initialisation.
        """
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.mlp = MLP(
            self.obs_dim + self.action_dim + 1,
            self.action_dim,
            hidden_sizes,
            layer_norm=layer_norm,
            dtype=dtype,
            key=key,
        )

    def __call__(
        self, t: Real[ArrayLike, ""], x: Float[Array, "*batch action_dim"], args: Float[Array, "... obs_dim"]
    ) -> Float[Array, "*batch action_dim"]:
        """The velocity $dx/dt$ at time `t` (a scalar), state `x` and observation `args`; shaped and typed
        like `x` (the observation and `t` are cast to `x`'s dtype)."""
        obs = args
        if x.ndim < 1 or x.shape[-1] != self.action_dim:
            raise ValueError(f"VelocityMLP: x must have shape (..., {self.action_dim}), got {x.shape}.")
        if obs.shape != (*x.shape[:-1], self.obs_dim):
            raise ValueError(
                f"VelocityMLP: the observation (args) must have shape {(*x.shape[:-1], self.obs_dim)} to match "
                f"x of shape {x.shape}, got {obs.shape}."
            )
        t = jnp.asarray(t)
        if t.ndim != 0:
            raise ValueError(f"VelocityMLP: t must be a scalar, got shape {t.shape}.")
        batch = x.shape[:-1]
        tt = jnp.broadcast_to(t.astype(x.dtype), (*batch, 1))
        inputs = jnp.concatenate([obs.astype(x.dtype), x, tt], axis=-1)
        if batch:
            out = jax.vmap(self.mlp)(inputs.reshape(-1, inputs.shape[-1])).reshape(*batch, self.action_dim)
        else:
            out = self.mlp(inputs)
        return out.astype(x.dtype)


class CriticEnsemble(eqx.Module):
    r"""An ensemble of $K$ independent MLP critics $Q_k(s, a) = \mathrm{MLP}_k([s, a])$, $k = 1..K$,
    with stacked parameters (leading axis of length $K$ on every array leaf), evaluated with
    `eqx.filter_vmap` over the member axis. One sample in, the $K$ values out; batch with `jax.vmap`.
    For action chunks `action_dim` is the flattened chunk size.
    """

    mlp: MLP
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)
    num_members: int = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        *,
        num_members: int = 10,
        layer_norm: bool = True,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `obs_dim`, `action_dim`: input widths (the critic reads `concat[obs, action]`).
        - `hidden_sizes`: MLP hidden widths (reference: `(512,) * 4`).
        - `num_members`: ensemble size $K$ (reference: 10).
        - `layer_norm`: LayerNorm in the hidden layers (reference: on).
        - `dtype`: parameter dtype (default: JAX's default float).
        - `key`: PRNG key; member $k$ is initialised from the $k$-th split.
        """
        if num_members < 1:
            raise ValueError(f"CriticEnsemble: num_members must be >= 1, got {num_members}.")
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.num_members = int(num_members)
        in_size = self.obs_dim + self.action_dim

        @eqx.filter_vmap
        def make(k):
            return MLP(in_size, 1, hidden_sizes, layer_norm=layer_norm, dtype=dtype, key=k)

        self.mlp = make(jr.split(key, self.num_members))

    @property
    def members(self) -> tuple[MLP, ...]:
        """The $K$ member MLPs, unstacked (each acts on `concat[obs, action]` and returns shape `(1,)`)."""
        params, static = eqx.partition(self.mlp, eqx.is_array)
        leaves, treedef = jax.tree.flatten(params)
        per_leaf = [jnp.unstack(leaf) for leaf in leaves]
        return tuple(
            eqx.combine(jax.tree.unflatten(treedef, [parts[k] for parts in per_leaf]), static)
            for k in range(self.num_members)
        )

    def __call__(self, obs: Float[Array, " obs_dim"], action: Float[Array, " action_dim"]) -> Float[Array, " members"]:
        """$[Q_1(s, a), \\dots, Q_K(s, a)]$ for one observation and one action."""
        if obs.shape != (self.obs_dim,) or action.shape != (self.action_dim,):
            raise ValueError(
                f"CriticEnsemble: expected obs ({self.obs_dim},) and action ({self.action_dim},), "
                f"got {obs.shape} and {action.shape} (vmap over a batch)."
            )
        dtype = self.mlp.dtype
        inputs = jnp.concatenate([obs.astype(dtype), action.astype(dtype)])
        return eqx.filter_vmap(lambda member: member(inputs))(self.mlp)[:, 0]

    def batched(
        self, obs: Float[Array, "batch obs_dim"], action: Float[Array, "batch action_dim"]
    ) -> Float[Array, "batch members"]:
        """`jax.vmap(self)(obs, action)`, the $K$ values for each of a batch, computed member-major: each layer is one
        batched contraction over the members, `(K, B, in) x (K, out, in) -> (K, B, out)` (the reference critics'
        layout), which XLA runs faster than the vmap of the one-sample call. The same values up to float rounding."""
        if obs.ndim != 2 or action.ndim != 2 or obs.shape[-1] != self.obs_dim or action.shape[-1] != self.action_dim:
            raise ValueError(
                f"CriticEnsemble.batched: expected obs (B, {self.obs_dim}) and action (B, {self.action_dim}), "
                f"got {obs.shape} and {action.shape}."
            )
        mlp = self.mlp
        dtype = mlp.dtype
        h = jnp.concatenate([obs.astype(dtype), action.astype(dtype)], axis=-1)
        for i, layer in enumerate(mlp.layers):
            spec = "bi,koi->kbo" if i == 0 else "kbi,koi->kbo"
            h = jnp.einsum(spec, h, layer.weight) + layer.bias[:, None, :]
            if i == len(mlp.layers) - 1:
                break
            h = mlp.activation(h)
            if mlp.layer_norm:  # as MLP.__call__, per member and sample
                norm = mlp.norms[i]
                h = norm.weight[:, None, :].astype(dtype) * normalise(h, norm.eps) + norm.bias[:, None, :]
        return h[..., 0].T


class OneStepPolicy(eqx.Module):
    r"""QAM-F's one-step policy $\mu(s, z) = \mathrm{MLP}([s, z])$: noise $z \sim \mathcal N(0, I)$ to an action
    chunk in one network call (the reference `ActorVectorField` with no time input)."""

    mlp: MLP
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        *,
        layer_norm: bool = False,
        key: PRNGKeyArray,
    ):
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self.mlp = MLP(self.obs_dim + self.action_dim, self.action_dim, hidden_sizes, layer_norm=layer_norm, key=key)

    def __call__(
        self, observations: Float[Array, "*batch obs_dim"], noise: Float[Array, "*batch action_dim"]
    ) -> Float[Array, "*batch action_dim"]:
        inputs = jnp.concatenate([observations.astype(noise.dtype), noise], axis=-1)
        flat = inputs.reshape(-1, inputs.shape[-1])
        return jax.vmap(self.mlp)(flat).reshape(noise.shape)


class TanhGaussian(eqx.Module):
    r"""A tanh-squashed Gaussian with state-dependent mean and log-std on an input $y$ (QAM-E's edit actor, whose
    input is the observation and the flow's action): $e = \tanh(u)$,
    $u \sim \mathcal N(\mu(y), \mathrm{diag}\,\sigma(y)^2)$, $\log\sigma$ clipped to $[-20, 2]$; both heads read the
    last hidden layer of one MLP (the reference `TanhNormal` on an `MLP(activate_final=True)`)."""

    mlp: MLP
    out_dim: int = eqx.field(static=True)
    log_std_min: float = eqx.field(static=True, default=-20.0)
    log_std_max: float = eqx.field(static=True, default=2.0)

    def __init__(self, in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...], *, key: PRNGKeyArray):
        self.out_dim = int(out_dim)
        self.mlp = MLP(in_dim, 2 * self.out_dim, hidden_sizes, layer_norm=False, key=key)

    def sample(
        self, inputs: Float[Array, "*batch in_dim"], key: PRNGKeyArray
    ) -> tuple[Float[Array, "*batch out_dim"], Float[Array, "*batch"]]:
        r"""A reparameterised sample and its log density,
        $\log p(e) = \sum_j \log\mathcal N(u_j; \mu_j, \sigma_j^2) - \log(1 - \tanh^2 u_j)$."""
        flat = inputs.reshape(-1, inputs.shape[-1])
        out = jax.vmap(self.mlp)(flat).reshape(*inputs.shape[:-1], 2 * self.out_dim)
        mean, log_std = out[..., : self.out_dim], jnp.clip(out[..., self.out_dim :], self.log_std_min, self.log_std_max)
        return tanh_gaussian_sample(mean, log_std, key)


def tanh_gaussian_sample(
    mean: Float[Array, "*batch dim"], log_std: Float[Array, "*batch dim"], key: PRNGKeyArray
) -> tuple[Float[Array, "*batch dim"], Float[Array, "*batch"]]:
    r"""A reparameterised sample $\tanh(u)$, $u = \mu + e^{\log\sigma}\epsilon$, and its log density
    $\sum_j \log\mathcal N(u_j; \mu_j, \sigma_j^2) - \log(1 - \tanh^2 u_j)$ (QAM-E's edit actor, SAC's actor)."""
    eps = jr.normal(key, mean.shape, mean.dtype)
    u = mean + jnp.exp(log_std) * eps
    gaussian = -0.5 * eps**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)
    log_det = 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))  # log(1 - tanh(u)^2), stably
    return jnp.tanh(u), jnp.sum(gaussian - log_det, axis=-1)


def ema_update(target: _M, online: _M, rate: float | Real[ArrayLike, ""]) -> _M:
    r"""Polyak averaging: every inexact-array leaf becomes $(1-\rho)\,\theta_{\rm target} + \rho\,\theta_{\rm online}$
    with $\rho$ = `rate` (reference: 0.005), cast to the target leaf's dtype. Non-array leaves come
    from `target`. Pure: returns the new target. `rate=0` returns `target`, `rate=1` returns `online`.
    """
    target_params, target_static = eqx.partition(target, eqx.is_inexact_array)
    online_params = eqx.filter(online, eqx.is_inexact_array)
    if jax.tree.structure(target_params) != jax.tree.structure(online_params):
        raise ValueError("ema_update: target and online have different parameter structures.")

    def average(a, b):
        if a.shape != b.shape:
            raise ValueError(f"ema_update: a target leaf of shape {a.shape} meets an online leaf of shape {b.shape}.")
        r = jnp.asarray(rate).astype(a.dtype)
        return (1 - r) * a + r * b.astype(a.dtype)

    new_params = jax.tree.map(average, target_params, online_params)
    return eqx.combine(new_params, target_static)


def count_params(module: PyTree) -> int:
    """The number of scalar parameters: the total size of the inexact-array leaves of `module`."""
    return int(sum(leaf.size for leaf in jax.tree.leaves(eqx.filter(module, eqx.is_inexact_array))))
