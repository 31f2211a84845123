r"""The lean adjoint's discretisations, measured by the terminal law of the fine-tuned policy.

Set-up (the reference discretisation): uniform grid $t_i = ih$, $h = 1/K$, shift $s = h$,
$g_i = g_s(t_i) = \sqrt{2(1-t_i+s)/(t_i+s)}$. Training paths come from the memoryless SDE of the
current field (K-1 Euler-Maruyama steps, then one noiseless Euler step of the base), adjoints from

$$\tilde a_K = -\nabla r(x_K), \qquad \tilde a_i = (I + h J_i^\top)\,\tilde a_{i+1}, \qquad
J_i = \nabla_x\big(2v_{\rm base}(\tau_i, x) - x/(t_i + s)\big),$$

with the scheme's base time $\tau_i$ = $t_i$ (`grid`), $t_i + h$ (`next`, the official QAM/TRQAM
codes) or $t_i + h/2$ (`mid`), and with `+final` the last cell's Jacobian replaced by that of the
noiseless base step, $J_{K-1} = \nabla_x v_{\rm base}(\tau_{K-1}, x)$ (`grid+final`, "chain", is the
exact vector-Jacobian product of the sampled base chain). The adjoint recursion used here is
checked against `flowsoc.lean_adjoint` for every scheme. The field is fitted by adjoint matching: at each grid time the
regression target $v_{\rm base}(t_i, x_i) - \frac{g_i^2}{2\lambda}\tilde a_i$ is projected onto affine
functions of $x_i$ under the law of the current field's paths; the result is the on-policy fixed
point $v_i(x) = v_{\rm base}(t_i, x) - \frac{g_i^2}{2\lambda}\,\mathbb E[\tilde a_i \mid x_i = x]$.
The policy is then sampled by the K-step Euler ODE of the fitted field from $\mathcal N(0, I)$ and
its terminal law compared with the tilt $p_{\rm base}\,e^{r/\lambda}$.

Everything is exact (no sampling): for a Gaussian base $\mathcal N(\mu, \Sigma)$ the base field is
affine, $J_i$ is constant, $\tilde a_i = P_i\,\tilde a_K$ with a deterministic matrix $P_i$, and for
$\nabla r(x) = -(A x - q)$ (linear reward: $A = 0$, $q = b$; quadratic
$r = -\frac12(x-c)^\top A(x-c)$: $q = Ac$) the training chain is linear-Gaussian, so
$\mathbb E[x_K \mid x_i] = \Phi_i x_i + \varphi_i$ and the fixed point is affine,
$v_i(x) = \alpha_i + B_i x$. It is solved backward in time: with $c_i = g_i^2/(2\lambda)$,
$M_t = \nabla_x v_{\rm base}(t, \cdot)$ and $G_i = c_i P_i A \Phi_{i+1}$, for $i \le K-2$ (the
controlled Euler-Maruyama step $x_{i+1} = (1 - \frac{h}{t_i+s})x_i + 2h(\alpha_i + B_i x_i) + \text{noise}$)

$$(I + 2hG_i)\,B_i = M_{t_i} - (1 - \tfrac{h}{t_i+s})\,G_i, \qquad
(I + 2hG_i)\,\alpha_i = \mu - t_i M_{t_i}\mu - c_i P_i(A\varphi_{i+1} - q),$$

and for $i = K-1$, whose step is the base's, $x_K = (I + hM_{t_{K-1}})x_{K-1} + h(\mu - t_{K-1}M_{t_{K-1}}\mu)$,
the same without the implicit part: $B_{K-1} = M_{t_{K-1}} - G_{K-1}(I + hM_{t_{K-1}})$ with $\Phi_K = I$,
$\varphi_K = 0$; then $\Phi_i = \Phi_{i+1}F_i$, $\varphi_i = \Phi_{i+1}f_i + \varphi_{i+1}$ for the step
$x_{i+1} = F_i x_i + f_i + \text{noise}$. For the linear reward this is the adjoint-matching optimum
$v_i = v_{\rm base}(t_i, \cdot) + c_i P_i b$ directly. The policy's terminal law is propagated
through the affine Euler maps $x_{i+1} = (I + hB_i)x_i + h\alpha_i$. A Monte Carlo check runs the
library's own sampler and adjoint on the fixed point and refits it by least squares.

Reported per case, λ, K and scheme: $\lVert m - m^*\rVert$ (also relative to the tilt's shift
$\lVert m^* - \mu\rVert$), $\lVert C - \Sigma^*\rVert_F$ (also relative to $\lVert\Sigma\rVert_F$), the
realised/exact mean shift $(m - \mu)\cdot(m^* - \mu)/\lVert m^* - \mu\rVert^2$ and covariance change,
$\mathrm{KL}(\mathcal N(m, C)\,\Vert\,\mathcal N(m^*, \Sigma^*))$, and
$\lVert C - C_{\rm field}\rVert_F/\lVert\Sigma\rVert_F$ against the covariance $C_{\rm field}$ that the exact
tilted field reaches on the same grid. References: the base's own K-step Euler ODE against the base
(what any scheme gives as λ → ∞), and the exact tilted flow-matching field sampled by the same
K-step Euler ODE against the tilt (the best a perfect continuous-time field does on this grid).

    python benchmarks/adjoint_time.py             # K = 10 rows, summaries; writes results/adjoint_time.json
    python benchmarks/adjoint_time.py --markdown  # also the documentation's tables (about 2 min on 2 CPUs)
    python benchmarks/adjoint_time.py --all-rows  # every K's rows
    python benchmarks/adjoint_time.py --no-check  # skip the checks (library adjoints, iteration, Monte Carlo)
"""

