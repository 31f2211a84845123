"""Per-paper presets: the settings of the official QAM and TRQAM runs on OGBench, every number with its source.

Two papers ran the agents of `flowsoc.rl`, with different protocols:

- **QAM paper** (Li & Levine; code `ColinQiyangLi/qam` @ f93efd2, sweep `experiments/reproduce.py`): QAM and BAM,
  each with its own per-domain τ (BAM's is 10-30, not QAM's). 4x512 flows and critics with no actor LayerNorm on
  *every* domain, 10 critics, γ = 0.99 (0.995 on giant and humanoid mazes), ρ = 0.5 (0 on humanoid mazes), chunks of
  5 actions (1 on ant/humanoid mazes), rewards made sparse on puzzle and scene, the 100M-transition datasets for
  cube-quadruple and puzzle-4x4 (standard 1M files elsewhere). No pre-training: the flows start from random init
  and offline RL runs from step 1 (1M offline + 500K online steps).
- **TRQAM paper** (Dong et al.; code `yonghdong/trqam` @ 02599ce, its README's published commands): TRQAM and the
  baselines it compares with (QAM among them) share one protocol. 300K steps of BC pre-training
  (`--bc_only=True`) whose flow every method loads before fine-tuning (1M offline + 500K online steps);
  `--sparse=False` everywhere; γ = 0.995 (0.999 on humanoid mazes), ρ = 0.5 (0 on humanoid mazes); chunks of 5
  (1 on antmaze and humanoidmaze); 4x512 networks on the 1M-data domains and 4x1024 with actor LayerNorm on the
  four large-data domains (cube-triple 10M, antmaze-giant 10M, puzzle-4x4 10M, cube-quadruple 100M).

`paper_preset(env, agent, protocol)` answers for an OGBench domain or dataset name, an agent (`trqam`, `qam`,
`bam`, `qame`, `qamf`, `sqam`) and a protocol: `None` for the paper that ran the agent (QAM paper for
`qam`/`bam`/`qame`/`qamf`, TRQAM paper for `trqam` and for SQAM, its authors' follow-up), `"trqam"` to run a
baseline inside the TRQAM comparison (its networks, γ, ρ, dense rewards and BC pre-training; the baseline keeps its
τ from the QAM sweep unless the TRQAM README gives one), `"qam"` to run TRQAM under the QAM paper's protocol. The
answer, a `PaperPreset`, holds the `AgentConfig` keywords, whether rewards are sparse, the BC pre-training steps,
the official dataset when it is not the standard 1M file (the examples' `--preset paper` trains from that folder
of shards, made by `python -m flowsoc.rl.datagen <dataset>`), and a source string for each. Every preset uses the
official codes' lean-adjoint convention: the base velocity at the next grid time and the SDE drift's Jacobian on
every cell (`adjoint_base_time="next"`, `adjoint_final_ode_step=False`).

**ε_KL.** The README points to "Table 4 of the paper" for per-domain KL budgets; that table is not in the TRQAM
repository (nor in the QAM one), so it was not available to us. TRQAM presets use the code default 1.0
(`agents/trqam.py` `get_config`), except cube-triple, 0.5, the README's published command.

Domains outside the papers' ten get their family's settings, per paper: manipulation (cube, scene, puzzle,
powderworld) as cube-double (sparse for puzzle and scene under the QAM protocol); navigation (pointmaze, antmaze,
humanoidmaze, antsoccer) with chunks of 1, τ = 3 for QAM and 30 for BAM (the value on 3 of the 4 navigation
domains of each sweep), the γ and ρ rules of each paper, 4x512 networks.
"""

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, cast, Literal

from ..._trust_region import DualDescent
from ._datagen_recipes import DatasetError, parse_dataset_name, SUPPORTED_HELP


Agent = Literal["trqam", "qam", "bam", "qame", "qamf", "sqam"]
Protocol = Literal["qam", "trqam"]
AGENTS: tuple[str, ...] = ("trqam", "qam", "bam", "qame", "qamf", "sqam")
PROTOCOLS: tuple[str, ...] = ("qam", "trqam")

