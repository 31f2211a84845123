r"""Flow actor-critic agents on the SOC core: QAM, QAM-E, QAM-F, TRQAM, SQAM and the BAM ablation.

One update skeleton (the official TRQAM/QAM codes):

- a behaviour flow $f_\beta$ trained by flow matching on the data's action chunks, whose EMA
  $\bar f_\beta$ is the base of the SOC problem;
- a separate fine-tuned flow $f_\theta$ (the policy) trained towards $\pi^* \propto \bar\pi_\beta\,e^{Q/\lambda}$:
  sample the memoryless SDE of $f_\theta$ ([`flowsoc.sample_sde`][]), solve the lean adjoint through
  $\bar f_\beta$ from $\tilde a(1) = -\nabla_a \overline{Q}(s, \mathrm{clip}(a))$, the target critic's
  ensemble mean ([`flowsoc.lean_adjoint`][]), and regress with [`flowsoc.adjoint_matching_loss`][]
  at σ = g/√λ;
- a critic ensemble trained on the pessimistic chunked TD target
  $y = R_H + \gamma^H m_H\,(\mathrm{mean}_k - \rho\,\mathrm{std}_k)\,\bar Q_k(s', a')$ with $a'$ from the
  policy's ODE;
- one optax chain (global-norm clip, Adam) over all three, EMA targets from the pre-update
  parameters, and for TRQAM one dual step on λ from the path KL per action step.

An agent is a named combination of parts, each an `eqx.Module` with one job (abstract-or-final, as in
Equinox), passed to the one skeleton rather than overriding it:

| agent | what sets λ | what trains the policy flow | what acts |
|---|---|---|---|
| `QAM` | `FixedTemperature`: λ = 1/τ | `LeanAdjointMatching(times_inv_temp=True)` | `FlowODE` |
| `TRQAM` | `TrustRegionTemperature`: [`flowsoc.DualDescent`][] | `LeanAdjointMatching()` | `FlowODE` |
| `BAM` | `FixedTemperature` | `BasicAdjoint()`: [`flowsoc.soc_objective`][] through the SDE | `FlowODE` |
| `QAME` | `FixedTemperature` | `LeanAdjointMatching(times_inv_temp=True)` | `EditedFlow`: ODE + bounded edit |
| `QAMF` | `FixedTemperature` | `LeanAdjointMatching(times_inv_temp=True)` | `OneStepDistillation` |
| `SQAM` | `TrustRegionTemperature` | `ScalarAdjointMatching()`: bridge states, critic value penalty | `FlowODE` |

The parts are `AbstractTemperature`, `AbstractPolicyObjective` and `AbstractActor` (the acting part's own
parameters, if any, are trained beside the others in the one optimiser).
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._kl import path_kl
from .._losses import adjoint_matching_on_sde_path, soc_objective
from .._paths import result_dtype, uniform_grid
from .._scalar_adjoint import scalar_adjoint_matching_loss
from .._sde import sample_ode, sample_sde
from .._trust_region import DualState
from ._buffers import ChunkBatch
from ._config import AgentConfig
from ._networks import CriticEnsemble, ema_update, OneStepPolicy, TanhGaussian, VelocityMLP
from ._pretrain import behaviour_flow_loss, clipped_adam


def _frozen(module):
    """`module` with its array leaves behind `stop_gradient`."""
    arrays, static = eqx.partition(module, eqx.is_array)
    return eqx.combine(jax.lax.stop_gradient(arrays), static)


def check_same_structure(flow: VelocityMLP, like: VelocityMLP, what: str) -> None:
    """Raise `ValueError` unless `flow` has the structure and array shapes of `like` (naming both)."""
    shape = lambda m: jax.tree.map(lambda x: (x.shape, x.dtype), eqx.filter(m, eqx.is_array))  # noqa: E731
    same = jax.tree.structure(flow) == jax.tree.structure(like) and shape(flow) == shape(like)
    if not same:
        raise ValueError(
            f"{what}: the flow's network ({_describe(flow)}) does not match this agent's configuration "
            f"({_describe(like)}); pre-train with the same observation width, chunk length and actor_hidden."
        )


def _describe(flow: VelocityMLP) -> str:
    return (
        f"observation {flow.obs_dim}, flattened chunk {flow.action_dim}, hidden {tuple(flow.mlp.hidden_sizes)}, "
        f"layer_norm {flow.mlp.layer_norm}"
    )


def _optimizer(config: AgentConfig) -> optax.GradientTransformation:
    return clipped_adam(config.learning_rate, config.grad_clip)


# ---------------------------------------------------------------------------------- the parts


class AbstractTemperature(eqx.Module):
    """What sets λ, the weight of the KL to the base (σ = g/√λ), and how it moves after a gradient step."""

    @abc.abstractmethod
    def lam(self, config: AgentConfig, dual: DualState) -> Float[Array, ""]:
        """The λ inside σ = g/√λ."""

    @abc.abstractmethod
    def update(self, config: AgentConfig, dual: DualState, kl: Float[Array, ""]) -> DualState:
        """The dual state after a gradient step whose policy had path KL `kl` per action step."""

    def kl_budget(self, config: AgentConfig) -> float | None:
        """The path-KL budget this temperature holds, if any (drawn on learning curves)."""
        return None


class FixedTemperature(AbstractTemperature):
    """λ = 1/τ, fixed (`config.inv_temp` = τ; QAM, BAM)."""

    def lam(self, config, dual):
        return jnp.asarray(1.0 / config.inv_temp)

    def update(self, config, dual, kl):
        return dual


class TrustRegionTemperature(AbstractTemperature):
    """λ moved by projected dual descent so that the path KL per action step sits at its budget
    (`config.trust_region`, a [`flowsoc.DualDescent`][]; `config.dual_update=False` holds λ; TRQAM)."""

    def lam(self, config, dual):
        return config.trust_region.effective_lam(dual)

    def update(self, config, dual, kl):
        if not config.dual_update:
            return dual
        return config.trust_region.update(dual, jax.lax.stop_gradient(kl))

    def kl_budget(self, config):
        return config.trust_region.kl_budget


class AbstractPolicyObjective(eqx.Module):
    """What trains the policy flow: its loss on a batch, and its metrics, which include the path KL `kl` to the
    base per action step (pre-update parameters, no gradient)."""

    @abc.abstractmethod
    def loss(
        self, agent: "AbstractFlowAgent", policy: VelocityMLP, batch: ChunkBatch, key: PRNGKeyArray
    ) -> tuple[Float[Array, ""], dict[str, Array]]: ...

    def critic_penalty(
        self,
        agent: "AbstractFlowAgent",
        critic: CriticEnsemble,
        policy: VelocityMLP,
        batch: ChunkBatch,
        key: PRNGKeyArray,
    ) -> tuple[Float[Array, ""], dict[str, Array]]:
        """A term added to the critic's loss (differentiated with respect to `critic`; 0 unless the objective
        names one). `key` is the one `loss` receives, so both can draw the same policy samples."""
        return jnp.zeros((), batch.observations.dtype), {}


class LeanAdjointMatching(AbstractPolicyObjective):
    r"""Adjoint matching of the policy towards $\bar\pi_\beta e^{Q/\lambda}$ (QAM, TRQAM): the memoryless SDE of
    the policy, the lean adjoint through the base from $-\nabla_a \overline Q$, the regression at σ = g/√λ.

    `times_inv_temp=True` multiplies the loss by τ = `config.inv_temp`: the official QAM code's scale, σ = g
    and the adjoint's boundary multiplied by τ,
    $\sum_i \lVert 2(v_\theta - \bar v_\beta)/g_i + g_i\,\tau\,\tilde a_i \rVert^2$, which is τ times the loss at
    σ = g/√λ, λ = 1/τ (same minimiser; the scale matters through the global-norm clip shared with the critic and
    the behaviour flow)."""

    times_inv_temp: bool = eqx.field(static=True, default=False)

    def loss(self, agent, policy, batch, key):
        scale = agent.config.inv_temp if self.times_inv_temp else 1.0
        return agent.adjoint_matching_actor_loss(policy, batch, key, agent.lam(), scale=scale)


class BasicAdjoint(AbstractPolicyObjective):
    r"""The basic-adjoint ablation, the official BAM's loss (qam `agents/bam.py`, `compute_sde`, `actor_loss`):

    $$L = \frac1B\sum_b\Big[\sum_{i=0}^{K-2}\frac{2}{g_s(t_i)^2}
    \big\lVert v_\theta(t_i, x_i) - \bar v_\beta(t_i, x_i)\big\rVert^2 - \tau\,Q(s_b, x_K)\Big],$$

    backpropagated through the memoryless SDE (the noiseless last base step costs nothing): τ times the SOC
    objective at λ = 1/τ with c = 1/h ([`flowsoc.soc_objective`][]; `bam_running_cost_scale` sets c).
    Q = mean − ρ·std of the online critic ensemble (no gradient to it) at the unclipped terminal action."""

    def loss(self, agent, policy, batch, key):
        config = agent.config
        obs = batch.observations
        k_noise, k_sde = jr.split(key)
        x0 = jr.normal(k_noise, obs.shape[:-1] + (config.horizon * agent.action_dim,), obs.dtype)
        scale = config.bam_running_cost_scale
        scale = float(config.flow_steps) if scale is None else scale

        critic = _frozen(agent.nets.critic)
        tau = config.inv_temp

        def reward(x1, o):  # τ·Q, the official BAM's Q: online critic, mean - ρ std, at the unclipped action
            q = critic.batched(o, x1)
            return tau * jnp.sum(jnp.mean(q, axis=-1) - config.pessimism * jnp.std(q, axis=-1))

        # τ·(λ·c·KL − Q) at λ = 1/τ is c·KL − τ·Q: the SOC objective at λ = 1 with reward τ·Q.
        objective = soc_objective(
            policy, agent.base, x0, agent.times, k_sde, reward, lam=1.0, args=obs, running_cost_scale=scale
        )
        loss = objective / obs.shape[0]
        frozen = _frozen(policy)
        xs = sample_sde(frozen, x0, agent.times, k_sde, args=obs, final_field=agent.base)
        kl = path_kl(frozen, agent.base, xs, agent.times, args=obs) / obs.shape[0] / config.horizon
        return loss, {"actor_loss": loss, "kl": kl}


class ScalarAdjointMatching(AbstractPolicyObjective):
    r"""Scalar adjoint matching (SQAM, "Q-Learning with Scalar Adjoint Matching"): no SDE and no adjoint ODE.
    From the policy's deterministic ODE sample $\hat a$ (noise $z$, `flow_steps` Euler steps, held fixed) it
    draws $K_b$ = `config.bridge_states` bridge states $x_\tau = (1-\tau)\varepsilon_\tau + \tau\hat a$,
    $\tau = k/K_b$, and regresses on them ([`flowsoc.scalar_adjoint_matching_loss`][]) with the adjoint
    $\tilde a_\tau = -\tau\,\nabla_a \mathrm{mean}_k \bar Q_k(s, \mathrm{clip}(\hat a))$ (one target-critic
    gradient per sample):

    $$L = \frac1B\sum_b\sum_{k=1}^{K_b}\Big\lVert
    \frac{2}{\sigma_k}\big(v_\theta - \bar v_\beta\big)(\tau_k, x_{\tau_k}) + \sigma_k\tilde a_{\tau_k}\Big\rVert^2,
    \qquad \sigma_k = g_s(\tau_k)/\sqrt{\lambda},\ s = 1/K_b,$$

    with λ the temperature's (TRQAM's σ = g/√(3λ) under the trust region), and the path KL per action step for
    the dual taken on the same bridge states. It also adds the value penalty to the critic's loss,

    $$c\,\mathrm{mean}_b\big[\mathrm{mean}_k Q_k(s, \mathrm{sg}(\mathrm{clip}\,\hat a))
    - \mathrm{mean}_k Q_k(s, a_{\rm data})\big],$$

    $c$ = `config.value_penalty`, with the same $\hat a$. The fixed point is not $\bar\pi_\beta e^{Q/\lambda}$: for a
    Gaussian base and a linear Q it moves the mean by $s\,I(s)\,c/\lambda$ instead of $s^2 c/\lambda$
    ([`flowsoc.gaussian.scalar_adjoint_tilt_linear`][])."""

    def _terminal(self, agent, policy, observations, key):
        r"""$\hat a$ (unclipped) from the policy's ODE, the noise drawn from `key` as `loss` draws it."""
        k_noise, _ = jr.split(key)
        noise = jr.normal(k_noise, observations.shape[:-1] + (agent.chunk,), observations.dtype)
        return jax.lax.stop_gradient(sample_ode(_frozen(policy), noise, agent.times, args=observations))

    def loss(self, agent, policy, batch, key):
        obs = batch.observations
        a_hat = self._terminal(agent, policy, obs, key)
        _, k_bridge = jr.split(key)
        adj1 = agent.adjoint_terminal(a_hat, obs)
        loss, kl = scalar_adjoint_matching_loss(
            policy,
            agent.base,
            a_hat,
            adj1,
            k_bridge,
            num_times=agent.config.bridge_states,
            lam=agent.lam(),
            args=obs,
            with_kl=True,
        )
        batch_size = obs.shape[0]
        loss = loss / batch_size
        kl = kl / batch_size / agent.config.horizon
        return loss, {"actor_loss": loss, "kl": kl, "adjoint_norm": jnp.mean(jnp.abs(adj1))}

    def critic_penalty(self, agent, critic, policy, batch, key):
        c = agent.config.value_penalty
        if c == 0:
            return super().critic_penalty(agent, critic, policy, batch, key)
        obs = batch.observations
        a_hat = jnp.clip(self._terminal(agent, policy, obs, key), -1.0, 1.0)
        data = batch.actions.reshape(batch.actions.shape[0], -1)
        q_policy = jnp.mean(critic.batched(obs, a_hat), axis=-1)
        q_data = jnp.mean(critic.batched(obs, data), axis=-1)
        gap = jnp.mean(q_policy) - jnp.mean(q_data).astype(q_policy.dtype)
        return c * gap, {"value_penalty": c * gap, "q_policy_minus_data": gap}