import argparse
import dataclasses
import json
import pathlib
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import flowsoc as fs
from flowsoc import gaussian as G


KS = (5, 10, 20, 40)
SCHEMES = {  # name: (base_time, final_ode_step)
    "grid": ("grid", False),
    "next": ("next", False),
    "mid": ("mid", False),
    "grid+final": ("grid", True),
    "next+final": ("next", True),
    "mid+final": ("mid", True),
}
STDS = (0.05, 0.1, 0.2, 0.5, 1.0)  # the 1-D bases' standard deviations
BUDGETS = (0.05, 0.5)  # λ of each case is set by the tilt's KL to the base, KL*(λ) = ε


@dataclasses.dataclass(frozen=True)
class Case:
    """A Gaussian base N(mean, cov) and a reward with ∇r(x) = -(A x - q)."""

    name: str
    mean: np.ndarray
    cov: np.ndarray
    a: np.ndarray
    q: np.ndarray
    kind: str  # "linear" (A = 0, q = b) or "quadratic" (q = A c)
    _lams: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def lam(self, budget: float) -> float:
        """The λ whose tilt has KL*(λ) = budget to the base (cached)."""
        if budget not in self._lams:
            if self.kind == "linear":
                lam = G.dual_lambda_linear(self.cov, self.q, budget)
            else:
                c = np.linalg.solve(self.a, self.q)
                lam = G.lambda_for_budget(lambda lam: G.kl_quadratic(self.mean, self.cov, self.a, c, lam), budget)
            self._lams[budget] = float(lam)
        return self._lams[budget]

    def tilt(self, lam: float) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "linear":
            m, c = G.tilt_linear(self.mean, self.cov, self.q, lam)
        else:
            m, c = G.tilt_quadratic(self.mean, self.cov, self.a, np.linalg.solve(self.a, self.q), lam)
        return np.asarray(m), np.asarray(c)


def make_cases() -> list[Case]:
    """1-D bases N(0.3, s²) over a range of widths, and 2-D bases with correlation from a rotation by 0.5
    rad of principal standard deviations (1, 0.3) and (1, 0.1); each with a linear and a quadratic reward."""
    cases = []
    for std in STDS:
        mean, cov = np.array([0.3]), np.array([[std**2]])
        cases.append(Case(f"1d s={std} linear", mean, cov, np.zeros((1, 1)), np.array([1.0]), "linear"))
        a, c = np.array([[1 / std**2]]), mean + 2 * std  # a well two base stds away, as wide as the base
        cases.append(Case(f"1d s={std} quadratic", mean, cov, a, a @ c, "quadratic"))
    rot = np.array([[np.cos(0.5), -np.sin(0.5)], [np.sin(0.5), np.cos(0.5)]])
    for stds in ((1.0, 0.3), (1.0, 0.1)):
        mean, cov = np.array([0.5, -0.3]), rot @ np.diag(np.square(stds)) @ rot.T
        name = f"2d s=({stds[0]},{stds[1]})"
        cases.append(Case(f"{name} linear", mean, cov, np.zeros((2, 2)), np.array([1.0, -1.0]), "linear"))
        a, c = np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([1.0, 0.5])
        cases.append(Case(f"{name} quadratic", mean, cov, a, a @ c, "quadratic"))
    return cases


