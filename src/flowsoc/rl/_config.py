"""Typed, frozen configuration of the flow actor-critic agents (QAM, QAM-E, QAM-F, TRQAM, SQAM, BAM)."""

import dataclasses

import numpy as np

from .._trust_region import DualDescent


SMALL_NETWORKS = dict(actor_hidden=(128, 128), critic_hidden=(128, 128), num_critics=2)
TRQAM_TRUST_REGION = DualDescent(kl_budget=1.0, lam_scale=3.0)
"""The official TRQAM code's trust region: ε = 1, η = 0.01, ρ = 0.1, clip 2ε, λ₀ = 1 in [0.01, 100], and the
fixed multiplier 3 inside σ."""


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Hyperparameters shared by the agents of `flowsoc.rl` ([`flowsoc.rl.QAM`][], [`flowsoc.rl.TRQAM`][],
    [`flowsoc.rl.SQAM`][], ...); a field marked with an agent's name is read by that agent's parts only.
    Defaults are the official TRQAM/QAM codes'; `small()` is a CPU-sized preset. (SQAM's published default budget
    is ε = 0.5: `config.with_kl_budget(0.5)`, as its presets `AgentConfig.paper(env, "sqam")` set.)
    """

    horizon: int = 5
    """Action chunk length $H$ (5 for manipulation, 1 for navigation); the flows and the critic act on flattened chunks
    of $H$ actions."""
    discount: float = 0.99
    r"""γ of the chunked TD target, applied as $\gamma^H$ per chunk."""
    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Hidden widths of the behaviour and policy flows."""
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)
    """Hidden widths of each critic member."""
    actor_layer_norm: bool = False
    """LayerNorm in the flows' hidden layers (on for the largest domains)."""
    critic_layer_norm: bool = True
    """LayerNorm in the critic's hidden layers."""
    num_critics: int = 10
    """Size $K$ of the critic ensemble."""
    pessimism: float = 0.5
    r"""ρ in the target value $\mathrm{mean}_k - \rho\,\mathrm{std}_k$ of the target ensemble."""
    flow_steps: int = 10
    """Euler steps of the SDE, the lean adjoint and the ODE sampler (at least 2: the last step is a noiseless base
    step)."""
    learning_rate: float = 3e-4
    """Adam's learning rate (one optimiser over the critic and both flows)."""
    grad_clip: float | None = 1.0
    """Global-norm clip over all parameters; `None` switches it off."""
    target_ema: float = 0.005
    """Polyak rate of the target critic and of the base flow (the EMA of the behaviour flow)."""
    inv_temp: float = 1.0
    """QAM and BAM: the inverse temperature τ; λ = 1/τ."""
    trust_region: DualDescent = TRQAM_TRUST_REGION
    """TRQAM: projected dual descent on λ ([`flowsoc.DualDescent`][]) holding the path KL per action step of
    the chunk at `trust_region.kl_budget`. The official code's settings, with its fixed multiplier 3 inside σ,
    σ = g/√(3λ) (`lam_scale=3`): change one with
    `config.replace(trust_region=dataclasses.replace(config.trust_region, kl_budget=0.5))` or
    [`AgentConfig.with_kl_budget`][flowsoc.rl.AgentConfig.with_kl_budget]."""
    dual_update: bool = True
    """TRQAM: `False` switches the dual step off, keeping λ at `trust_region.lam_init`."""
    adjoint_base_time: str = "next"
    r"""The base network's time input in the lean adjoint's step from $t_{i+1}$ back to $t_i$ (state $x_i$):
    `"next"` ($t_i + h$, the official QAM and TRQAM codes), `"grid"` ($t_i$) or `"mid"`; see
    [`flowsoc.lean_adjoint`][]."""
    adjoint_final_ode_step: bool = False
    """Use the Jacobian of the sampler's noiseless last step (the base's ODE step) on the adjoint's last cell
    instead of the SDE drift's (the official codes use the drift's)."""
    clip_adjoint_action: bool = True
    """Take the adjoint boundary gradient at `clip(a, -1, 1)`, as the reference codes do (BAM's reward is
    taken at the unclipped action, as in the official BAM)."""
    edit_scale: float = 0.1
    """QAM-E: the acting action is `clip(ODE_policy(z) + edit_scale · e)` with `e` from the edit actor (0: no edit,
    the flow's ODE acts, as in the official code)."""
    edit_target_entropy_multiplier: float = 0.5
    """QAM-E: the edit actor's target entropy is `-edit_target_entropy_multiplier` times the chunk's width."""
    fql_alpha: float = 30.0
    """QAM-F: the weight of the distillation term `mean (ODE_policy(z) − μ(s, z))²` in the one-step policy's loss
    (0: no one-step policy, the flow's ODE acts, as in the official code)."""
    bridge_states: int = 10
    r"""SQAM: the number $K_b$ of bridge states $x_\tau = (1-\tau)\varepsilon + \tau\hat a$, $\tau = k/K_b$, per
    sample."""
    value_penalty: float = 0.3
    r"""SQAM: the weight $c$ of the critic's value penalty
    $c\,\mathrm{mean}_b[\mathrm{mean}_k Q_k(s, \mathrm{clip}\,\hat a) - \mathrm{mean}_k Q_k(s, a_{\rm data})]$
    (0: none)."""
    bam_running_cost_scale: float | None = None
    r"""BAM: the factor $c$ in its loss $c\,\widehat{\rm KL}_{\rm noisy} - \tau\,Q$ (the running cost over the noisy
    steps); `None` is the official BAM's $1/h$ (`flow_steps`), the running cost summed without the step size."""

    def __post_init__(self):
        ints = ("horizon", "num_critics", "flow_steps", "bridge_states")
        for name in ints:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AgentConfig: {name} must be a positive integer, got {value!r}.")
        if self.flow_steps < 2:
            raise ValueError("AgentConfig: flow_steps must be >= 2 (the last step is a noiseless base step).")
        if not 0 <= self.discount <= 1:
            raise ValueError(f"AgentConfig: discount must lie in [0, 1], got {self.discount}.")
        if not 0 < self.target_ema <= 1:
            raise ValueError(f"AgentConfig: target_ema must lie in (0, 1], got {self.target_ema}.")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"AgentConfig: learning_rate must be > 0, got {self.learning_rate}.")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"AgentConfig: grad_clip must be > 0 or None, got {self.grad_clip}.")
        if not (np.isfinite(self.inv_temp) and self.inv_temp > 0):
            raise ValueError(f"AgentConfig: inv_temp must be > 0, got {self.inv_temp}.")
        if not (np.isfinite(self.pessimism) and self.pessimism >= 0):
            raise ValueError(f"AgentConfig: pessimism must be a finite number >= 0, got {self.pessimism}.")
        for name in ("edit_scale", "fql_alpha", "edit_target_entropy_multiplier", "value_penalty"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"AgentConfig: {name} must be a finite number >= 0, got {value}.")
        scale = self.bam_running_cost_scale
        if scale is not None and not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"AgentConfig: bam_running_cost_scale must be > 0 or None, got {scale}.")
        if self.adjoint_base_time not in ("next", "grid", "mid"):
            raise ValueError(
                f"AgentConfig: adjoint_base_time must be 'next', 'grid' or 'mid', got {self.adjoint_base_time!r}."
            )
        if any(int(h) < 1 for h in self.actor_hidden + self.critic_hidden):
            raise ValueError("AgentConfig: hidden sizes must be positive.")
        if not isinstance(self.trust_region, DualDescent):
            kind = type(self.trust_region).__name__
            raise TypeError(f"AgentConfig: trust_region must be a flowsoc.DualDescent, got {kind}.")

    def with_kl_budget(self, kl_budget: float) -> "AgentConfig":
        """This configuration with TRQAM's budget ε set to `kl_budget` (the rest of the trust region kept)."""
        return self.replace(trust_region=dataclasses.replace(self.trust_region, kl_budget=kl_budget))

    @classmethod
    def small(cls, **overrides) -> "AgentConfig":
        """A CPU-sized preset: 2x128 flows and a 2-member 2x128 critic (`SMALL_NETWORKS`),
        everything else official. About 15x cheaper per update than the paper size."""
        settings = dict(SMALL_NETWORKS)
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def paper(cls, env: str, agent: str = "trqam", protocol: str | None = None, **overrides) -> "AgentConfig":
        """The official runs' settings for OGBench dataset or domain `env` (e.g.
        `cube-double-play-singletask-task2-v0` or `cube-double`) and `agent` (`trqam`, `qam`, `bam`, `qame`,
        `qamf`, `sqam`) under `protocol`: `None` for the paper that ran the agent (QAM paper for
        `qam`/`bam`/`qame`/`qamf`, TRQAM paper for `trqam`/`sqam`), or `"qam"` / `"trqam"`. See
        [`flowsoc.rl.ogbench.paper_preset`][]
        (which also gives the sparse-reward choice, the BC pre-training steps and each value's source)."""
        from .ogbench._presets import paper_preset

        settings = paper_preset(env, agent, protocol).agent_settings()
        settings.update(overrides)
        return cls(**settings)

    def replace(self, **changes) -> "AgentConfig":
        return dataclasses.replace(self, **changes)
