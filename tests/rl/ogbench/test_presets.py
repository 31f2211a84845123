"""The per-paper presets (flowsoc.rl.ogbench.paper_preset): numbers spot-checked against the official sources (QAM
ColinQiyangLi/qam@f93efd2 experiments/reproduce.py; TRQAM yonghdong/trqam@02599ce README), and their use
in AgentConfig.paper."""

import dataclasses
import re

import pytest

from flowsoc.rl import AgentConfig
from flowsoc.rl.ogbench._presets import (
    AGENTS,
    BC_PRETRAIN_STEPS,
    domain_preset,
    paper_preset,
    PAPER_PRESETS,
    SQAM_SOURCE,
)


NEEDS_ADJOINT_FIELDS = pytest.mark.skipif(
    "adjoint_base_time" not in {f.name for f in dataclasses.fields(AgentConfig)},
    reason="AgentConfig has no adjoint_base_time field yet (being added concurrently)",
)

# reproduce.py: the QAM sweep (L129-139) and the BAM sweep (L181-191)
QAM_TAU = {
    "puzzle-3x3": 3,
    "scene": 1,
    "cube-double": 1,
    "antmaze-large": 10,
    "humanoidmaze-medium": 3,
    "cube-triple": 3,
    "cube-quadruple": 1,
    "antmaze-giant": 3,
    "humanoidmaze-large": 3,
    "puzzle-4x4": 30,
}
BAM_TAU = {
    "puzzle-3x3": 10,
    "scene": 10,
    "cube-double": 10,
    "antmaze-large": 30,
    "humanoidmaze-medium": 10,
    "cube-triple": 30,
    "cube-quadruple": 10,
    "antmaze-giant": 30,
    "humanoidmaze-large": 30,
    "puzzle-4x4": 30,
}
LARGE = ("cube-triple", "cube-quadruple", "puzzle-4x4", "antmaze-giant")
PROTOCOLS = (None, "qam", "trqam")


def test_the_ten_domains_of_the_papers():
    assert set(PAPER_PRESETS) == set(QAM_TAU) == set(BAM_TAU)
    for domain in QAM_TAU:
        navigation = "maze" in domain
        humanoid = "humanoid" in domain
        qam, bam, trqam = (paper_preset(domain, agent) for agent in ("qam", "bam", "trqam"))
        assert (qam.protocol, bam.protocol, trqam.protocol) == ("qam", "qam", "trqam")
        assert qam.settings["inv_temp"] == QAM_TAU[domain] and bam.settings["inv_temp"] == BAM_TAU[domain]
        assert "inv_temp" not in trqam.settings and "trust_region" not in qam.settings
        for p in (qam, bam, trqam):
            assert p.settings["horizon"] == (1 if navigation else 5)
            assert p.settings["pessimism"] == (0.0 if humanoid else 0.5)
            assert p.settings["num_critics"] == 10 and p.settings["critic_layer_norm"]
        for p in (qam, bam):  # QAM paper: 4x512, no actor LayerNorm, sparse puzzle/scene, no pre-training
            assert p.settings["discount"] == (0.995 if "giant" in domain or humanoid else 0.99)
            assert p.settings["actor_hidden"] == p.settings["critic_hidden"] == (512,) * 4
            assert not p.settings["actor_layer_norm"]
            assert p.sparse == domain.startswith(("puzzle", "scene"))
            assert p.pretrain_steps == 0
        large = domain in LARGE  # TRQAM paper: 4x1024 + actor LN on the four large domains, dense, BC 300K
        assert trqam.settings["discount"] == (0.999 if humanoid else 0.995)
        assert trqam.settings["actor_hidden"] == trqam.settings["critic_hidden"] == ((1024 if large else 512),) * 4
        assert trqam.settings["actor_layer_norm"] == large
        assert not trqam.sparse and trqam.pretrain_steps == BC_PRETRAIN_STEPS == 300_000
        assert trqam.settings["trust_region"].kl_budget == (0.5 if domain == "cube-triple" else 1.0)
        assert trqam.settings["trust_region"].lam_scale == 3.0 and "L447" in trqam.sources["trust_region.lam_scale"]