def adjoint_steps(case: Case, ts: np.ndarray, base_time: str, final_ode_step: bool) -> np.ndarray:
    r"""The scheme's backward steps $I + h J_i^\top$, $i = 0 \dots K-1$, for a Gaussian base (constant $J_i$)."""
    k, eye = ts.shape[0] - 1, np.eye(case.mean.shape[0])
    steps = np.zeros((k,) + eye.shape)
    for i in range(k):
        h = ts[i + 1] - ts[i]
        tau = {"grid": ts[i], "next": ts[i + 1], "mid": 0.5 * (ts[i] + ts[i + 1])}[base_time]
        m = np.asarray(G.velocity_matrix(case.cov, tau))
        jac = m if (final_ode_step and i == k - 1) else 2 * m - eye / (ts[i] + ts[1] - ts[0])
        steps[i] = eye + h * jac.T
    return steps


def adjoint_propagators(case: Case, ts: np.ndarray, base_time: str, final_ode_step: bool) -> np.ndarray:
    r"""$P_i$ with $\tilde a_i = P_i\tilde a_K$: $P_K = I$, $P_i = (I + hJ_i^\top)P_{i+1}$. Shape `(K+1, d, d)`;
    `library_propagators` is the same from `flowsoc.lean_adjoint` (checked to agree)."""
    steps = adjoint_steps(case, ts, base_time, final_ode_step)
    props = np.zeros((steps.shape[0] + 1,) + steps.shape[1:])
    props[-1] = np.eye(steps.shape[1])
    for i in range(steps.shape[0] - 1, -1, -1):
        props[i] = steps[i] @ props[i + 1]
    return props


@eqx.filter_jit
def library_propagators(base, ts, base_time: str, final_ode_step: bool) -> jax.Array:
    """`adjoint_propagators` computed by `flowsoc.lean_adjoint` (for a Gaussian base its Jacobians are
    constant, so the states it is given do not matter): `[i, :, j]` is ã_i for ã_K = e_j."""
    d = base.mean.shape[0]
    xs = jnp.zeros((ts.shape[0], d))

    def column(e):
        return fs.lean_adjoint(base, xs, ts, e, base_time=base_time, final_ode_step=final_ode_step)

    return jax.vmap(column, out_axes=2)(jnp.eye(d))


