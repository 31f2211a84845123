r"""Projected dual descent on the trust-region parameter λ (TRQAM).

For $\max\ \mathbb E[r(X_1)]$ subject to $\mathrm{KL}(P^u \Vert P^{\rm base}) \le \varepsilon$, λ is the
dual variable: the SOC objective $\mathbb E[\tfrac12\int\lVert u\rVert^2] - \mathbb E[r] =
\lambda\,\mathrm{KL} - \mathbb E[r]$ is the Lagrangian, and since $\mathrm{KL}^*(\lambda)$ decreases in
λ, feedback on the measured KL finds the λ that spends the budget.
"""

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Real


class DualState(eqx.Module):
    """The dual variable and the running KL average (arrays from the start, so that a jitted
    update compiles once)."""

    lam: Float[Array, ""]
    kl_avg: Float[Array, ""]


class DualDescent(eqx.Module):
    r"""Projected dual descent on λ with a clipped, exponentially averaged KL estimate:

    $$\hat D = \min(\widehat{\rm KL}, c\,\varepsilon), \qquad \bar D \leftarrow (1-\rho)\bar D + \rho \hat D,
    \qquad \lambda \leftarrow \Pi_{[\lambda_{\min}, \lambda_{\max}]}\big(\lambda + \eta(\bar D - \varepsilon)\big).$$

    With `log_space=True` the step is taken in $\log\lambda$ and normalised by the budget,
    $\log\lambda \leftarrow \log\lambda + \eta(\bar D - \varepsilon)/\varepsilon$ (projected likewise): steps
    are then relative, the same for any scale of λ or ε.

    The λ that enters σ = g/√λ is `lam_scale * state.lam` ([`flowsoc.DualDescent.effective_lam`][]).
    The defaults are the official TRQAM code's except `lam_scale`: 1 here (σ = g/√λ), while TRQAM keeps a
    fixed multiplier 3 there (`flowsoc.rl.AgentConfig`'s default and its presets set `lam_scale=3`).
    It is the `trust_region` of [`flowsoc.FinetuneConfig`][] and of `flowsoc.rl.AgentConfig`.

    !!! example

        ```python
        dual = fs.DualDescent(kl_budget=0.5)
        state = dual.init()
        for batch in data:
            loss, kl = fs.adjoint_matching_loss(..., lam=dual.effective_lam(state), with_kl=True)
            ...                                   # gradient step on the loss
            state = dual.update(state, kl)        # one dual step per gradient step
        ```
    """

    kl_budget: float = eqx.field(static=True)
    step_size: float = eqx.field(static=True, default=0.01)
    ema: float = eqx.field(static=True, default=0.1)
    clip_coef: float = eqx.field(static=True, default=2.0)
    lam_min: float = eqx.field(static=True, default=0.01)
    lam_max: float = eqx.field(static=True, default=100.0)
    lam_init: float = eqx.field(static=True, default=1.0)
    lam_scale: float = eqx.field(static=True, default=1.0)
    log_space: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        def bad(value):
            return not np.isfinite(value)

        if bad(self.kl_budget) or self.kl_budget <= 0:
            raise ValueError(f"DualDescent: kl_budget must be > 0, got {self.kl_budget}.")
        if bad(self.step_size) or self.step_size <= 0:
            raise ValueError(f"DualDescent: step_size must be > 0, got {self.step_size}.")
        if bad(self.ema) or not 0 < self.ema <= 1:
            raise ValueError(f"DualDescent: ema must lie in (0, 1], got {self.ema}.")
        if bad(self.clip_coef) or self.clip_coef < 1:
            raise ValueError(
                f"DualDescent: clip_coef must be >= 1 (it clips the KL at clip_coef * kl_budget), got {self.clip_coef}."
            )
        if bad(self.lam_min) or bad(self.lam_max) or not 0 < self.lam_min < self.lam_max:
            raise ValueError(
                f"DualDescent: need 0 < lam_min < lam_max, got lam_min={self.lam_min}, lam_max={self.lam_max}."
            )
        if not self.lam_min <= self.lam_init <= self.lam_max:
            raise ValueError(f"DualDescent: lam_init={self.lam_init} lies outside [{self.lam_min}, {self.lam_max}].")
        if bad(self.lam_scale) or self.lam_scale <= 0:
            raise ValueError(f"DualDescent: lam_scale must be > 0, got {self.lam_scale}.")

    def init(self, dtype=None) -> DualState:
        """The initial state: λ = `lam_init`, KL average 0."""
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        return DualState(lam=jnp.asarray(self.lam_init, dtype), kl_avg=jnp.zeros((), dtype))

    def update(self, state: DualState, kl: Real[Array, ""] | float) -> DualState:
        """One projected dual step from a KL estimate of the current batch (pure; jittable).
        A non-finite estimate raises an error rather than corrupting λ."""
        kl = jnp.asarray(kl, state.kl_avg.dtype)
        kl = eqx.error_if(kl, ~jnp.isfinite(kl), "DualDescent.update: the KL estimate is NaN or infinite.")
        clipped = jnp.minimum(kl, self.clip_coef * self.kl_budget)
        kl_avg = (1 - self.ema) * state.kl_avg + self.ema * clipped
        gap = kl_avg - self.kl_budget
        if self.log_space:
            log_lam = jnp.log(state.lam) + self.step_size * gap / self.kl_budget
            lam = jnp.exp(jnp.clip(log_lam, math.log(self.lam_min), math.log(self.lam_max)))
        else:
            lam = state.lam + self.step_size * gap
        lam = jnp.clip(lam, self.lam_min, self.lam_max)
        return DualState(lam=lam.astype(state.lam.dtype), kl_avg=kl_avg)

    def effective_lam(self, state: DualState) -> Float[Array, ""]:
        """The λ inside σ = g/√λ: `lam_scale * state.lam`."""
        return self.lam_scale * state.lam