def test_spot_checks_with_their_sources():
    bam = paper_preset("antmaze-large-navigate-singletask-task3-v0", "bam")
    assert bam.settings["inv_temp"] == 30 and bam.sources["inv_temp"] == "qam experiments/reproduce.py:L184 (BAM sweep)"
    qam = paper_preset("puzzle-4x4-play-singletask-v0", "qam")
    assert qam.settings["inv_temp"] == 30 and "reproduce.py:L139" in qam.sources["inv_temp"]
    assert qam.sparse and "reproduce.py:L290" in qam.sources["sparse"]
    assert qam.dataset == "puzzle-4x4-play-100m-v0" and "L300-303" in qam.sources["dataset"]
    trqam = paper_preset("humanoidmaze-large-navigate-singletask-v0", "trqam")
    assert trqam.settings["discount"] == 0.999 and "trqam README:L94-95" in trqam.sources["discount"]
    cube3 = paper_preset("cube-triple", "trqam")
    assert cube3.settings["trust_region"].kl_budget == 0.5
    assert "README:L150" in cube3.sources["trust_region.kl_budget"]
    assert "trust_region.kl_budget  0.5" in cube3.table()
    assert cube3.dataset == "cube-triple-play-10m-v0" and "L122" in cube3.sources["pretrain_steps"]
    assert (
        "Table 4" in paper_preset("scene", "trqam").sources["trust_region.kl_budget"]
    )  # not published: the code default
    assert paper_preset("cube-triple", "qam").dataset is None  # the QAM sweep ran cube-triple on the 1M file


def test_baselines_under_the_trqam_protocol():
    qam = paper_preset("cube-triple-play-singletask-task2-v0", "qam", protocol="trqam")
    assert qam.settings["inv_temp"] == 3 and "trqam README:L154" in qam.sources["inv_temp"]
    assert qam.settings["actor_hidden"] == (1024,) * 4 and qam.settings["actor_layer_norm"]
    assert qam.settings["discount"] == 0.995 and not qam.sparse and qam.pretrain_steps == 300_000
    bam = paper_preset("puzzle-3x3", "bam", protocol="trqam")
    assert bam.settings["inv_temp"] == 10 and not bam.sparse and bam.settings["discount"] == 0.995
    assert "by analogy" in bam.sources["pretrain_steps"]
    hum = paper_preset("humanoidmaze-medium", "qam", protocol="TRQAM")
    assert (hum.settings["discount"], hum.settings["pessimism"]) == (0.999, 0.0)
    trqam = paper_preset("puzzle-4x4", "trqam", protocol="qam")  # TRQAM run the QAM paper's way
    assert trqam.sparse and trqam.pretrain_steps == 0 and trqam.settings["actor_hidden"] == (512,) * 4
    assert paper_preset("scene", "qam", protocol="qam") == paper_preset("scene", "qam")


def test_every_setting_has_a_source_and_the_lean_adjoint_convention():
    for domain in [*PAPER_PRESETS, "cube-single-play-singletask-task1-v0", "pointmaze-large-navigate-v0"]:
        for agent in AGENTS:
            for protocol in PROTOCOLS:
                p = paper_preset(domain, agent, protocol)
                assert p.settings["adjoint_base_time"] == "next" and p.settings["adjoint_final_ode_step"] is False
                for name in (*p.settings, "sparse", "pretrain_steps", "dataset"):  # each cites a file and line
                    if p.sources[name].startswith(SQAM_SOURCE):  # SQAM's own: its repository was not available
                        assert agent == "sqam" and name in ("bridge_states", "value_penalty", "trust_region"), name
                        continue
                    assert re.search(r"\b(qam|trqam) [\w/.]+:L\d+", p.sources[name]), (domain, agent, protocol, name)
                fields = 9 - 1 if "trust_region" in p.settings else 0  # the trust region: a row per DualDescent field
                assert p.table().count("\n") == len(p.settings) + fields + 3
                for name in p.sources:  # ... and each trust-region field, too
                    if p.sources[name].startswith(SQAM_SOURCE):
                        assert (agent, name) == ("sqam", "trust_region.kl_budget") or name in p.settings, name
                        continue
                    assert re.search(r"\b(qam|trqam) [\w/.]+:L\d+", p.sources[name]), (domain, agent, protocol, name)


@NEEDS_ADJOINT_FIELDS
def test_every_paper_preset_builds_an_agent_config():
    for domain in [*PAPER_PRESETS, "antsoccer-arena-navigate-v0", "puzzle-4x5-play-singletask-v0"]:
        for agent in AGENTS:
            for protocol in PROTOCOLS:
                p = paper_preset(domain, agent, protocol)
                config = AgentConfig.paper(domain, agent, protocol)
                assert config == p.agent_config() == AgentConfig(**p.agent_settings())
                assert config.adjoint_base_time == "next" and not config.adjoint_final_ode_step