def fixed_point(case: Case, ts: np.ndarray, props: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    r"""The on-policy adjoint-matching fixed point within affine fields, $v_i(x) = \alpha_i + B_i x$,
    solved backward in time (see the module docstring)."""
    K, d = ts.shape[0] - 1, case.mean.shape[0]
    h, eye, mu = ts[1] - ts[0], np.eye(case.mean.shape[0]), case.mean
    g2 = np.asarray(fs.shifted_sigma(ts[:-1], h)) ** 2
    alpha, slope = np.zeros((K, d)), np.zeros((K, d, d))
    phi_mat, phi_vec = eye, np.zeros(d)  # E[x_K | x_{i+1}] = Φ x_{i+1} + φ
    for i in range(K - 1, -1, -1):
        t, c = ts[i], g2[i] / (2 * lam)
        m = np.asarray(G.velocity_matrix(case.cov, t))
        drift0 = mu - t * m @ mu
        gain = c * props[i] @ case.a @ phi_mat
        rhs_vec = drift0 - c * props[i] @ (case.a @ phi_vec - case.q)
        if i == K - 1:  # x_K = x_{K-1} + h v_base(t_{K-1}, x_{K-1}): no control in the last step
            step_mat, step_vec = eye + h * m, h * drift0
            slope[i] = m - gain @ step_mat
            alpha[i] = rhs_vec - gain @ step_vec
        else:  # x_{i+1} = (1 - h/(t+s)) x_i + 2h (α_i + B_i x_i) + noise
            damp = 1 - h / (t + h)
            slope[i] = np.linalg.solve(eye + 2 * h * gain, m - damp * gain)
            alpha[i] = np.linalg.solve(eye + 2 * h * gain, rhs_vec)
            step_mat, step_vec = damp * eye + 2 * h * slope[i], 2 * h * alpha[i]
        phi_mat, phi_vec = phi_mat @ step_mat, phi_mat @ step_vec + phi_vec
    return alpha, slope


def picard(
    case: Case, ts: np.ndarray, props: np.ndarray, lam: float, relax: float = 1.0, tol: float = 1e-13, max_iter=2000
):
    """On-policy adjoint matching run as an iteration from the base field: each round moves every grid
    time's field a fraction `relax` of the way to E[target | x_i] under the previous round's field (1: a
    full refit; less: like a small learning rate). Returns the field and the rounds taken (None: no
    convergence)."""
    K, d = ts.shape[0] - 1, case.mean.shape[0]
    h, eye, mu = ts[1] - ts[0], np.eye(d), case.mean
    g2 = np.asarray(fs.shifted_sigma(ts[:-1], h)) ** 2
    ms = [np.asarray(G.velocity_matrix(case.cov, t)) for t in ts[:-1]]
    alpha = np.stack([mu - t * m @ mu for t, m in zip(ts[:-1], ms)])
    slope = np.stack(ms)
    for rounds in range(1, max_iter + 1):
        new_alpha, new_slope = np.zeros_like(alpha), np.zeros_like(slope)
        phi_mat, phi_vec = eye, np.zeros(d)
        for i in range(K - 1, -1, -1):
            t, c = ts[i], g2[i] / (2 * lam)
            if i == K - 1:
                step_mat, step_vec = eye + h * ms[i], h * (mu - t * ms[i] @ mu)
            else:
                step_mat, step_vec = (1 - h / (t + h)) * eye + 2 * h * slope[i], 2 * h * alpha[i]
            phi_mat, phi_vec = phi_mat @ step_mat, phi_mat @ step_vec + phi_vec  # now E[x_K | x_i]
            new_slope[i] = ms[i] - c * props[i] @ case.a @ phi_mat
            new_alpha[i] = mu - t * ms[i] @ mu - c * props[i] @ (case.a @ phi_vec - case.q)
        change = max(np.abs(new_alpha - alpha).max(), np.abs(new_slope - slope).max())
        alpha, slope = alpha + relax * (new_alpha - alpha), slope + relax * (new_slope - slope)
        if not np.isfinite(change):
            break
        if change < tol:
            return alpha, slope, rounds
    return alpha, slope, None


def ode_law(alpha: np.ndarray, slope: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Terminal mean and covariance of the K-step Euler ODE x_{i+1} = x_i + h(α_i + B_i x_i), x_0 ~ N(0, I)."""
    d = alpha.shape[1]
    m, cov = np.zeros(d), np.eye(d)
    for i in range(ts.shape[0] - 1):
        h = ts[i + 1] - ts[i]
        step = np.eye(d) + h * slope[i]
        m, cov = step @ m + h * alpha[i], step @ cov @ step.T
    return m, cov


def exact_field(mean: np.ndarray, cov: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flow-matching field of N(mean, cov) at the grid times, as (α_i, B_i)."""
    ms = np.stack([np.asarray(G.velocity_matrix(cov, t)) for t in ts[:-1]])
    return np.stack([mean - t * m @ mean for t, m in zip(ts[:-1], ms)]), ms


def errors(m, cov, target_mean, target_cov, case: Case, base_euler_cov, field_euler_cov) -> dict:
    """Terminal-law errors against the tilt N(m*, Σ*); the two ratios project the realised change
    from the base's K-step Euler law onto the exact change (1 = the tilt's effect fully realised);
    `kl` is KL(N(m, C) ‖ N(m*, Σ*)); `cov_rel_field` compares C with the covariance the exact tilted
    field reaches on the same grid (the adjoint's share of the covariance error)."""
    shift, spread = target_mean - case.mean, target_cov - case.cov
    size, spread_size = np.linalg.norm(shift), np.linalg.norm(spread)
    return dict(
        mean_err=float(np.linalg.norm(m - target_mean)),
        mean_rel=float(np.linalg.norm(m - target_mean) / size) if size > 0 else None,
        cov_err=float(np.linalg.norm(cov - target_cov)),
        cov_rel=float(np.linalg.norm(cov - target_cov) / np.linalg.norm(case.cov)),
        shift_ratio=float((m - case.mean) @ shift / size**2) if size > 0 else None,
        cov_change_ratio=float(np.sum((cov - base_euler_cov) * spread) / spread_size**2) if spread_size > 0 else None,
        cov_rel_field=float(np.linalg.norm(cov - field_euler_cov) / np.linalg.norm(case.cov)),
        kl=float(G.kl(m, cov, target_mean, target_cov)),
    )


class AffineField(eqx.Module):
    """v(t_i, x) = α_i + B_i x at the grid times of a uniform K-step grid (batched x)."""

    alpha: jax.Array
    slope: jax.Array

    def __call__(self, t, x, args=None):
        k = self.alpha.shape[0]
        i = jnp.clip(jnp.round(t * k).astype(int), 0, k - 1)
        return self.alpha[i] + x @ self.slope[i].T


def monte_carlo_check(case: Case, budget: float, k: int, scheme: str, batch: int, seed: int = 0) -> dict:
    """Sample the fixed point's training paths with `flowsoc.sample_sde`, compute adjoints with
    `flowsoc.lean_adjoint`, refit the regression target by least squares per grid time, and compare the
    refit (and its policy's terminal law) with the exact fixed point: z = |difference| / standard error
    of each coefficient (at t_{K-1} the target is an affine function of x_{K-1}: there, the difference)."""
    ts_j = fs.uniform_grid(k)
    ts, lam = np.asarray(ts_j), case.lam(budget)
    base = G.GaussianVelocity(case.mean, case.cov)
    base_time, final = SCHEMES[scheme]
    alpha, slope = fixed_point(case, ts, adjoint_propagators(case, ts, base_time, final), lam)
    field = AffineField(jnp.asarray(alpha), jnp.asarray(slope))
    kx, kb = jr.split(jr.key(seed))
    x0 = jr.normal(kx, (batch, case.mean.shape[0]))
    xs = fs.sample_sde(field, x0, ts_j, kb, final_field=base)
    terminal = xs[-1] @ case.a.T - case.q  # ã_K = -∇r(x_K)
    adj = jax.vmap(
        lambda x, a: fs.lean_adjoint(base, x, ts_j, a, base_time=base_time, final_ode_step=final),
        in_axes=(1, 0),
        out_axes=1,
    )(xs, terminal)
    g2 = np.asarray(fs.shifted_sigma(ts[:-1], ts[1])) ** 2
    fit_alpha, fit_slope, z_max, det_diff = np.zeros_like(alpha), np.zeros_like(slope), 0.0, 0.0
    for i in range(k):
        x = np.asarray(xs[i])
        target = np.asarray(base(ts[i], x)) - g2[i] / (2 * lam) * np.asarray(adj[i])
        design = np.concatenate([np.ones((batch, 1)), x], axis=1)
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        resid_var = np.var(target - design @ coef, axis=0, ddof=design.shape[1])
        se = np.sqrt(np.outer(np.diag(np.linalg.inv(design.T @ design)), resid_var))
        diff = np.abs(coef - np.concatenate([alpha[i][None], slope[i].T], axis=0))
        noisy = resid_var > 1e-20 * np.var(target, axis=0)  # at t_{K-1} the target is a function of x_i
        z_max = max(z_max, float(np.max(diff[:, noisy] / se[:, noisy], initial=0.0)))
        det_diff = max(det_diff, float(np.max(diff[:, ~noisy], initial=0.0)))
        fit_alpha[i], fit_slope[i] = coef[0], coef[1:].T
    target_mean, target_cov = case.tilt(lam)
    refs = target_mean, target_cov, case, ode_law(*exact_field(case.mean, case.cov, ts), ts)[1]
    refs += (ode_law(*exact_field(target_mean, target_cov, ts), ts)[1],)
    exact_err = errors(*ode_law(alpha, slope, ts), *refs)
    mc_err = errors(*ode_law(fit_alpha, fit_slope, ts), *refs)
    return dict(
        case=case.name,
        budget=budget,
        K=k,
        scheme=scheme,
        batch=batch,
        coefficients=k * (1 + case.mean.shape[0]) * case.mean.shape[0],
        max_abs_coef_diff=float(max(np.abs(fit_alpha - alpha).max(), np.abs(fit_slope - slope).max())),
        max_z=z_max,
        max_abs_diff_where_deterministic=det_diff,
        exact=exact_err,
        monte_carlo=mc_err,
    )


def run(cases: list[Case]) -> list[dict]:
    rows = []
    for k in KS:
        ts = np.asarray(fs.uniform_grid(k))
        for case in cases:
            props = {n: adjoint_propagators(case, ts, *SCHEMES[n]) for n in SCHEMES}
            # an adjoint step i >= 1 with a non-positive eigenvalue: the grid is too coarse for the base (at i = 0
            # the x/(t+s) term alone gives h/(t_0 + s) = 1, for every scheme and base)
            low = {n: float(np.linalg.eigvals(adjoint_steps(case, ts, *SCHEMES[n])[1:]).real.min()) for n in SCHEMES}
            base_m, base_c = ode_law(*exact_field(case.mean, case.cov, ts), ts)
            base_ref = errors(base_m, base_c, case.mean, case.cov, case, base_c, base_c)
            for budget in BUDGETS:
                lam = case.lam(budget)
                target_mean, target_cov = case.tilt(lam)
                row = dict(case=case.name, kind=case.kind, dim=case.mean.shape[0], budget=budget, lam=lam, K=k)
                row["min_std"] = float(np.sqrt(np.linalg.eigvalsh(case.cov).min()))
                row["target"] = dict(mean=target_mean.tolist(), cov=target_cov.tolist())
                row["tilt_shift"] = float(np.linalg.norm(target_mean - case.mean))
                row["base_euler"] = base_ref
                tilt_m, tilt_c = ode_law(*exact_field(target_mean, target_cov, ts), ts)
                refs = target_mean, target_cov, case, base_c, tilt_c
                row["tilt_field_euler"] = errors(tilt_m, tilt_c, *refs)
                row["schemes"] = {}
                for name, p in props.items():
                    m, c = ode_law(*fixed_point(case, ts, p, lam), ts)
                    row["schemes"][name] = errors(m, c, *refs)
                    row["schemes"][name]["min_step_eigenvalue"] = low[name]
                    row["schemes"][name]["adjoint_flips_sign"] = low[name] <= 0
                rows.append(row)
    return rows


def picard_check(cases: list[Case]) -> list[dict]:
    """The on-policy iteration (from the base field) converges to the backward-solved fixed point."""
    out = []
    for case in cases:
        if case.kind != "quadratic":
            continue
        for k in (10, 40):
            ts = np.asarray(fs.uniform_grid(k))
            for scheme in ("grid", "next", "grid+final"):
                props = adjoint_propagators(case, ts, *SCHEMES[scheme])
                lam = case.lam(BUDGETS[-1])
                a1, b1 = fixed_point(case, ts, props, lam)
                for relax in (1.0, 0.5, 0.2, 0.1):
                    with np.errstate(all="ignore"):
                        a2, b2, rounds = picard(case, ts, props, lam, relax)
                    if rounds is not None:
                        break
                diff = max(np.abs(a1 - a2).max(), np.abs(b1 - b2).max())
                out.append(
                    dict(case=case.name, K=k, scheme=scheme, relax=relax, rounds=rounds, max_abs_diff=float(diff))
                )
    return out


def library_check(cases: list[Case], k: int = 10) -> list[dict]:
    """The propagators used here against `flowsoc.lean_adjoint`'s, per scheme and base dimension."""
    out = []
    ts_j = fs.uniform_grid(k)
    for case in (next(c for c in cases if c.mean.shape[0] == d) for d in (1, 2)):
        base = G.GaussianVelocity(case.mean, case.cov)
        for name, (base_time, final) in SCHEMES.items():
            lib = np.asarray(library_propagators(base, ts_j, base_time, final))
            diff = np.abs(lib - adjoint_propagators(case, np.asarray(ts_j), base_time, final)).max()
            out.append(dict(case=case.name, K=k, scheme=name, max_abs_diff=float(diff)))
    return out


def fmt(x, width=10, digits=3):
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}g}"


