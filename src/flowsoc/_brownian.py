"""A Brownian motion drawn on a fixed time grid, for fixed-step SDE solves."""

import math

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._paths import result_dtype


class GridBrownianPath(dfx.AbstractBrownianPath):
    r"""Brownian motion whose increments over the cells $[t_i, t_{i+1}]$ of a grid are drawn
    up front: $W_{t_{i+1}} - W_{t_i} = \sqrt{t_{i+1} - t_i}\, z_i$ with $z_i \sim \mathcal N(0, I)$
    (and, with `levy_area=diffrax.SpaceTimeLevyArea`, the space-time Lévy area
    $H_i \sim \mathcal N(0, (t_{i+1} - t_i)/12)$, independent of $z_i$, for additive-noise
    stochastic Runge–Kutta solvers such as `ShARK` and `SRA1`).

    This is exactly the noise of a hand-written Euler–Maruyama loop with pre-drawn normals:
    cheap, deterministic in `key`, and differentiable through (it is a constant). It is only
    defined on whole grid cells, so use it with `diffrax.StepTo(ts)`; adaptive step-size
    controllers need `diffrax.VirtualBrownianTree` instead. Asking for any other interval
    raises an error at run time.
    """

    ts: Float[Array, " n"]
    normals: Float[Array, "n-1 *shape"]
    levy_normals: Float[Array, "n-1 *shape"] | None
    levy_area: type[dfx.BrownianIncrement | dfx.SpaceTimeLevyArea] = eqx.field(static=True)

    def __init__(
        self,
        ts: Float[Array, " n"],
        key: PRNGKeyArray,
        shape: tuple[int, ...],
        levy_area: type[dfx.BrownianIncrement | dfx.SpaceTimeLevyArea] = dfx.BrownianIncrement,
        dtype=None,
    ):
        """**Arguments:**

        - `ts`: the strictly increasing grid, shape `(n,)`.
        - `key`: a JAX random key.
        - `shape`: the shape of the Brownian motion (the state's shape for diagonal noise).
        - `levy_area`: `diffrax.BrownianIncrement` (default) or `diffrax.SpaceTimeLevyArea`.
        - `dtype`: floating dtype the normals are drawn in (default: that of `ts`); the increments have
          the dtype of these normals and `ts` promoted together.
        """
        self.ts = jnp.asarray(ts)
        dtype = self.ts.dtype if dtype is None else dtype
        if levy_area not in (dfx.BrownianIncrement, dfx.SpaceTimeLevyArea):
            raise ValueError("GridBrownianPath supports levy_area=BrownianIncrement or SpaceTimeLevyArea.")
        key_w, key_h = jr.split(key)
        cells = (self.ts.shape[0] - 1,) + tuple(shape)
        self.normals = jr.normal(key_w, cells, dtype)
        self.levy_normals = jr.normal(key_h, cells, dtype) if levy_area is dfx.SpaceTimeLevyArea else None
        self.levy_area = levy_area

    @property
    def t0(self):
        return self.ts[0]

    @property
    def t1(self):
        return self.ts[-1]

    def evaluate(self, t0, t1=None, left: bool = True, use_levy: bool = False):
        del left
        if t1 is None:
            raise ValueError("GridBrownianPath only provides increments over grid cells: pass t0 and t1.")
        n = self.ts.shape[0]
        index = jnp.clip(jnp.searchsorted(self.ts, t0, side="right") - 1, 0, n - 2)
        lo, hi = self.ts[index], self.ts[index + 1]
        scale = 10 * jnp.finfo(self.ts.dtype).eps * jnp.maximum(1.0, jnp.abs(hi))
        off_grid = (jnp.abs(t0 - lo) > scale) | (jnp.abs(t1 - hi) > scale)
        dt = hi - lo
        # The increments take the dtype of normals and times together (float32 normals on a float64 grid:
        # float64 increments, as Diffrax then solves in float64).
        dtype = result_dtype(self.normals, self.ts)
        w = self.normals[index].astype(dtype) * jnp.sqrt(dt).astype(dtype)
        w = eqx.error_if(
            w,
            off_grid,
            "GridBrownianPath was asked for an increment that is not a grid cell: step on the grid "
            "with diffrax.StepTo(ts), or use diffrax.VirtualBrownianTree for adaptive steps.",
        )
        if not use_levy:
            return w
        if self.levy_area is dfx.SpaceTimeLevyArea:
            assert self.levy_normals is not None
            h = self.levy_normals[index].astype(dtype) * (jnp.sqrt(dt) / math.sqrt(12)).astype(dtype)
            return dfx.SpaceTimeLevyArea(dt=dt, W=w, H=h)
        return dfx.BrownianIncrement(dt=dt, W=w)
