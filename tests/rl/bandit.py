"""The settings of the agents that learn the tests' contextual bandits (tests/rl/test_agents.py, test_online.py)."""

from flowsoc import DualDescent
from flowsoc.rl import AgentConfig


BANDIT_CONFIG = AgentConfig.small(
    horizon=1,
    discount=0.0,
    actor_hidden=(32, 32),
    critic_hidden=(32, 32),
    num_critics=2,
    learning_rate=1e-3,
    trust_region=DualDescent(kl_budget=1.0, step_size=0.05, lam_scale=3.0),
)
"""32-wide nets, 2 critics, γ = 0, a faster dual step than the official one."""