METRICS = {
    "mean_rel": "relative mean error ‖m − m*‖/‖m* − μ‖ (the tilt field's Euler mean is exact)",
    "shift_ratio": "realised / exact mean shift (m − μ)·(m* − μ)/‖m* − μ‖²",
    "cov_rel": "relative covariance error ‖C − Σ*‖_F/‖Σ‖_F (base: the base's own Euler ODE against Σ)",
    "cov_rel_field": "‖C − C_field‖_F/‖Σ‖_F, C_field the exact tilted field's covariance on the same grid",
    "kl": "KL(policy's terminal law ‖ tilt)",
    "cov_change_ratio": (
        "realised / exact covariance change ⟨C − C_base, Σ* − Σ⟩_F/‖Σ* − Σ‖²_F (C_base: the base's Euler law)"
    ),
}


def print_tables(rows: list[dict]) -> None:
    names = list(SCHEMES)
    print("* an adjoint step I + hJ_i (i >= 1) has a non-positive eigenvalue: the grid is too coarse for the base")
    head = f"{'case':<24} {'ε':>5} {'λ':>7} {'K':>3} " + " ".join(f"{n:>10}" for n in names)
    for metric, title in METRICS.items():
        print(f"\n{title}\n{head} {'tilt-field':>10} {'base':>10}")
        for r in rows:
            if r["schemes"]["grid"][metric] is None:
                continue
            if r["kind"] == "linear" and metric.startswith("cov_rel") and r["budget"] != BUDGETS[0]:
                continue  # the same row again: a linear tilt leaves the covariance alone
            vals = " ".join(
                fmt(r["schemes"][n][metric], 9) + ("*" if r["schemes"][n]["adjoint_flips_sign"] else " ") for n in names
            )
            base = fmt(r["base_euler"][metric]) if metric == "cov_rel" else f"{'':>10}"
            ref = fmt(r["tilt_field_euler"][metric])
            print(f"{r['case']:<24} {r['budget']:>5} {r['lam']:>7.3g} {r['K']:>3} {vals} {ref} {base}")