def _online_q(agent: "AbstractFlowAgent", observations: Array, actions: Array) -> Float[Array, " batch"]:
    r"""$\mathrm{mean}_k Q_k(s, a)$ of the online critic, without its gradient (the acting parts' Q term)."""
    return jnp.mean(_frozen(agent.nets.critic).batched(observations, actions), axis=-1)


class AbstractActor(eqx.Module):
    """What acts: action chunks for evaluation, for acting online and for the critic's next actions, from the
    policy flow and the actor's own trainable parameters (if any), with the loss that trains those."""

    def init(self, key: PRNGKeyArray, obs_dim: int, chunk: int, config: AgentConfig) -> PyTree:
        """The actor's own trainable parameters (`None`: it has none)."""
        return None

    @abc.abstractmethod
    def act(self, agent: "AbstractFlowAgent", params: PyTree, observations: Array, key: PRNGKeyArray) -> Array:
        """Flattened action chunks `(B, H*A)` in [-1, 1] for observations `(B, obs)`."""

    def loss(
        self, agent: "AbstractFlowAgent", params: PyTree, batch: ChunkBatch, key: PRNGKeyArray
    ) -> tuple[Float[Array, ""], dict[str, Array]]:
        """The loss of the actor's own parameters (0 when it has none)."""
        return jnp.zeros((), batch.observations.dtype), {}


