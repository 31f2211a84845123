"""Per-domain settings of the official TRQAM and QAM runs on OGBench (spec.md §6).

Sources: QAM's `reproduce.py` (τ per domain, ρ, γ, chunk length, sparse rewards) and the TRQAM
README and code (γ, network size, ε_KL). What is not published is said so below.
"""

import dataclasses

from ._datagen_recipes import DatasetError, parse_dataset_name


_LARGE = (1024, 1024, 1024, 1024)


@dataclasses.dataclass(frozen=True)
class DomainPreset:
    """The official settings of one OGBench domain.

    - `inv_temp`: QAM's τ (λ = 1/τ), the same for the five tasks of a domain.
    - `kl_budget`: TRQAM's ε_KL per action step. The paper's per-domain table was not available
      to us; the code default 1.0 is used except where the README gives a value (cube-triple 0.5).
    - `horizon`: action chunk length (5 manipulation, 1 navigation).
    - `discount_qam`, `discount_trqam`: γ of the QAM code (0.99; 0.995 for giant and humanoid
      mazes) and of the TRQAM README (0.995; 0.999 for humanoid mazes).
    - `pessimism`: ρ (0 for humanoid mazes).
    - `large`: 4x1024 flows and critics with actor LayerNorm (the 10M/100M-data domains).
    - `sparse`: rewards made sparse, `-1[r != 0]` (puzzle and scene).
    """

    domain: str
    inv_temp: float
    kl_budget: float = 1.0
    horizon: int = 5
    discount_qam: float = 0.99
    discount_trqam: float = 0.995
    pessimism: float = 0.5
    large: bool = False
    sparse: bool = False

    def agent_settings(self, agent: str = "trqam") -> dict:
        """`AgentConfig` keyword arguments for `agent` in `trqam`, `qam`, `bam`."""
        agent = agent.lower()
        if agent not in ("trqam", "qam", "bam"):
            raise ValueError(f"unknown agent {agent!r}: choose 'trqam', 'qam' or 'bam'.")
        settings = dict(
            horizon=self.horizon,
            discount=self.discount_trqam if agent == "trqam" else self.discount_qam,
            pessimism=self.pessimism,
            inv_temp=self.inv_temp,
            kl_budget=self.kl_budget,
        )
        if self.large:
            settings.update(actor_hidden=_LARGE, critic_hidden=_LARGE, actor_layer_norm=True)
        return settings


PAPER_PRESETS: dict[str, DomainPreset] = {
    p.domain: p
    for p in (
        DomainPreset("puzzle-3x3", inv_temp=3.0, sparse=True),
        DomainPreset("scene", inv_temp=1.0, sparse=True),
        DomainPreset("cube-double", inv_temp=1.0),
        DomainPreset("antmaze-large", inv_temp=10.0, horizon=1),
        DomainPreset(
            "humanoidmaze-medium", inv_temp=3.0, horizon=1, discount_qam=0.995, discount_trqam=0.999, pessimism=0.0
        ),
        DomainPreset("cube-triple", inv_temp=3.0, kl_budget=0.5, large=True),
        DomainPreset("cube-quadruple", inv_temp=1.0, large=True),
        DomainPreset("antmaze-giant", inv_temp=3.0, horizon=1, discount_qam=0.995, large=True),
        DomainPreset(
            "humanoidmaze-large", inv_temp=3.0, horizon=1, discount_qam=0.995, discount_trqam=0.999, pessimism=0.0
        ),
        DomainPreset("puzzle-4x4", inv_temp=30.0, sparse=True, large=True),
    )
}


def domain_preset(env: str) -> DomainPreset:
    """The preset of `env`: a domain key of `PAPER_PRESETS` (`cube-double`) or any OGBench
    dataset name (`cube-double-play-singletask-task2-v0`).

    Domains outside the paper's ten get their family's settings: manipulation (cube, scene,
    puzzle) as cube-double (puzzle sparse), navigation (pointmaze, antmaze, humanoidmaze,
    antsoccer) as antmaze-large with τ = 3.
    """
    if env in PAPER_PRESETS:
        return PAPER_PRESETS[env]
    try:
        parsed = parse_dataset_name(env)
    except DatasetError as err:
        raise ValueError(
            f"no preset for {env!r}: give an OGBench dataset name or one of {sorted(PAPER_PRESETS)}."
        ) from err
    key = f"{parsed.domain}-{parsed.variant}" if parsed.variant else parsed.domain
    if key in PAPER_PRESETS:
        return PAPER_PRESETS[key]
    if parsed.domain in ("cube", "scene", "puzzle", "powderworld"):
        return dataclasses.replace(PAPER_PRESETS["cube-double"], domain=key, sparse=parsed.domain == "puzzle")
    humanoid = parsed.domain == "humanoidmaze"
    return DomainPreset(
        key,
        inv_temp=3.0,
        horizon=1,
        discount_qam=0.995 if humanoid or parsed.variant == "giant" else 0.99,
        discount_trqam=0.999 if humanoid else 0.995,
        pessimism=0.0 if humanoid else 0.5,
    )