QAM_SOURCE = "ColinQiyangLi/qam@f93efd2"
TRQAM_SOURCE = "yonghdong/trqam@02599ce"

BC_PRETRAIN_STEPS = 300_000
"""The TRQAM protocol's BC pre-training (trqam README:L71, L111, L122)."""

_NETS = (512, 512, 512, 512)
_LARGE = (1024, 1024, 1024, 1024)

_SWEEP = "qam experiments/reproduce.py"
_KL_DEFAULT = (
    "trqam agents/trqam.py:L448 (code default; the per-domain Table 4 the README cites at L73 is not in the repository)"
)

# `get_config()` of the code each (protocol, agent) ran with: file and line of each key. BAM exists in the QAM
# repository only and TRQAM in the TRQAM repository only.
_CONFIGS: dict[tuple[str, str], tuple[str, dict[str, int | str]]] = {
    ("qam", "qam"): (
        "qam agents/qam.py",
        dict(
            lr=412,
            actor_layer_norm=415,
            value_layer_norm=417,
            num_qs=424,
            tau=428,
            flow_steps=429,
            clip_adj=441,
            clip_grad=388,
            adjoint="92-99",
            edit_target_entropy=445,
        ),
    ),
    ("trqam", "qam"): (
        "trqam agents/qam.py",
        dict(
            lr=416,
            actor_layer_norm=419,
            value_layer_norm=421,
            num_qs=428,
            tau=432,
            flow_steps=433,
            clip_adj=445,
            clip_grad=392,
            adjoint="92-99",
        ),
    ),
    ("qam", "bam"): (
        "qam agents/bam.py",
        dict(
            lr=287,
            actor_layer_norm=290,
            value_layer_norm=292,
            num_qs=299,
            tau=303,
            flow_steps=304,
            clip_grad=264,
            running_cost=79,
        ),
    ),
    ("trqam", "trqam"): (
        "trqam agents/trqam.py",
        dict(
            lr=425,
            actor_layer_norm=428,
            value_layer_norm=430,
            num_qs=437,
            tau=441,
            flow_steps=442,
            clip_adj=457,
            clip_grad=390,
            adjoint="109-116",
            lam_scale=447,
            eta_lambda=449,
            kl_ema_coef=450,
            lambda_min=451,
            lambda_max=452,
            kl_clip_coef=453,
            initial_lam=405,
            dual_step=231,
            dual_call=262,
        ),
    ),
}
_CONFIGS[("trqam", "bam")] = _CONFIGS[("qam", "bam")]
# QAM-E and QAM-F are QAM's code with `edit_scale > 0` or `fql_alpha > 0` (the QAM repository).
for _protocol in PROTOCOLS:
    _CONFIGS[(_protocol, "qame")] = _CONFIGS[(_protocol, "qamf")] = _CONFIGS[("qam", "qam")]

# The QAM paper's sweep of its two variants (experiments/reproduce.py, the QAM_EDIT and QAM_FQL blocks):
# domain -> (τ, edit_scale or fql_alpha, line). A knob at 0 is plain QAM in the official code.
_QAME_SWEEP = {
    "puzzle-3x3": (1.0, 0.1, 142),
    "scene": (1.0, 0.0, 143),
    "cube-double": (1.0, 0.0, 144),
    "antmaze-large": (1.0, 0.1, 145),
    "humanoidmaze-medium": (3.0, 0.1, 146),
    "cube-triple": (3.0, 0.1, 148),
    "cube-quadruple": (3.0, 0.1, 149),
    "puzzle-4x4": (0.1, 0.9, 150),
    "antmaze-giant": (10.0, 0.1, 151),
    "humanoidmaze-large": (3.0, 0.1, 152),
}
_QAMF_SWEEP = {
    "puzzle-3x3": (3.0, 0.0, 155),
    "scene": (1.0, 300.0, 156),
    "cube-double": (1.0, 0.0, 157),
    "antmaze-large": (3.0, 30.0, 158),
    "humanoidmaze-medium": (1.0, 30.0, 159),
    "cube-triple": (10.0, 300.0, 161),
    "cube-quadruple": (0.3, 30.0, 162),
    "puzzle-4x4": (3.0, 3.0, 163),
    "antmaze-giant": (3.0, 30.0, 164),
    "humanoidmaze-large": (0.3, 30.0, 165),
}