class FlowODE(AbstractActor):
    """The policy flow's ODE from N(0, I) noise, clipped to [-1, 1] (QAM, TRQAM, BAM)."""

    def act(self, agent, params, observations, key):
        return agent.flow_actions(agent.nets.policy, observations, key)


class EditedFlow(AbstractActor):
    r"""QAM-E: the flow's action $a$ refined by a bounded, learned edit, $\mathrm{clip}(a + \kappa e, -1, 1)$ with
    $\kappa$ = `config.edit_scale` and $e \in (-1, 1)$ from a tanh-squashed Gaussian on $(s, a)$ (sampled, also in
    evaluation and for the critic's next actions). Its loss (the official QAM code's, weight 1 each):

    $$-\mathrm{mean}_b\,\mathrm{mean}_k Q_k(s, \mathrm{clip}(a + \kappa e)) + \mathrm{mean}_b\,\bar\alpha\log p(e)
    + \alpha\,(-\overline{\log p(e)} - \mathcal H_{\rm target}),$$

    the online critic without its gradient, $\bar\alpha$ the temperature without its gradient, $\alpha = e^{\log\alpha}$
    learned from 1, $\mathcal H_{\rm target} = -$`edit_target_entropy_multiplier`$\cdot HA$. With `edit_scale=0` the
    flow's ODE acts and nothing more is trained (the official code)."""

    def init(self, key, obs_dim, chunk, config):
        if config.edit_scale == 0:
            return None
        edit = TanhGaussian(obs_dim + chunk, chunk, config.actor_hidden, key=key)
        return {"edit": edit, "log_alpha": jnp.zeros((), jnp.result_type(float))}

    def _edited(self, agent, params, observations, key):
        if params is None:  # edit_scale = 0: the flow's ODE alone
            flow = agent.flow_actions(agent.nets.policy, observations, key)
            return flow, flow, None
        k_flow, k_edit = jr.split(key)
        flow = agent.flow_actions(agent.nets.policy, observations, k_flow)
        edit, log_prob = params["edit"].sample(jnp.concatenate([observations.astype(flow.dtype), flow], -1), k_edit)
        return flow, jnp.clip(flow + agent.config.edit_scale * edit, -1.0, 1.0), log_prob

    def act(self, agent, params, observations, key):
        return self._edited(agent, params, observations, key)[1]

    def loss(self, agent, params, batch, key):
        if params is None:
            return super().loss(agent, params, batch, key)
        obs = batch.observations
        flow, edited, log_prob = self._edited(agent, params, obs, key)
        q = _online_q(agent, obs, edited)
        q_loss = -jnp.mean(q)
        alpha = jnp.exp(params["log_alpha"])
        entropy_loss = jnp.mean(jax.lax.stop_gradient(alpha) * log_prob)
        entropy = -jnp.mean(jax.lax.stop_gradient(log_prob))
        target = -agent.config.edit_target_entropy_multiplier * flow.shape[-1]
        alpha_loss = alpha * (entropy - target)
        loss = q_loss + entropy_loss + alpha_loss
        return loss, {
            "edit_q_loss": q_loss,
            "edit_entropy_loss": entropy_loss,
            "edit_alpha_loss": alpha_loss,
            "edit_entropy": entropy,
            "edit_alpha": alpha,
        }