SUMMARY_METRICS = ("mean_rel", "cov_rel", "cov_rel_field", "kl")
GROUPS = {
    "1-D, s ≥ 0.5": lambda r: r["dim"] == 1 and r["min_std"] >= 0.5,
    "1-D, s ≤ 0.2": lambda r: r["dim"] == 1 and r["min_std"] <= 0.2,
    "2-D": lambda r: r["dim"] == 2,
    "all": lambda r: True,
}


def summary(rows: list[dict]) -> dict:
    """Per group of bases, K and metric, over all rows where the metric is defined and differs between
    schemes: the geometric mean of each scheme's error, how many rows each scheme is best on, and how many
    rows have an adjoint step with a non-positive eigenvalue for that scheme."""
    out = {}
    for group, member in GROUPS.items():
        out[group] = {}
        for k in KS:
            entry = {}
            for metric in SUMMARY_METRICS:
                use = [r for r in rows if r["K"] == k and member(r) and r["schemes"]["grid"][metric] is not None]
                if metric.startswith("cov_rel"):
                    use = [r for r in use if r["kind"] != "linear"]  # a linear tilt leaves C to the sampler: ties
                geo = {n: float(np.exp(np.mean([np.log(r["schemes"][n][metric]) for r in use]))) for n in SCHEMES}
                best = {n: 0 for n in SCHEMES}
                for r in use:
                    best[min(SCHEMES, key=lambda n: r["schemes"][n][metric])] += 1
                if metric in ("cov_rel", "kl"):
                    geo["tilt-field"] = float(np.exp(np.mean([np.log(r["tilt_field_euler"][metric]) for r in use])))
                flips = {n: sum(r["schemes"][n]["adjoint_flips_sign"] for r in use) for n in SCHEMES}
                entry[metric] = dict(geometric_mean=geo, best_count=best, sign_flips=flips, rows=len(use))
            out[group][str(k)] = entry
    return out