def _variant_sweep(d: "DomainPreset", agent: str) -> tuple[float, float, str]:
    """QAM-E's or QAM-F's (τ, knob, source) on domain `d`; outside the ten domains, its family's (manipulation as
    cube-double, navigation as antmaze-large)."""
    sweep, name = (_QAME_SWEEP, "QAM_EDIT") if agent == "qame" else (_QAMF_SWEEP, "QAM_FQL")
    if d.domain in sweep:
        tau, knob, line = sweep[d.domain]
        return tau, knob, f"{_SWEEP}:L{line} ({name} sweep)"
    base = "antmaze-large" if d.horizon == 1 else "cube-double"
    tau, knob, line = sweep[base]
    return tau, knob, f"fallback: as {base}, {_SWEEP}:L{line} ({name} sweep)"


_CONFIGS[("qam", "trqam")] = _CONFIGS[("trqam", "trqam")]
# SQAM is TRQAM's code with the scalar adjoint and the value penalty (the authors' yonghdong/sqam, whose snapshot
# was not available to us: its defaults as its authors report them, everything else TRQAM's get_config).
for _protocol in PROTOCOLS:
    _CONFIGS[(_protocol, "sqam")] = _CONFIGS[("trqam", "trqam")]
SQAM_SOURCE = "yonghdong/sqam agents/sqam.py defaults as reported by its authors (repository not available here)"
SQAM_REPORTED = {
    "antmaze-large": 91,
    "antmaze-giant": 62,
    "humanoidmaze-medium": 94,
    "humanoidmaze-large": 54,
    "scene": 79,
    "puzzle-3x3": 100,
    "puzzle-4x4": 85,
    "cube-double": 58,
    "cube-triple": 72,
    "cube-quadruple": 54,
    "all": 75,
}
"""SQAM's published offline success (%, 1M steps, 8 seeds) on TRQAM's ten domains, beside its presets."""
QAME_REPORTED_TRQAM = {
    "antmaze-large": 86,
    "antmaze-giant": 6,
    "humanoidmaze-medium": 60,
    "humanoidmaze-large": 4,
    "scene": 63,
    "puzzle-3x3": 89,
    "puzzle-4x4": 54,
    "cube-double": 71,
    "cube-triple": 11,
    "cube-quadruple": 9,
    "all": 45,
}
"""QAM-E's offline success (%) as the TRQAM paper reports it (its baseline row), on the same ten domains."""


@dataclasses.dataclass(frozen=True)
class DomainPreset:
    """The published per-domain numbers of both papers for one OGBench domain (resolve them for an agent and a
    protocol with `paper`).

    - `qam_inv_temp`, `bam_inv_temp`: τ (λ = 1/τ) of QAM's and of BAM's sweep, with their sources.
    - `horizon`: action chunk length (5 manipulation, 1 navigation; the same in both papers).
    - `discount_qam`, `discount_trqam`: γ of the QAM sweep and of the TRQAM README.
    - `pessimism`: ρ (0 on humanoid mazes in both papers).
    - `kl_budget`: TRQAM's ε_KL per action step, with its source.
    - `large`: the TRQAM protocol's 4x1024 networks with actor LayerNorm (its 10M/100M-data domains).
    - `sparse`: the QAM protocol's sparse rewards, `-1[r != 0]` (puzzle and scene; never under TRQAM's).
    - `qam_dataset`, `trqam_dataset`: each protocol's dataset when not the standard 1M file.
    - `fallback`: empty for the papers' ten domains; else how this domain's settings were chosen.
    - `dataset_note`: why no official dataset is named (a dataset type or a visual variant the papers did not run).
    """

    domain: str
    qam_inv_temp: float
    qam_inv_temp_source: str
    bam_inv_temp: float
    bam_inv_temp_source: str
    horizon: int = 5
    discount_qam: float = 0.99
    discount_trqam: float = 0.995
    pessimism: float = 0.5
    kl_budget: float = 1.0
    kl_budget_source: str = _KL_DEFAULT
    large: bool = False
    sparse: bool = False
    qam_dataset: str | None = None
    trqam_dataset: str | None = None
    fallback: str = ""
    dataset_note: str = ""

    @property
    def inv_temp(self) -> float:
        """QAM's τ (kept for backward compatibility; BAM's is `bam_inv_temp`)."""
        return self.qam_inv_temp

    def paper(self, agent: str = "trqam", protocol: str | None = None) -> "PaperPreset":
        """This domain's `PaperPreset` for `agent` under `protocol` (see `paper_preset`)."""
        return _resolve(self, agent, protocol)

    def agent_settings(self, agent: str = "trqam", protocol: str | None = None) -> dict:
        """`AgentConfig` keyword arguments for `agent` under `protocol` (`None`: the agent's own paper)."""
        return self.paper(agent, protocol).agent_settings()