class OneStepDistillation(AbstractActor):
    r"""QAM-F: a one-step policy $\mu(s, z)$ acts, $\mathrm{clip}(\mu(s, z), -1, 1)$, $z \sim \mathcal N(0, I)$,
    trained (the official QAM code's FQL loss) by

    $$-\mathrm{mean}_b\,\mathrm{mean}_k Q_k(s, \mathrm{clip}(\mu(s, z))) + \alpha_{\rm F}\,
    \mathrm{mean}\,\big(\mathrm{ODE}_\theta(s, z) - \mu(s, z)\big)^2,$$

    the online critic without its gradient (not normalised), the policy flow's ODE from the same noise held fixed,
    $\alpha_{\rm F}$ = `config.fql_alpha`. With `fql_alpha=0` the flow's ODE acts and nothing more is trained
    (the official code)."""

    def init(self, key, obs_dim, chunk, config):
        if config.fql_alpha == 0:
            return None
        return OneStepPolicy(obs_dim, chunk, config.actor_hidden, layer_norm=config.actor_layer_norm, key=key)

    def act(self, agent, params, observations, key):
        if params is None:
            return agent.flow_actions(agent.nets.policy, observations, key)
        noise = jr.normal(key, observations.shape[:-1] + (agent.chunk,), observations.dtype)
        return jnp.clip(params(observations, noise), -1.0, 1.0)

    def loss(self, agent, params, batch, key):
        if params is None:
            return super().loss(agent, params, batch, key)
        obs = batch.observations
        noise = jr.normal(key, obs.shape[:-1] + (agent.chunk,), obs.dtype)
        flow = jax.lax.stop_gradient(agent.flow_actions(agent.nets.policy, obs, noise=noise))
        one_step = params(obs, noise)
        distill = jnp.mean((flow - one_step) ** 2)
        q = _online_q(agent, obs, jnp.clip(one_step, -1.0, 1.0))
        q_loss = -jnp.mean(q)
        loss = q_loss + agent.config.fql_alpha * distill
        return loss, {"fql_q_loss": q_loss, "fql_distill_loss": distill}


