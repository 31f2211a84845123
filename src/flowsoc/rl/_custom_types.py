"""Type aliases shared by the training loops (as Diffrax keeps its own in `_custom_types.py`)."""

from collections.abc import Callable

import equinox as eqx

from ._agents import AbstractFlowAgent


Agent = eqx.Module
"""What the loops train: a pure `eqx.Module` with `update(batch) -> (new, metrics)`, an integer array `step`
and a static `config` with `horizon` and `discount` (the flow agents, or `flowsoc.rl.BCPretrainer`)."""

Evaluator = Callable[[AbstractFlowAgent, int], dict[str, float]]
"""`evaluator(agent, step) -> metrics` (e.g. `policy/success`), run at the evaluation cadence."""

SeedEvaluator = Callable[[AbstractFlowAgent, int, int], dict[str, float]]
"""`evaluator(agent, step, seed) -> metrics` for one seed's (unstacked) agent."""
