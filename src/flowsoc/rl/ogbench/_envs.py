"""OGBench's environments and the evaluators of the examples: environments built as OGBench's own
loader builds them (`env_only=True`), success rates over fixed episodes."""

import dataclasses
from typing import Any

import jax.random as jr

from .._agents import AbstractFlowAgent
from .._custom_types import Evaluator, SeedEvaluator
from .._evaluate import agent_policy, evaluate
from .._train import TrainConfig


@dataclasses.dataclass(frozen=True)
class OGBenchEnvFactory:
    """Builds OGBench's environment for dataset name `name` as its loader does (`env_only=True`);
    `env_kwargs` go to `gymnasium.make` (e.g. `max_episode_steps=50`). Picklable."""

    name: str
    env_kwargs: tuple[tuple[str, Any], ...] = ()

    def __call__(self):
        import ogbench

        return ogbench.make_env_and_datasets(self.name, env_only=True, **dict(self.env_kwargs))


def make_envs(name: str, num: int, **env_kwargs) -> list[Any]:
    """`num` OGBench evaluation environments for dataset name `name` (e.g.
    `cube-single-play-singletask-task1-v0`), as OGBench's own `env_only=True` builds them
    (`env_kwargs`, e.g. `max_episode_steps=50`, go to `gymnasium.make`)."""
    import ogbench

    if num < 1:
        raise ValueError(f"need at least one environment, got num={num}.")
    return [ogbench.make_env_and_datasets(name, env_only=True, **env_kwargs) for _ in range(num)]


def ogbench_seeds_evaluator(env_name: str, config: TrainConfig, **env_kwargs) -> SeedEvaluator:
    """`evaluator(agent, step, seed)`: evaluate `config.eval_flows` of an agent in OGBench's `env_name`
    over `config.eval_episodes` episodes, on one set of environments (built on first use with
    `env_kwargs`). Episode seeds and policy keys depend only on `seed` and `step`, so every evaluation of
    a seed starts from the same initial states, and seed `s` of a many-seed run sees the episodes of a
    single-seed run with `TrainConfig(seed=s)`."""
    envs: list[Any] = []

    def evaluator(agent: AbstractFlowAgent, step: int, seed: int) -> dict[str, float]:
        if not envs:
            envs.extend(make_envs(env_name, min(config.eval_envs, config.eval_episodes), **env_kwargs))
        out = {}
        for flow in config.eval_flows:
            key = jr.fold_in(jr.key(seed + 1), step)
            result = evaluate(agent_policy(agent, flow), envs, config.eval_episodes, key, seed=10_000 * seed)
            out.update(result.summary(f"{flow}/"))
        return out

    return evaluator


def ogbench_evaluator(env_name: str, config: TrainConfig, **env_kwargs) -> Evaluator:
    """`evaluator(agent, step)`: [`flowsoc.rl.ogbench.ogbench_seeds_evaluator`][] at `config.seed`."""
    evaluator = ogbench_seeds_evaluator(env_name, config, **env_kwargs)
    return lambda agent, step: evaluator(agent, step, config.seed)


__all__ = ["OGBenchEnvFactory", "make_envs", "ogbench_evaluator", "ogbench_seeds_evaluator"]