class Trainables(eqx.Module):
    """The parameters that receive gradients: critic, behaviour flow, policy flow, and the acting part's own
    (QAM-E's edit actor and temperature, QAM-F's one-step policy; `None` when the flow's ODE acts)."""

    critic: CriticEnsemble
    behaviour: VelocityMLP
    policy: VelocityMLP
    actor: PyTree = None


class AbstractFlowAgent(eqx.Module):
    """The shared state and update skeleton of QAM, TRQAM and BAM. Pure: `update` returns a new agent."""

    nets: Trainables
    target_critic: CriticEnsemble
    base: VelocityMLP  # EMA of the behaviour flow: the base of the SOC problem
    opt_state: PyTree
    dual: DualState
    key: PRNGKeyArray
    step: Int[Array, ""]
    config: AgentConfig = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        key: PRNGKeyArray,
        obs_dim: int,
        action_dim: int,
        config: AgentConfig,
        *,
        pretrained: VelocityMLP | None = None,
    ):
        """A fresh agent for observations of width `obs_dim` and actions of width `action_dim`
        (the flows and the critic act on chunks of `config.horizon` actions, flattened).

        `pretrained`: a behaviour flow trained by flow matching alone (BC pre-training, see
        [`flowsoc.rl.pretrain_behaviour`][]). It becomes the behaviour flow, its EMA (the base) and the policy,
        as in the TRQAM paper's pipeline, so fine-tuning starts at policy = base (path KL 0); the critic and
        the optimiser start fresh. Without it every network starts from its own random initialisation
        (the QAM paper's protocol)."""
        if not isinstance(config, AgentConfig):
            raise TypeError(f"{cls.__name__}.create: config must be an AgentConfig, got {type(config).__name__}.")
        missing = [part for part in ("temperature", "policy_objective", "actor") if not hasattr(cls, part)]
        if missing:
            raise TypeError(
                f"{cls.__name__} does not name its parts {missing}: an agent is a combination of a temperature, a "
                "policy objective and an actor, given as class variables (see flowsoc.rl.QAM)."
            )
        chunk = config.horizon * int(action_dim)
        k_critic, k_behaviour, k_policy, k_agent = jr.split(key, 4)
        critic = CriticEnsemble(
            obs_dim,
            chunk,
            config.critic_hidden,
            num_members=config.num_critics,
            layer_norm=config.critic_layer_norm,
            key=k_critic,
        )
        behaviour = VelocityMLP(
            obs_dim, chunk, config.actor_hidden, layer_norm=config.actor_layer_norm, key=k_behaviour
        )
        policy = VelocityMLP(obs_dim, chunk, config.actor_hidden, layer_norm=config.actor_layer_norm, key=k_policy)
        if pretrained is not None:
            check_same_structure(pretrained, behaviour, "pretrained")
            behaviour = policy = pretrained
        actor = cls.actor.init(jr.fold_in(key, 7), obs_dim, chunk, config)  # its own key: the others unchanged
        nets = Trainables(critic, behaviour, policy, actor)
        opt_state = _optimizer(config).init(eqx.filter(nets, eqx.is_inexact_array))
        return cls(
            nets=nets,
            target_critic=critic,
            base=behaviour,
            opt_state=opt_state,
            dual=cls._initial_dual(config),
            key=k_agent,
            step=jnp.zeros((), jnp.int32),
            config=config,
            action_dim=int(action_dim),
        )

    @staticmethod
    def _initial_dual(config: AgentConfig) -> DualState:
        return config.trust_region.init()

    # ------------------------------------------------------------------ the parts an agent names

    temperature: eqx.AbstractClassVar[AbstractTemperature]
    """What sets λ (a class-level part of each agent)."""
    policy_objective: eqx.AbstractClassVar[AbstractPolicyObjective]
    """What trains the policy flow (a class-level part of each agent)."""
    actor: eqx.AbstractClassVar[AbstractActor]
    """What acts (a class-level part of each agent); its trainable parameters, if any, are `nets.actor`."""

    def lam(self) -> Float[Array, ""]:
        """The λ inside σ = g/√λ ([`AbstractTemperature.lam`][flowsoc.rl.AbstractTemperature.lam])."""
        return self.temperature.lam(self.config, self.dual)

    def actor_loss(
        self, policy: VelocityMLP, batch: ChunkBatch, key: PRNGKeyArray
    ) -> tuple[Float[Array, ""], dict[str, Array]]:
        """The policy's loss on a batch and its metrics, including `kl` per action step
        ([`AbstractPolicyObjective.loss`][flowsoc.rl.AbstractPolicyObjective.loss])."""
        return self.policy_objective.loss(self, policy, batch, key)

    def dual_step(self, kl: Float[Array, ""]) -> DualState:
        """The dual state after a gradient step
        ([`AbstractTemperature.update`][flowsoc.rl.AbstractTemperature.update])."""
        return self.temperature.update(self.config, self.dual, kl)

    @property
    def kl_budget(self) -> float | None:
        """The path-KL budget per action step that this agent holds (TRQAM), else `None`."""
        return self.temperature.kl_budget(self.config)

    # ------------------------------------------------------------------ shared pieces

    @property
    def times(self) -> Float[Array, " n"]:
        return uniform_grid(self.config.flow_steps)

    @property
    def chunk(self) -> int:
        """The flattened chunk width `horizon * action_dim`."""
        return self.config.horizon * self.action_dim

    def flow_actions(
        self, flow: VelocityMLP, observations: Array, key: PRNGKeyArray | None = None, *, noise: Array | None = None
    ) -> Array:
        """Euler ODE of `flow` from N(0, I) noise (drawn from `key`, or given), clipped to [-1, 1]: flattened
        chunks `(B, H*A)`."""
        if noise is None:
            noise = jr.normal(key, observations.shape[:-1] + (self.chunk,), observations.dtype)
        x1 = sample_ode(flow, noise, self.times, args=observations)
        return jnp.clip(x1, -1.0, 1.0)

    def sample_actions(
        self, observations: Float[Array, "*batch obs"], key: PRNGKeyArray, flow: str = "policy"
    ) -> Float[Array, "*batch horizon action"]:
        """Action chunks, clipped to [-1, 1], shape `(*batch, horizon, action_dim)`. `flow`: `"policy"` (what the
        agent acts with: the fine-tuned flow's ODE, edited for QAM-E, the one-step policy for QAM-F),
        `"behaviour"` (the flow-matching BC flow's ODE) or `"base"` (its EMA, the SOC base)."""
        flows = {"policy": None, "behaviour": self.nets.behaviour, "base": self.base}
        if flow not in flows:
            raise ValueError(f"flow must be one of {sorted(flows)}, got {flow!r}.")
        single = observations.ndim == 1
        obs = observations[None] if single else observations
        if flow == "policy":
            actions = self.actor.act(self, self.nets.actor, obs, key)
        else:
            actions = self.flow_actions(flows[flow], obs, key)
        actions = actions.reshape(obs.shape[:-1] + (self.config.horizon, self.action_dim))
        return actions[0] if single else actions

    def critic_target(self, batch: ChunkBatch, key: PRNGKeyArray) -> Float[Array, " batch"]:
        r"""$y = R_H + \gamma^H m_H\,(\mathrm{mean}_k - \rho\,\mathrm{std}_k)\bar Q_k(s', a')$, $a'$ from the
        agent's actor at the state after the chunk (the policy's ODE, or what acts instead; no gradient)."""
        cfg = self.config
        next_obs = batch.next_observations[:, -1]
        next_actions = self.actor.act(self, self.nets.actor, next_obs, key)
        q_next = self.target_critic.batched(next_obs, next_actions)  # (B, K): jax.vmap(target_critic), member-major
        value = jnp.mean(q_next, axis=-1) - cfg.pessimism * jnp.std(q_next, axis=-1)
        # The data may be narrower than the critic (float32 rows, float64 networks under x64).
        dtype = result_dtype(batch.rewards, batch.masks, value)
        rewards, masks = batch.rewards[:, -1].astype(dtype), batch.masks[:, -1].astype(dtype)
        target = rewards + cfg.discount**cfg.horizon * masks * value.astype(dtype)
        return jax.lax.stop_gradient(target)

    def critic_loss(self, critic: CriticEnsemble, batch: ChunkBatch, key: PRNGKeyArray):
        """Mean over members and valid chunks of $(Q_k(s, a_{0:H}) - y)^2$."""
        target = self.critic_target(batch, key)
        actions = batch.actions.reshape(batch.actions.shape[0], -1)
        q = critic.batched(batch.observations, actions)  # (B, K): jax.vmap(critic), member-major
        dtype = result_dtype(batch.valid, q, target)
        valid = batch.valid[:, -1].astype(dtype)
        loss = jnp.mean(valid[:, None] * (q.astype(dtype) - target[:, None].astype(dtype)) ** 2)
        return loss, {"critic_loss": loss, "q_mean": jnp.mean(q), "target_mean": jnp.mean(target)}

    def behaviour_loss(self, behaviour: VelocityMLP, batch: ChunkBatch, key: PRNGKeyArray):
        """Flow matching of the behaviour flow on the data's chunks (mean over entries, valid chunks;
        [`flowsoc.rl.behaviour_flow_loss`][])."""
        return behaviour_flow_loss(behaviour, batch, key)

    def adjoint_terminal(self, x1: Float[Array, "batch chunk"], observations: Array) -> Float[Array, "batch chunk"]:
        r"""$\tilde a(1) = -\nabla_a\,\mathrm{mean}_k \bar Q_k(s, \mathrm{clip}(a, -1, 1))$ per sample."""

        def q_mean_sum(a):  # the samples are independent: the gradient of the sum is the per-sample gradient
            a = jnp.clip(a, -1.0, 1.0) if self.config.clip_adjoint_action else a
            return jnp.sum(jnp.mean(self.target_critic.batched(observations, a), axis=-1))

        return -jax.grad(q_mean_sum)(x1)

    def losses(self, nets: Trainables, batch: ChunkBatch, key: PRNGKeyArray):
        k_critic, k_behaviour, k_actor = jr.split(key, 3)
        critic_loss, m_critic = self.critic_loss(nets.critic, batch, k_critic)
        behaviour_loss, m_behaviour = self.behaviour_loss(nets.behaviour, batch, k_behaviour)
        m_acting = {}
        if nets.actor is not None:  # the acting part's own parameters (QAM-E, QAM-F)
            k_actor, k_acting = jr.split(k_actor)
            acting_loss, m_acting = self.actor.loss(self, nets.actor, batch, k_acting)
        actor_loss, m_actor = self.actor_loss(nets.policy, batch, k_actor)
        # A critic term from the policy objective (SQAM's value penalty), with the actor loss's key.
        penalty, m_penalty = self.policy_objective.critic_penalty(self, nets.critic, nets.policy, batch, k_actor)
        critic_loss = critic_loss + penalty.astype(critic_loss.dtype)
        dtype = result_dtype(critic_loss, behaviour_loss, actor_loss)
        total = critic_loss.astype(dtype) + behaviour_loss.astype(dtype) + actor_loss.astype(dtype)
        if nets.actor is not None:
            total = total + acting_loss.astype(dtype)
        return total, {**m_critic, **m_penalty, **m_behaviour, **m_actor, **m_acting, "total_loss": total}

    def update(self, batch: ChunkBatch) -> tuple["AbstractFlowAgent", dict[str, Array]]:
        """One gradient step on critic, behaviour flow and policy (one optax chain), EMA targets
        from the pre-update parameters, then the dual step. Pure and jittable."""
        key, sub = jr.split(self.key)
        params, static = eqx.partition(self.nets, eqx.is_inexact_array)

        def loss_fn(p):
            return self.losses(eqx.combine(p, static), batch, sub)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        # optax's Adam computes `decay ** count` (Python float, int32 count): outside strict promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = _optimizer(self.config).update(grads, self.opt_state, params)
        nets = eqx.apply_updates(self.nets, updates)
        rate = self.config.target_ema
        target_critic = ema_update(self.target_critic, self.nets.critic, rate)
        base = ema_update(self.base, self.nets.behaviour, rate)
        dual = self.dual_step(metrics["kl"])
        metrics = {**metrics, "lam": self.lam(), "grad_norm": optax.tree.norm(grads)}
        new = eqx.tree_at(
            lambda a: (a.nets, a.target_critic, a.base, a.opt_state, a.dual, a.key, a.step),
            self,
            (nets, target_critic, base, opt_state, dual, key, self.step + 1),
        )
        return new, metrics

    # ------------------------------------------------------------------ adjoint matching (QAM, TRQAM)

    def adjoint_matching_actor_loss(
        self, policy: VelocityMLP, batch: ChunkBatch, key: PRNGKeyArray, lam, scale: float = 1.0
    ):
        """Adjoint matching of the policy towards $\\bar\\pi_\\beta e^{Q/\\lambda}$ (batch mean, times
        `scale`), and the path KL to the base per action step (pre-update parameters, no gradient)."""
        obs = batch.observations
        k_noise, k_sde = jr.split(key)
        x0 = jr.normal(k_noise, obs.shape[:-1] + (self.config.horizon * self.action_dim,), obs.dtype)
        # = sample_sde(frozen policy, final_field=base), lean_adjoint, adjoint_matching_loss(with_kl=True), with the
        # network passes those three share done once
        loss, kl, adj = adjoint_matching_on_sde_path(
            policy,
            self.base,
            x0,
            self.times,
            k_sde,
            lambda x1: self.adjoint_terminal(x1, obs),
            lam=lam,
            args=obs,
            base_time=self.config.adjoint_base_time,
            final_ode_step=self.config.adjoint_final_ode_step,
        )
        batch_size = obs.shape[0]
        kl = kl / batch_size / self.config.horizon
        loss = scale * loss / batch_size
        return loss, {"actor_loss": loss, "kl": kl, "adjoint_norm": jnp.mean(jnp.abs(adj[-1]))}