@dataclasses.dataclass(frozen=True)
class PaperPreset:
    """The official settings of one agent on one domain under one paper's protocol.

    - `settings`: `AgentConfig` keyword arguments (`agent_settings()` gives a fresh dict).
    - `sparse`: whether rewards are made sparse, `-1[r != 0]`, offline and online.
    - `pretrain_steps`: BC-only steps of the behaviour flow before RL (0: the QAM protocol, from random init).
    - `dataset`: the official dataset when not the standard 1M file (a folder of shards), else `None`.
    - `sources`: for every key of `settings` and for `sparse`, `pretrain_steps` and `dataset`, where the value
      comes from (`"qam experiments/reproduce.py:L135"`, `"trqam README:L150 (...)"`).
    """

    domain: str
    agent: Agent
    protocol: Protocol
    settings: Mapping[str, Any] = dataclasses.field(hash=False)
    sparse: bool
    pretrain_steps: int
    dataset: str | None
    sources: Mapping[str, str] = dataclasses.field(hash=False)

    def __post_init__(self):
        object.__setattr__(self, "settings", types.MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "sources", types.MappingProxyType(dict(self.sources)))
        missing = [k for k in (*self.settings, "sparse", "pretrain_steps", "dataset") if not self.sources.get(k)]
        if missing:
            raise ValueError(f"PaperPreset {self.domain}/{self.agent}: no source for {missing}.")

    def agent_settings(self) -> dict:
        """A fresh dict of the `AgentConfig` keyword arguments."""
        return dict(self.settings)

    def agent_config(self, **overrides):
        """The `AgentConfig` of these settings, `overrides` applied."""
        from .._config import AgentConfig

        return AgentConfig(**{**self.settings, **overrides})

    def table(self) -> str:
        """A text table: setting, value, source."""
        rows = [*_rows(self.settings), ("sparse", self.sparse), ("pretrain_steps", self.pretrain_steps)]
        rows.append(("dataset", self.dataset))
        width = max(len(k) for k, _ in rows)
        head = f"{self.domain} / {self.agent} / {self.protocol} protocol"
        return "\n".join([head] + [f"{k:<{width}}  {v!r:<26}  {self.sources[k]}" for k, v in rows])


def _fold_trust_region(flat: dict[str, Any]) -> dict[str, Any]:
    """`AgentConfig` keywords from the sourced rows: the `trust_region.*` rows become one `DualDescent`."""
    fields = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("trust_region.")}
    out = {k: v for k, v in flat.items() if not k.startswith("trust_region.")}
    if fields:
        out["trust_region"] = DualDescent(**fields)
    return out


