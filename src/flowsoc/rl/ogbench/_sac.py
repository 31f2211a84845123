r"""A compact soft actor-critic (SAC), for training the low-level locomotion experts that OGBench's
navigation datasets are generated with (the experts themselves cannot be downloaded here).

Defaults follow OGBench's expert recipe (`impls/agents/sac.py`, `data_gen_scripts/commands.sh`):
2x256 GELU networks, Adam 1e-4, batch 256, γ = 0.99, target EMA 0.005, twin critics with the
minimum in the target, a tanh-squashed Gaussian actor with state-dependent standard deviation and a
final layer scaled by 0.01, and the temperature α tuned towards the entropy $-\tfrac12\dim A$.

One update (`SAC.update`, pure and jittable) minimises, with $a' \sim \pi(\cdot\mid s')$ and
$a_\pi \sim \pi(\cdot\mid s)$ drawn by reparameterisation:

- critic: $\mathrm{mean}_k (Q_k(s, a) - y)^2$ with
  $y = r + \gamma m\,(\min_k \bar Q_k(s', a') - \alpha \log\pi(a'\mid s'))$;
- actor: $\alpha\log\pi(a_\pi\mid s) - \min_k Q_k(s, a_\pi)$ (critic held fixed);
- temperature: $\alpha\,(\mathcal H - \mathcal H_{\rm target})$ with $\mathcal H = -\log\pi(a_\pi\mid s)$
  held fixed,

all in one Adam step, then the critic target's EMA.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._buffers import ReplayBuffer, Transitions
from .._networks import CriticEnsemble, ema_update, MLP, tanh_gaussian_sample


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """SAC hyperparameters (OGBench's expert recipe by default)."""

    learning_rate: float = 1e-4
    """Adam step size for actor, critics and temperature."""
    actor_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor."""
    critic_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of each critic."""
    layer_norm: bool = False
    """LayerNorm in the critics' hidden layers."""
    discount: float = 0.99
    """γ."""
    target_ema: float = 0.005
    """Rate of the critic target's EMA."""
    target_entropy_scale: float = 0.5
    """The temperature is tuned towards the entropy `-target_entropy_scale * action_dim`."""
    min_q: bool = True
    """Minimum over the two critics (else their mean) in the target and the actor loss."""
    actor_final_scale: float = 0.01
    """Scale of the actor's final-layer initialisation."""
    log_std_min: float = -5.0
    """Lower clip of the actor's log standard deviation."""
    log_std_max: float = 2.0
    """Upper clip of the actor's log standard deviation."""

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"SACConfig: learning_rate must be > 0, got {self.learning_rate}.")
        if not 0 <= self.discount <= 1:
            raise ValueError(f"SACConfig: discount must lie in [0, 1], got {self.discount}.")
        if not 0 < self.target_ema <= 1:
            raise ValueError(f"SACConfig: target_ema must lie in (0, 1], got {self.target_ema}.")
        if not self.log_std_min < self.log_std_max:
            raise ValueError("SACConfig: log_std_min must be < log_std_max.")

    def replace(self, **changes) -> "SACConfig":
        return dataclasses.replace(self, **changes)


class TanhGaussianActor(eqx.Module):
    """$\\pi(\\cdot\\mid s)$: $a = \\tanh(u)$, $u \\sim \\mathcal N(\\mu(s), \\mathrm{diag}\\,\\sigma(s)^2)$, with
    $\\log\\sigma$ clipped to `[log_std_min, log_std_max]`."""

    mlp: MLP
    action_dim: int = eqx.field(static=True)
    log_std_min: float = eqx.field(static=True)
    log_std_max: float = eqx.field(static=True)

    def __init__(self, obs_dim: int, action_dim: int, config: SACConfig, *, key: PRNGKeyArray):
        mlp = MLP(obs_dim, 2 * action_dim, config.actor_hidden, layer_norm=False, key=key)
        last = mlp.layers[-1]
        scale = config.actor_final_scale
        self.mlp = eqx.tree_at(
            lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp, (scale * last.weight, scale * last.bias)
        )
        self.action_dim = int(action_dim)
        self.log_std_min, self.log_std_max = float(config.log_std_min), float(config.log_std_max)

    def __call__(self, obs: Float[Array, " obs_dim"]) -> tuple[Float[Array, " act"], Float[Array, " act"]]:
        out = self.mlp(obs)
        mean, log_std = out[: self.action_dim], out[self.action_dim :]
        return mean, jnp.clip(log_std, self.log_std_min, self.log_std_max)

    def sample(self, obs: Float[Array, " obs_dim"], key: PRNGKeyArray) -> tuple[Float[Array, " act"], Float[Array, ""]]:
        """A reparameterised action and its log density,
        $\\log\\pi(a) = \\sum_j \\log\\mathcal N(u_j; \\mu_j, \\sigma_j^2) - \\log(1 - \\tanh^2 u_j)$."""
        mean, log_std = self(obs)
        return tanh_gaussian_sample(mean, log_std, key)


class SACNets(eqx.Module):
    actor: TanhGaussianActor
    critic: CriticEnsemble
    log_alpha: Float[Array, ""]


def _optimizer(config: SACConfig) -> optax.GradientTransformation:
    return optax.adam(config.learning_rate)


def sample_transitions(buffer: ReplayBuffer, key: PRNGKeyArray, batch_size: int) -> Transitions:
    """`batch_size` rows drawn uniformly from the filled part of `buffer`."""
    rows = jr.randint(key, (batch_size,), 0, buffer.size)
    return jax.tree.map(lambda x: x[rows], buffer.data)