class QAM(AbstractFlowAgent):
    """Q-learning with Adjoint Matching: a fixed λ = 1/τ (`config.inv_temp` = τ), lean adjoint matching at the
    official QAM code's loss scale ([`flowsoc.rl.LeanAdjointMatching`][])."""

    temperature: ClassVar[AbstractTemperature] = FixedTemperature()
    policy_objective: ClassVar[AbstractPolicyObjective] = LeanAdjointMatching(times_inv_temp=True)
    actor: ClassVar[AbstractActor] = FlowODE()


class TRQAM(AbstractFlowAgent):
    """Trust Region QAM: λ adapted by projected dual descent so that the path KL per action step
    sits at `config.trust_region.kl_budget`; σ = g/√(lam_scale·λ) (`lam_scale` = 3 in TRQAM)."""

    temperature: ClassVar[AbstractTemperature] = TrustRegionTemperature()
    policy_objective: ClassVar[AbstractPolicyObjective] = LeanAdjointMatching()
    actor: ClassVar[AbstractActor] = FlowODE()


class BAM(AbstractFlowAgent):
    """The basic-adjoint ablation: a fixed λ = 1/τ, the SOC objective backpropagated through the SDE
    ([`flowsoc.rl.BasicAdjoint`][])."""

    temperature: ClassVar[AbstractTemperature] = FixedTemperature()
    policy_objective: ClassVar[AbstractPolicyObjective] = BasicAdjoint()
    actor: ClassVar[AbstractActor] = FlowODE()


