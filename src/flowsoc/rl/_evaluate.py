"""Evaluation of a flow agent in an OGBench environment: the ODE policy, action chunks
executed open loop, success rate over episodes (as the official QAM/TRQAM evaluation)."""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import PRNGKeyArray

from ._agents import AbstractFlowAgent


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Per-episode outcomes and their means."""

    success: np.ndarray  # (episodes,) 1.0 where the episode ended in success
    returns: np.ndarray  # (episodes,) undiscounted return
    lengths: np.ndarray  # (episodes,) environment steps

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.success))

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.lengths))

    def summary(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}success": self.success_rate,
            f"{prefix}return": self.mean_return,
            f"{prefix}length": self.mean_length,
        }


@eqx.filter_jit
def _act(agent: AbstractFlowAgent, observations, key, flow: str):
    return agent.sample_actions(observations, key, flow)


def agent_policy(agent: AbstractFlowAgent, flow: str = "policy") -> Callable[[np.ndarray, PRNGKeyArray], np.ndarray]:
    """`policy(observations (E, obs), key) -> chunks (E, H, A)` from `agent`'s `flow` ODE."""

    def policy(observations, key):
        return np.asarray(_act(agent, jnp.asarray(observations, jnp.float32), key, flow))

    return policy


def evaluate(
    policy: Callable[[np.ndarray, PRNGKeyArray], np.ndarray],
    envs: Sequence[Any],
    episodes: int,
    key: PRNGKeyArray,
    *,
    seed: int = 0,
) -> EvalResult:
    """Run `episodes` episodes, `len(envs)` at a time in lockstep, with open-loop chunks:
    each chunk `policy(obs, key)[e]` of `H` actions is executed in full (or until the episode
    ends) before the next observation is read. Episode `i` resets with seed `seed + i`;
    success is OGBench's `info["success"]` at the episode's last step.

    The policy always sees all `len(envs)` observations (finished environments repeat their
    last one), so its compiled shape never changes.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    success, returns, lengths = np.zeros(episodes), np.zeros(episodes), np.zeros(episodes, np.int64)
    chunk_count = 0
    for first in range(0, episodes, len(envs)):
        ids = list(range(first, min(first + len(envs), episodes)))
        obs = np.stack([envs[j].reset(seed=seed + i)[0] for j, i in enumerate(ids)]).astype(np.float32)
        if len(ids) < len(envs):  # pad the last wave
            obs = np.concatenate([obs, np.repeat(obs[-1:], len(envs) - len(ids), axis=0)])
        alive = [True] * len(ids)
        while any(alive):
            chunks = policy(obs, jr.fold_in(key, chunk_count))
            chunk_count += 1
            for j, i in enumerate(ids):
                for action in chunks[j]:
                    if not alive[j]:
                        break
                    ob, reward, terminated, truncated, info = envs[j].step(np.asarray(action))
                    obs[j] = ob
                    returns[i] += float(reward)
                    lengths[i] += 1
                    if terminated or truncated:
                        alive[j] = False
                        success[i] = float(info.get("success", 0.0))
    return EvalResult(success=success, returns=returns, lengths=lengths)