def _rows(settings: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The settings as table rows, the trust region one row per field (`trust_region.kl_budget`, ...)."""
    rows = []
    for k, v in settings.items():
        if isinstance(v, DualDescent):
            rows += [(f"{k}.{f.name}", getattr(v, f.name)) for f in dataclasses.fields(v)]
        else:
            rows.append((k, v))
    return rows


def _check(agent: str, protocol: str | None) -> tuple[Agent, Protocol]:
    name = agent.lower() if isinstance(agent, str) else agent
    if name not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}: choose one of {', '.join(map(repr, AGENTS))}.")
    if protocol is None:
        return cast(Agent, name), "trqam" if name in ("trqam", "sqam") else "qam"
    proto = protocol.lower() if isinstance(protocol, str) else protocol
    if proto not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: choose None (the agent's own paper), 'qam' or 'trqam'.")
    return cast(Agent, name), cast(Protocol, proto)


def _resolve(d: DomainPreset, agent: str, protocol: str | None) -> PaperPreset:
    agent, protocol = _check(agent, protocol)
    cfg_file, line = _CONFIGS[(protocol, agent)]
    cfg = lambda key, what: f"{cfg_file}:L{line[key]} ({what})"  # noqa: E731
    fb = f"; fallback: {d.fallback}" if d.fallback else ""
    s: dict[str, tuple[Any, str]] = {}
    if protocol == "qam":
        s["horizon"] = (d.horizon, f"{_SWEEP}:L280-283 (1 on ant/humanoid mazes, else 5){fb}")
        s["discount"] = (d.discount_qam, f"{_SWEEP}:L292 (0.995 if giant or humanoid, else 0.99){fb}")
        s["pessimism"] = (d.pessimism, f"{_SWEEP}:L297 (0 on humanoidmaze, else 0.5){fb}")
        s["actor_hidden"] = (_NETS, f"{_SWEEP}:L294 (4x512 on every domain)")
        s["critic_hidden"] = (_NETS, f"{_SWEEP}:L295 (4x512 on every domain)")
        qam_cfg = _CONFIGS[("qam", "bam" if agent == "bam" else "qam")]
        s["actor_layer_norm"] = (
            False,
            f"{qam_cfg[0]}:L{qam_cfg[1]['actor_layer_norm']} (get_config; reproduce.py never overrides it)",
        )
        s["num_critics"] = (10, f"{_SWEEP}:L288 (agent.num_qs=10)")
        sparse = (d.sparse, f"{_SWEEP}:L290 (sparse on the '-sparse' domains of L255-265: puzzle, scene){fb}")
        pretrain = (0, "qam main.py:L139-145, L208 (agent created from random init; offline RL from step 1)")
        if d.qam_dataset:
            dataset = (d.qam_dataset, f"{_SWEEP}:L300-303 (--ogbench_dataset_dir, the 100M release)")
        else:
            dataset = (None, f"qam main.py:L99 (no --ogbench_dataset_dir: the standard 1M file){d.dataset_note}")
    else:
        s["horizon"] = (d.horizon, f"trqam README:L104-105 (1 on antmaze/humanoidmaze, 5 otherwise){fb}")
        s["discount"] = (d.discount_trqam, f"trqam README:L94-95 (0.995; 0.999 on humanoidmaze){fb}")
        s["pessimism"] = (d.pessimism, f"trqam README:L94-95 (0.5; 0 on humanoidmaze){fb}")
        if d.large:
            nets = "trqam README:L79, L84-85 (4x1024 on the 10M/100M-data domains)"
            s["actor_hidden"], s["critic_hidden"] = (_LARGE, nets), (_LARGE, nets)
            s["actor_layer_norm"] = (True, "trqam README:L79, L86 (actor LayerNorm on the 10M/100M-data domains)")
        else:
            nets = f"trqam README:L78 (4x512 on the 1M-data domains){fb}"
            s["actor_hidden"], s["critic_hidden"] = (_NETS, nets), (_NETS, nets)
            s["actor_layer_norm"] = (False, f"trqam README:L78 (actor_layer_norm=False on the 1M-data domains){fb}")
        s["num_critics"] = (10, cfg("num_qs", "get_config num_qs=10"))
        sparse = (False, "trqam README:L120, L142 (--sparse=False in every published command); main.py:L50")
        pretrain = (
            BC_PRETRAIN_STEPS,
            "trqam README:L71, L111-113, L122 (--bc_only=True --offline_steps=300000, loaded by every method)",
        )
        if d.trqam_dataset:
            dataset = (d.trqam_dataset, "trqam README:L79 and its Datasets section, L163-231")
        else:
            dataset = (None, f"trqam README:L78 (a 1M-data domain: the standard file){d.dataset_note}")
    if agent == "bam" and protocol == "trqam":
        note = " (BAM is not in the TRQAM paper, README:L113; its protocol applied by analogy)"
        pretrain = (pretrain[0], pretrain[1] + note)
    if agent == "qamf" and protocol == "trqam":
        note = " (QAM-F is not in the TRQAM paper; its protocol applied by analogy)"
        pretrain = (pretrain[0], pretrain[1] + note)
    s["critic_layer_norm"] = (True, cfg("value_layer_norm", "get_config value_layer_norm=True"))
    s["flow_steps"] = (10, cfg("flow_steps", "get_config"))
    s["learning_rate"] = (3e-4, cfg("lr", "get_config"))
    s["target_ema"] = (0.005, cfg("tau", "get_config tau, the target and base-flow Polyak rate"))
    s["grad_clip"] = (1.0, cfg("clip_grad", "optax.clip_by_global_norm(max_norm=1.0)"))
    if agent in ("qam", "bam"):
        if agent == "qam":
            tau, src = d.qam_inv_temp, d.qam_inv_temp_source
        else:
            tau, src = d.bam_inv_temp, d.bam_inv_temp_source
        if protocol == "trqam" and agent == "qam" and d.domain == "cube-triple":
            src = f"trqam README:L154 (cube-triple QAM command; = {src})"
        elif protocol == "trqam":
            src += " (the QAM paper's sweep: the TRQAM repository gives no τ here)"
        s["inv_temp"] = (tau, src)
    if agent in ("qame", "qamf"):
        tau, knob, src = _variant_sweep(d, agent)
        if protocol == "trqam":
            src += " (the QAM paper's sweep: the TRQAM repository gives none)"
        s["inv_temp"] = (tau, src)
        s["edit_scale" if agent == "qame" else "fql_alpha"] = (knob, src + (" (0: plain QAM)" if knob == 0 else ""))
        if agent == "qame":
            s["edit_target_entropy_multiplier"] = (0.5, cfg("edit_target_entropy", "get_config, × the chunk width"))
    if agent in ("qam", "trqam", "qame", "qamf", "sqam"):
        s["clip_adjoint_action"] = (True, cfg("clip_adj", "get_config clip_adj=True"))
    if agent in ("trqam", "sqam"):
        kl_note = " (published for the TRQAM protocol)" if protocol == "qam" else ""
        if agent == "sqam":
            s["trust_region.kl_budget"] = (0.5, f"{SQAM_SOURCE}: ε_KL = 0.5")
        else:
            s["trust_region.kl_budget"] = (d.kl_budget, d.kl_budget_source + kl_note)
        s["trust_region.lam_scale"] = (3.0, cfg("lam_scale", "get_config"))
        s["trust_region.step_size"] = (0.01, cfg("eta_lambda", "get_config eta_lambda"))
        s["trust_region.ema"] = (0.1, cfg("kl_ema_coef", "get_config kl_ema_coef"))
        s["trust_region.clip_coef"] = (2.0, cfg("kl_clip_coef", "get_config kl_clip_coef"))
        s["trust_region.lam_min"] = (0.01, cfg("lambda_min", "get_config lambda_min"))
        s["trust_region.lam_max"] = (100.0, cfg("lambda_max", "get_config lambda_max"))
        s["trust_region.lam_init"] = (1.0, cfg("initial_lam", "initial_lam = 1.0"))
        s["trust_region.log_space"] = (False, cfg("dual_step", "additive projected step on λ"))
        s["dual_update"] = (True, cfg("dual_call", "dual step after every update"))
    if agent == "sqam":
        s["bridge_states"] = (10, f"{SQAM_SOURCE}: 10 bridge states")
        penalty = 0.0 if d.domain == "cube-double" else 0.3
        s["value_penalty"] = (penalty, f"{SQAM_SOURCE}: c = 0.3, 0 on cube-double")
    if agent == "bam":
        s["bam_running_cost_scale"] = (
            None,
            cfg("running_cost", "2/σ² ‖v − v_β‖² summed over the steps without h: c = 1/h"),
        )
        adjoint = "qam agents/qam.py:L92-99 (QAM's adjoint; BAM has none, set for uniformity)"
    elif agent == "sqam":
        adjoint = f"unused: SQAM solves no adjoint ODE (TRQAM's value kept; {cfg('adjoint', 'its adjoint')})"
    else:
        adjoint = cfg("adjoint", "vjp of 2·v_β(x, t+h) − x/(t+h) on every cell, the last one included")
    s["adjoint_base_time"] = ("next", adjoint)
    s["adjoint_final_ode_step"] = (False, adjoint)
    return PaperPreset(
        domain=d.domain,
        agent=agent,
        protocol=protocol,
        settings=_fold_trust_region({k: v for k, (v, _) in s.items()}),
        sparse=sparse[0],
        pretrain_steps=pretrain[0],
        dataset=dataset[0],
        sources={
            **{k: src for k, (_, src) in s.items()},
            **(
                {"trust_region": f"{s['trust_region.step_size'][1]}; each field in its trust_region.* row"}
                if agent in ("trqam", "sqam")
                else {}
            ),
            "sparse": sparse[1],
            "pretrain_steps": pretrain[1],
            "dataset": dataset[1],
        },
    )


def _official(domain: str, qam: tuple[float, int], bam: tuple[float, int], **fields) -> DomainPreset:
    """One of the ten: τ and the line of its entry in the QAM and the BAM sweep of reproduce.py."""
    return DomainPreset(
        domain,
        qam_inv_temp=qam[0],
        qam_inv_temp_source=f"{_SWEEP}:L{qam[1]} (QAM sweep)",
        bam_inv_temp=bam[0],
        bam_inv_temp_source=f"{_SWEEP}:L{bam[1]} (BAM sweep)",
        **fields,
    )


_HUMANOID = dict(horizon=1, discount_qam=0.995, discount_trqam=0.999, pessimism=0.0)

PAPER_PRESETS: dict[str, DomainPreset] = {
    p.domain: p
    for p in (
        _official("puzzle-3x3", (3.0, 129), (10.0, 181), sparse=True),
        _official("scene", (1.0, 130), (10.0, 182), sparse=True),
        _official("cube-double", (1.0, 131), (10.0, 183)),
        _official("antmaze-large", (10.0, 132), (30.0, 184), horizon=1),
        _official("humanoidmaze-medium", (3.0, 133), (10.0, 185), **_HUMANOID),
        _official(
            "cube-triple",
            (3.0, 135),
            (30.0, 187),
            kl_budget=0.5,
            kl_budget_source="trqam README:L150 (cube-triple TRQAM command, --agent.kl_budget=0.5)",
            large=True,
            trqam_dataset="cube-triple-play-10m-v0",
        ),
        _official(
            "cube-quadruple",
            (1.0, 136),
            (10.0, 188),
            large=True,
            qam_dataset="cube-quadruple-play-100m-v0",
            trqam_dataset="cube-quadruple-play-100m-v0",
        ),
        _official(
            "antmaze-giant",
            (3.0, 137),
            (30.0, 189),
            horizon=1,
            discount_qam=0.995,
            large=True,
            trqam_dataset="antmaze-giant-navigate-10m-v0",
        ),
        _official("humanoidmaze-large", (3.0, 138), (30.0, 190), **_HUMANOID),
        _official(
            "puzzle-4x4",
            (30.0, 139),
            (30.0, 191),
            sparse=True,
            large=True,
            qam_dataset="puzzle-4x4-play-100m-v0",
            trqam_dataset="puzzle-4x4-play-10m-v0",
        ),
    )
}
"""The papers' ten domains (the QAM sweep's list, experiments/reproduce.py:L255-265)."""

_MANIPULATION = ("cube", "scene", "puzzle", "powderworld")


def _fallback(key: str, domain: str, variant: str) -> DomainPreset:
    if domain in _MANIPULATION:
        base = PAPER_PRESETS["cube-double"]
        return dataclasses.replace(
            base,
            domain=key,
            qam_inv_temp_source=f"fallback (manipulation): as cube-double, {base.qam_inv_temp_source}",
            bam_inv_temp_source=f"fallback (manipulation): as cube-double, {base.bam_inv_temp_source}",
            sparse=domain in ("puzzle", "scene"),
            fallback=f"{key} is not one of the papers' ten domains: manipulation family, as cube-double",
        )
    humanoid = domain == "humanoidmaze"
    return DomainPreset(
        key,
        qam_inv_temp=3.0,
        qam_inv_temp_source=f"fallback (navigation): τ on 3 of the 4 maze domains, {_SWEEP}:L133, L137, L138 (QAM)",
        bam_inv_temp=30.0,
        bam_inv_temp_source=f"fallback (navigation): τ on 3 of the 4 maze domains, {_SWEEP}:L184, L189, L190 (BAM)",
        horizon=1,
        discount_qam=0.995 if humanoid or variant == "giant" else 0.99,
        discount_trqam=0.999 if humanoid else 0.995,
        pessimism=0.0 if humanoid else 0.5,
        fallback=f"{key} is not one of the papers' ten domains: navigation family (chunks of 1)",
    )


_OFFICIAL_TYPE = {"antmaze": "navigate", "humanoidmaze": "navigate"}


def domain_preset(env: str) -> DomainPreset:
    """The `DomainPreset` of `env`: a key of `PAPER_PRESETS` (`cube-double`) or any OGBench dataset name
    (`cube-double-play-singletask-task2-v0`). Domains outside the papers' ten get their family's settings (see
    the module's docstring); a dataset type or visual variant the papers did not run keeps its domain's
    settings but names no official dataset."""
    if env in PAPER_PRESETS:
        return PAPER_PRESETS[env]
    try:
        parsed = parse_dataset_name(env)
    except DatasetError as err:
        # The parser's own reason (e.g. the valid task numbers), without its list of generatable datasets.
        reason = str(err).removesuffix(SUPPORTED_HELP).strip().removeprefix(f"{env!r}").lstrip(": ")
        reason = f"it {reason}" if reason.startswith("is ") else reason
        raise ValueError(
            f"no preset for {env!r}: {reason.rstrip('.')}. Give an OGBench dataset name or one of "
            f"{sorted(PAPER_PRESETS)}."
        ) from err
    key = f"{parsed.domain}-{parsed.variant}" if parsed.variant else parsed.domain
    if key not in PAPER_PRESETS:
        return _fallback(key, parsed.domain, parsed.variant)
    preset = PAPER_PRESETS[key]
    official = _OFFICIAL_TYPE.get(parsed.domain, "play")
    if (parsed.visual or parsed.dataset_type != official) and (preset.qam_dataset or preset.trqam_dataset):
        what = "visual" if parsed.visual else parsed.dataset_type
        note = f"; the papers ran {key}-{official} data, not {what}: no official large file for {parsed.file_stem}"
        preset = dataclasses.replace(preset, qam_dataset=None, trqam_dataset=None, dataset_note=note)
    return preset


def paper_preset(env: str, agent: str = "trqam", protocol: str | None = None) -> PaperPreset:
    """The official settings of `agent` (`trqam`, `qam`, `bam`, `qame`, `qamf`, `sqam`) on `env` (a domain key or
    any OGBench dataset name) under `protocol`: `None` for the paper that ran the agent (QAM paper for `qam`, `bam`,
    `qame` and `qamf`, TRQAM paper for `trqam` and `sqam`), `"qam"` or `"trqam"` to choose (`"trqam"`: the baseline
    inside the TRQAM comparison)."""
    _check(agent, protocol)
    return domain_preset(env).paper(agent, protocol)