def print_summary(summ: dict) -> None:
    names = list(SCHEMES)
    for group, by_k in summ.items():
        for metric in SUMMARY_METRICS:
            print(f"\n{group}: geometric mean of {metric} [rows where best, rows with a sign flip*]")
            print(f"{'K':>3} {'rows':>4} " + " ".join(f"{n:>18}" for n in names) + f" {'tilt-field':>10}")
            for k, entry in by_k.items():
                e = entry[metric]
                cells = " ".join(
                    f"{e['geometric_mean'][n]:>9.3g} [{e['best_count'][n]:>2}, {e['sign_flips'][n]:>2}*]" for n in names
                )
                print(f"{k:>3} {e['rows']:>4} {cells} {fmt(e['geometric_mean'].get('tilt-field'))}")


DOC_SCHEMES = ("grid", "next", "mid", "grid+final", "mid+final")  # next+final equals next here (∇v(1, x) = I)
DOC_CASES = ("2d s=(1.0,0.3) quadratic", "1d s=1.0 linear", "1d s=0.2 quadratic", "1d s=0.1 linear")


def markdown(rows: list[dict], summ: dict) -> str:
    """The tables of the documentation: per representative case (ε = 0.5), K × scheme with the relative mean
    and covariance errors; then the geometric means per group of bases."""
    out = []
    head = "| K | " + " | ".join(f"`{n}`" for n in DOC_SCHEMES) + " | base's Euler (cov) | tilt field, Euler (cov) |"
    rule = "|---:|" + "---:|" * (len(DOC_SCHEMES) + 2)
    for name in DOC_CASES:
        sel = [r for r in rows if r["case"] == name and r["budget"] == BUDGETS[-1]]
        title = name.replace("1d s=", "1-D, s = ").replace("2d s=", "2-D, principal stds ").replace(",0.", ", 0.")
        title = title.replace(" linear", ", linear reward").replace(" quadratic", ", quadratic reward")
        out += [f"**{title}**, ε = {BUDGETS[-1]} (λ = {sel[0]['lam']:.3g}): relative mean error / covariance error", ""]
        out += [head, rule]
        for r in sel:
            cells = []
            for n in DOC_SCHEMES:
                e = r["schemes"][n]
                cells.append(f"{e['mean_rel']:.3f} / {e['cov_rel']:.3f}" + (" †" if e["adjoint_flips_sign"] else ""))
            refs = f"{r['base_euler']['cov_rel']:.3f} | {r['tilt_field_euler']['cov_rel']:.3f}"
            out.append(f"| {r['K']} | " + " | ".join(cells) + f" | {refs} |")
        out.append("")
    for metric, what in (("mean_rel", "relative mean error"), ("kl", "KL(policy ‖ tilt)")):
        out += [f"Geometric mean of the {what} over all cases and both ε", ""]
        out.append("| bases | K | " + " | ".join(f"`{n}`" for n in DOC_SCHEMES) + " | tilt field, Euler |")
        out.append("|---|---:|" + "---:|" * (len(DOC_SCHEMES) + 1))
        for group, by_k in summ.items():
            for k, entry in by_k.items():
                e = entry[metric]
                cells = " | ".join(f"{e['geometric_mean'][n]:.3g}" for n in DOC_SCHEMES)
                ref = e["geometric_mean"].get("tilt-field")
                ref = "0" if ref is None else f"{ref:.3g}"
                out.append(f"| {group} ({e['rows']} rows) | {k} | {cells} | {ref} |")
        out.append("")
    return "\n".join(out)


