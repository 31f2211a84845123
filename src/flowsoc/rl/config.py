"""Typed, frozen configuration of the flow actor-critic agents (QAM, TRQAM, BAM)."""

import dataclasses

import numpy as np

from .._trust_region import DualDescent


SMALL_NETWORKS = dict(actor_hidden=(128, 128), critic_hidden=(128, 128), num_critics=2)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Hyperparameters shared by [`flowsoc.rl.QAM`][], [`flowsoc.rl.TRQAM`][] and [`flowsoc.rl.BAM`][].
    Defaults are the official TRQAM/QAM codes'; `small()` is a CPU-sized preset.
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
    kl_budget: float = 1.0
    """TRQAM: the budget ε on the path KL per action step of the chunk."""
    dual_step_size: float = 0.01
    """TRQAM: the step size η of the dual update on λ."""
    dual_ema: float = 0.1
    """TRQAM: the rate ρ of the running KL average."""
    dual_clip_coef: float = 2.0
    """TRQAM: the KL estimate is clipped at `dual_clip_coef * kl_budget` before averaging."""
    lam_min: float = 0.01
    """TRQAM: lower end of the projection interval of λ."""
    lam_max: float = 100.0
    """TRQAM: upper end of the projection interval of λ."""
    lam_init: float = 1.0
    """TRQAM: the initial λ."""
    lam_scale: float = 3.0
    """TRQAM: the fixed multiplier inside σ, σ = g/√(`lam_scale` · λ)."""
    dual_log_space: bool = False
    """TRQAM: take relative dual steps in log λ (see [`flowsoc.DualDescent`][])."""
    dual_update: bool = True
    """TRQAM: `False` switches the dual step off, keeping λ at `lam_init`."""
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
    bam_running_cost_scale: float | None = None
    r"""BAM: the factor $c$ in its loss $c\,\widehat{\rm KL}_{\rm noisy} - \tau\,Q$ (the running cost over the noisy
    steps); `None` is the official BAM's $1/h$ (`flow_steps`), the running cost summed without the step size."""

    def __post_init__(self):
        ints = ("horizon", "num_critics", "flow_steps")
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
        scale = self.bam_running_cost_scale
        if scale is not None and not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"AgentConfig: bam_running_cost_scale must be > 0 or None, got {scale}.")
        if self.adjoint_base_time not in ("next", "grid", "mid"):
            raise ValueError(
                f"AgentConfig: adjoint_base_time must be 'next', 'grid' or 'mid', got {self.adjoint_base_time!r}."
            )
        if any(int(h) < 1 for h in self.actor_hidden + self.critic_hidden):
            raise ValueError("AgentConfig: hidden sizes must be positive.")
        self.dual()  # validates the trust-region settings

    def dual(self) -> DualDescent:
        """TRQAM's [`flowsoc.DualDescent`][] for these settings."""
        return DualDescent.from_settings(self)

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
        `cube-double-play-singletask-task2-v0` or `cube-double`) and `agent` (`trqam`, `qam`,
        `bam`) under `protocol`: `None` for the paper that ran the agent (QAM paper for `qam`/`bam`,
        TRQAM paper for `trqam`), or `"qam"` / `"trqam"`. See [`flowsoc.rl.presets.paper_preset`][]
        (which also gives the sparse-reward choice, the BC pre-training steps and each value's source)."""
        from .presets import paper_preset

        settings = paper_preset(env, agent, protocol).agent_settings()
        settings.update(overrides)
        return cls(**settings)

    def replace(self, **changes) -> "AgentConfig":
        return dataclasses.replace(self, **changes)