@NEEDS_ADJOINT_FIELDS
def test_agent_config_paper_from_a_dataset_name():
    trqam = AgentConfig.paper("cube-triple-play-singletask-task2-v0")
    assert trqam.trust_region.kl_budget == 0.5 and trqam.horizon == 5 and trqam.discount == 0.995
    assert trqam.actor_hidden == (1024,) * 4 and trqam.critic_hidden == (1024,) * 4 and trqam.actor_layer_norm
    qam = AgentConfig.paper("humanoidmaze-large-navigate-singletask-v0", agent="qam")
    assert qam.inv_temp == 3 and qam.discount == 0.995 and qam.pessimism == 0 and qam.horizon == 1
    assert qam.actor_hidden == (512,) * 4 and not qam.actor_layer_norm
    assert AgentConfig.paper("puzzle-4x4", "qam").actor_hidden == (512,) * 4  # never large under QAM
    assert AgentConfig.paper("scene").with_kl_budget(2.0).trust_region.kl_budget == 2.0
    assert AgentConfig.paper("cube-double", "bam", protocol="trqam", inv_temp=5.0).inv_temp == 5.0


def test_domains_outside_the_papers_use_their_family_per_paper():
    cube = domain_preset("cube-single-play-singletask-task1-v0")
    assert (cube.inv_temp, cube.bam_inv_temp, cube.horizon, cube.sparse, cube.large) == (1.0, 10.0, 5, False, False)
    assert cube.fallback and "fallback" in paper_preset("cube-single-play-v0", "qam").sources["horizon"]
    assert paper_preset("puzzle-4x5-play-singletask-v0", "qam").sparse
    assert not paper_preset("puzzle-4x5-play-singletask-v0", "trqam").sparse
    maze = domain_preset("pointmaze-large-navigate-singletask-v0")
    assert (maze.horizon, maze.inv_temp, maze.bam_inv_temp, maze.pessimism) == (1, 3.0, 30.0, 0.5)
    hum = paper_preset("humanoidmaze-giant-navigate-v0", "trqam")
    assert (hum.settings["discount"], hum.settings["pessimism"]) == (0.999, 0.0)
    assert hum.settings["actor_hidden"] == (512,) * 4
    assert paper_preset("humanoidmaze-giant-navigate-v0", "qam").settings["discount"] == 0.995
    # a dataset type the papers did not run keeps its domain's settings but names no official dataset
    stitch = paper_preset("antmaze-giant-stitch-singletask-v0", "trqam")
    assert stitch.settings["actor_hidden"] == (1024,) * 4 and stitch.dataset is None
    assert "stitch" in stitch.sources["dataset"]


def test_backward_compatible_domain_preset():
    preset = domain_preset("cube-triple-play-singletask-task2-v0")
    assert preset.agent_settings("qam") == paper_preset("cube-triple", "qam").agent_settings()
    assert preset.agent_settings() == paper_preset("cube-triple", "trqam").agent_settings()
    assert domain_preset("puzzle-3x3").sparse and not domain_preset("cube-double").sparse  # the QAM protocol's
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.sparse = True  # pyright: ignore[reportAttributeAccessIssue]
    with pytest.raises(TypeError):
        paper_preset("scene").settings["horizon"] = 3  # pyright: ignore[reportIndexIssue]