def dump(result: dict) -> str:
    """JSON with one line per row (the rows are most of the file)."""
    head = json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1, ensure_ascii=False)
    rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in result["rows"])
    return head[:-2] + ',\n "rows": [\n  ' + rows + "\n ]\n}\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-check", action="store_true", help="skip the Monte Carlo and iteration checks")
    parser.add_argument("--all-rows", action="store_true", help="print every K's rows (default: K = 10)")
    parser.add_argument("--markdown", action="store_true", help="also print the documentation's tables")
    parser.add_argument("--batch", type=int, default=100_000, help="paths in the Monte Carlo check")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "adjoint_time.json"))
    args = parser.parse_args()

    start = time.perf_counter()
    cases = make_cases()
    rows = run(cases)
    print_tables([r for r in rows if args.all_rows or r["K"] == 10])
    summ = summary(rows)
    print_summary(summ)
    if args.markdown:
        print("\n" + markdown(rows, summ))
    checks = {}
    if not args.no_check:
        checks["library"] = library_check(cases)
        worst = max(c["max_abs_diff"] for c in checks["library"])
        print(f"\nadjoint propagators vs flowsoc.lean_adjoint (K=10, all schemes, d=1 and 2): max |diff| {worst:.1e}")
        checks["picard"] = picard_check(cases)
        print("\non-policy iteration from the base field vs the backward-solved fixed point:")
        for c in checks["picard"]:
            print(
                f"  {c['case']:<24} K={c['K']:>2} {c['scheme']:<5} relaxation {c['relax']:<4} {c['rounds']} rounds, "
                f"max |diff| {c['max_abs_diff']:.1e}"
            )
        quad2d = next(c for c in cases if c.name == "2d s=(1.0,0.3) quadratic")
        checks["monte_carlo"] = [
            monte_carlo_check(quad2d, BUDGETS[-1], 10, scheme, args.batch, seed)
            for seed, scheme in enumerate(("grid", "next", "mid+final"))
        ]
        print(f"\nMonte Carlo refit of the fixed point ({args.batch} paths, flowsoc.sample_sde + lean_adjoint):")
        for c in checks["monte_carlo"]:
            print(
                f"  {c['case']} ε={c['budget']} K={c['K']} {c['scheme']:<5} max z {c['max_z']:.2f} "
                f"over {c['coefficients']} coefficients (|diff| {c['max_abs_diff_where_deterministic']:.0e} where "
                "the target is deterministic), "
                f"mean_rel exact {c['exact']['mean_rel']:.4f} / MC refit {c['monte_carlo']['mean_rel']:.4f}, "
                f"cov_rel exact {c['exact']['cov_rel']:.4f} / MC refit {c['monte_carlo']['cov_rel']:.4f}"
            )
    result = dict(
        description=__doc__.splitlines()[0],
        command="python benchmarks/adjoint_time.py",
        grids=list(KS),
        schemes={n: dict(base_time=b, final_ode_step=f) for n, (b, f) in SCHEMES.items()},
        budgets=list(BUDGETS),
        cases=[
            dict(name=c.name, mean=c.mean.tolist(), cov=c.cov.tolist(), a=c.a.tolist(), q=c.q.tolist()) for c in cases
        ],
        rows=rows,
        summary=summ,
        checks=checks,
        seconds=time.perf_counter() - start,
        platform=dict(python=platform.python_version(), jax=jax.__version__, backend=jax.default_backend()),
    )
    out = pathlib.Path(args.out)
    result = json.loads(json.dumps(result), parse_float=lambda x: float(f"{float(x):.6g}"))  # 6 significant digits
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump(result))
    print(f"\nwrote {out} ({result['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