class QAME(AbstractFlowAgent):
    """QAM-E (the QAM paper's edit policy): QAM's fixed λ = 1/τ and adjoint matching, acting with the flow's
    action refined by a bounded learned edit ([`flowsoc.rl.EditedFlow`][], `config.edit_scale`)."""

    temperature: ClassVar[AbstractTemperature] = FixedTemperature()
    policy_objective: ClassVar[AbstractPolicyObjective] = LeanAdjointMatching(times_inv_temp=True)
    actor: ClassVar[AbstractActor] = EditedFlow()


class QAMF(AbstractFlowAgent):
    """QAM-F (the QAM paper's FQL distillation): QAM's fixed λ = 1/τ and adjoint matching, acting with a one-step
    policy distilled from the flow while maximising Q ([`flowsoc.rl.OneStepDistillation`][], `config.fql_alpha`)."""

    temperature: ClassVar[AbstractTemperature] = FixedTemperature()
    policy_objective: ClassVar[AbstractPolicyObjective] = LeanAdjointMatching(times_inv_temp=True)
    actor: ClassVar[AbstractActor] = OneStepDistillation()


class SQAM(AbstractFlowAgent):
    """Q-learning with Scalar Adjoint Matching: TRQAM's trust region and critic, the policy flow trained by
    scalar adjoint matching on bridge states around its ODE sample, and a value penalty in the critic's loss
    ([`flowsoc.rl.ScalarAdjointMatching`][]; `config.bridge_states`, `config.value_penalty`). The SQAM paper's
    default budget is ε = 0.5 per action step (`config.with_kl_budget(0.5)`)."""

    temperature: ClassVar[AbstractTemperature] = TrustRegionTemperature()
    policy_objective: ClassVar[AbstractPolicyObjective] = ScalarAdjointMatching()
    actor: ClassVar[AbstractActor] = FlowODE()