def test_bad_names_are_one_clear_line():
    cases = [
        (lambda: domain_preset("cheetah"), "no preset for 'cheetah'"),
        (
            lambda: domain_preset("scene").agent_settings("sac"),
            "unknown agent 'sac': choose one of 'trqam', 'qam', 'bam', 'qame', 'qamf', 'sqam'.",
        ),
        (lambda: paper_preset("scene", "qam", protocol="iql"), "unknown protocol 'iql'"),
        (lambda: AgentConfig.paper("scene", "sac"), "unknown agent 'sac'"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("call", [domain_preset, paper_preset])
def test_unknown_task_number_gives_the_parsers_reason(call):
    """`-task9` does not exist: the message says which task numbers do (the parser's reason), on one line."""
    with pytest.raises(ValueError) as err:
        call("cube-double-play-singletask-task9-v0")
    msg = str(err.value)
    assert msg.startswith("no preset for 'cube-double-play-singletask-task9-v0': there is no task9")
    assert "tasks 1 to 5" in msg and "cube-double-play-singletask-v0 for the default, task2" in msg
    assert "Generatable here" not in msg and "\n" not in msg
    with pytest.raises(ValueError, match="no preset for 'cheetah': it is not an OGBench dataset name"):
        call("cheetah")


def test_qam_e_and_qam_f_presets_are_the_qam_sweep_with_sources():
    """τ / edit_scale and τ / fql_alpha per domain, as the QAM code's experiments/reproduce.py QAM_EDIT and QAM_FQL
    blocks give them (the issue's table), each with its line; outside the ten domains, the family's."""
    edit = {"puzzle-3x3": (1, 0.1), "scene": (1, 0), "cube-double": (1, 0), "antmaze-large": (1, 0.1),
            "humanoidmaze-medium": (3, 0.1), "cube-triple": (3, 0.1), "cube-quadruple": (3, 0.1),
            "puzzle-4x4": (0.1, 0.9), "antmaze-giant": (10, 0.1), "humanoidmaze-large": (3, 0.1)}  # fmt: skip
    fql = {"puzzle-3x3": (3, 0), "scene": (1, 300), "cube-double": (1, 0), "antmaze-large": (3, 30),
           "humanoidmaze-medium": (1, 30), "cube-triple": (10, 300), "cube-quadruple": (0.3, 30),
           "puzzle-4x4": (3, 3), "antmaze-giant": (3, 30), "humanoidmaze-large": (0.3, 30)}  # fmt: skip
    for domain, (tau, scale) in edit.items():
        p = paper_preset(domain, "qame")
        assert p.protocol == "qam" and (p.settings["inv_temp"], p.settings["edit_scale"]) == (tau, scale), domain
        assert re.search(r"reproduce.py:L1(4[2-9]|5[0-2]) \(QAM_EDIT sweep\)", p.sources["edit_scale"]), domain
        assert (
            p.settings["edit_target_entropy_multiplier"] == 0.5
            and "L445" in p.sources["edit_target_entropy_multiplier"]
        )
    for domain, (tau, alpha) in fql.items():
        p = paper_preset(domain, "qamf")
        assert (p.settings["inv_temp"], p.settings["fql_alpha"]) == (tau, alpha), domain
        assert re.search(r"reproduce.py:L1(5[5-9]|6[0-5]) \(QAM_FQL sweep\)", p.sources["fql_alpha"]), domain
    assert (
        "fallback: as cube-double" in paper_preset("cube-single-play-singletask-task1-v0", "qame").sources["edit_scale"]
    )
    assert paper_preset("pointmaze-large-navigate-v0", "qamf").settings["fql_alpha"] == 30  # as antmaze-large
    assert AgentConfig.paper("puzzle-4x4", "qame").edit_scale == 0.9
    assert "not in the TRQAM paper" in paper_preset("scene", "qamf", "trqam").sources["pretrain_steps"]


def test_sqam_presets_trqam_protocol_budget_penalty_and_reported_numbers():
    """SQAM runs under the TRQAM protocol with ε = 0.5, 10 bridge states and c = 0.3 (0 on cube-double), TRQAM's
    trust region otherwise; its published numbers sit beside the presets (the "all" column is their mean)."""
    from flowsoc.rl.ogbench import QAME_REPORTED_TRQAM, SQAM_REPORTED

    for domain in PAPER_PRESETS:
        p = paper_preset(domain, "sqam")
        trqam = paper_preset(domain, "trqam")
        assert p.protocol == "trqam" and p.pretrain_steps == trqam.pretrain_steps
        config = p.agent_config()
        assert config.trust_region == dataclasses.replace(trqam.agent_config().trust_region, kl_budget=0.5)
        assert config.bridge_states == 10 and config.value_penalty == (0.0 if domain == "cube-double" else 0.3)
        assert "sqam" in p.sources["value_penalty"] and "sqam" in p.sources["trust_region.kl_budget"]
    for reported in (SQAM_REPORTED, QAME_REPORTED_TRQAM):
        assert set(reported) == {*PAPER_PRESETS, "all"}
        mean = sum(v for k, v in reported.items() if k != "all") / 10
        assert abs(mean - reported["all"]) <= 0.5 + 1e-9, mean