class SAC(eqx.Module):
    """The SAC state; `update` returns a new one."""

    nets: SACNets
    target_critic: CriticEnsemble
    opt_state: PyTree
    key: PRNGKeyArray
    step: Int[Array, ""]
    config: SACConfig = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)

    @classmethod
    def create(cls, key: PRNGKeyArray, obs_dim: int, action_dim: int, config: SACConfig = SACConfig()) -> "SAC":
        k_actor, k_critic, k_agent = jr.split(key, 3)
        critic = CriticEnsemble(
            obs_dim, action_dim, config.critic_hidden, num_members=2, layer_norm=config.layer_norm, key=k_critic
        )
        nets = SACNets(TanhGaussianActor(obs_dim, action_dim, config, key=k_actor), critic, jnp.zeros(()))
        return cls(
            nets=nets,
            target_critic=critic,
            opt_state=_optimizer(config).init(eqx.filter(nets, eqx.is_inexact_array)),
            key=k_agent,
            step=jnp.zeros((), jnp.int32),
            config=config,
            action_dim=int(action_dim),
        )

    @property
    def target_entropy(self) -> float:
        return -self.config.target_entropy_scale * self.action_dim

    def _reduce(self, q: Array) -> Array:
        return jnp.min(q, axis=-1) if self.config.min_q else jnp.mean(q, axis=-1)

    def sample_actions(
        self, observations: Float[Array, "*batch obs"], key: PRNGKeyArray, deterministic: bool = False
    ) -> Float[Array, "*batch act"]:
        """Actions from the actor (the tanh of the mean with `deterministic`), in [-1, 1]."""
        obs = observations.reshape(-1, observations.shape[-1])
        if deterministic:
            actions = jnp.tanh(jax.vmap(self.nets.actor)(obs)[0])
        else:
            actions = jax.vmap(self.nets.actor.sample)(obs, jr.split(key, obs.shape[0]))[0]
        return actions.reshape(observations.shape[:-1] + (self.action_dim,))

    def losses(self, nets: SACNets, batch: Transitions, key: PRNGKeyArray):
        # The replay buffer stores float32; compute in the networks' dtype (float64 under x64).
        dtype = nets.critic.mlp.dtype
        batch = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, batch)
        k_next, k_pi = jr.split(key)
        n = batch.rewards.shape[0]
        alpha = jnp.exp(nets.log_alpha)
        fixed_alpha = jax.lax.stop_gradient(alpha)
        # Critic.
        next_a, next_logp = jax.vmap(nets.actor.sample)(batch.next_observations, jr.split(k_next, n))
        next_q = self._reduce(jax.vmap(self.target_critic)(batch.next_observations, next_a))
        target = batch.rewards + self.config.discount * batch.masks * (next_q - fixed_alpha * next_logp)
        target = jax.lax.stop_gradient(target)
        q = jax.vmap(nets.critic)(batch.observations, batch.actions)
        critic_loss = jnp.mean((q - target[:, None]) ** 2)
        # Actor, through a critic held fixed.
        frozen_critic = jax.lax.stop_gradient(nets.critic)
        a, logp = jax.vmap(nets.actor.sample)(batch.observations, jr.split(k_pi, n))
        q_pi = self._reduce(jax.vmap(frozen_critic)(batch.observations, a))
        actor_loss = jnp.mean(fixed_alpha * logp - q_pi)
        # Temperature.
        entropy = -jnp.mean(jax.lax.stop_gradient(logp))
        alpha_loss = alpha * (entropy - self.target_entropy)
        total = critic_loss + actor_loss + alpha_loss
        metrics = {
            "critic_loss": critic_loss,
            "actor_loss": actor_loss,
            "alpha": alpha,
            "entropy": entropy,
            "q_mean": jnp.mean(q),
        }
        return total, metrics

    def update(self, batch: Transitions) -> tuple["SAC", dict[str, Array]]:
        """One Adam step on critic, actor and temperature, then the critic target's EMA."""
        key, sub = jr.split(self.key)
        params, static = eqx.partition(self.nets, eqx.is_inexact_array)
        (_, metrics), grads = jax.value_and_grad(
            lambda p: self.losses(eqx.combine(p, static), batch, sub), has_aux=True
        )(params)
        # optax's Adam computes `decay ** count` (Python float, int32 count): outside strict promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = _optimizer(self.config).update(grads, self.opt_state, params)
        nets = eqx.apply_updates(self.nets, updates)
        target = ema_update(self.target_critic, nets.critic, self.config.target_ema)
        new = eqx.tree_at(
            lambda s: (s.nets, s.target_critic, s.opt_state, s.key, s.step),
            self,
            (nets, target, opt_state, key, self.step + 1),
        )
        return new, metrics


@eqx.filter_jit
def sac_updates(agent: SAC, buffer: ReplayBuffer, num_steps: int, batch_size: int) -> tuple[SAC, dict[str, Array]]:
    """`num_steps` SAC updates in one `lax.scan`, each on `batch_size` uniformly drawn transitions
    (batch `n` from `fold_in(agent.key, ...)`: the agent's own key stream)."""
    arrays, static = eqx.partition(agent, eqx.is_array)

    def body(arrays, _):
        current = eqx.combine(arrays, static)
        key, sub = jr.split(current.key)
        current = eqx.tree_at(lambda s: s.key, current, key)
        new, metrics = current.update(sample_transitions(buffer, sub, batch_size))
        return eqx.filter(new, eqx.is_array), metrics

    arrays, metrics = jax.lax.scan(body, arrays, None, length=num_steps)
    return eqx.combine(arrays, static), metrics


__all__ = ["SAC", "SACConfig", "TanhGaussianActor", "sac_updates", "sample_transitions"]
