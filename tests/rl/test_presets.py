"""The per-domain paper presets (spec.md §6) and their use in AgentConfig.paper."""

import pytest

from flowsoc.rl import AgentConfig
from flowsoc.rl.presets import domain_preset, PAPER_PRESETS


TAUS = {
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


def test_the_ten_domains_of_the_paper():
    assert set(PAPER_PRESETS) == set(TAUS)
    for domain, tau in TAUS.items():
        preset = PAPER_PRESETS[domain]
        navigation = "maze" in domain
        assert preset.inv_temp == tau
        assert preset.horizon == (1 if navigation else 5)
        assert preset.sparse == domain.startswith(("puzzle", "scene"))
        assert preset.large == (domain in ("cube-triple", "cube-quadruple", "puzzle-4x4", "antmaze-giant"))
        assert preset.pessimism == (0.0 if "humanoid" in domain else 0.5)
        assert preset.discount_qam == (0.995 if "giant" in domain or "humanoid" in domain else 0.99)
        assert preset.discount_trqam == (0.999 if "humanoid" in domain else 0.995)


def test_agent_config_paper_from_a_dataset_name():
    trqam = AgentConfig.paper("cube-triple-play-singletask-task2-v0")
    assert trqam.kl_budget == 0.5 and trqam.horizon == 5 and trqam.discount == 0.995
    assert trqam.actor_hidden == (1024,) * 4 and trqam.critic_hidden == (1024,) * 4 and trqam.actor_layer_norm
    qam = AgentConfig.paper("humanoidmaze-large-navigate-singletask-v0", agent="qam")
    assert qam.inv_temp == 3 and qam.discount == 0.995 and qam.pessimism == 0 and qam.horizon == 1
    assert qam.actor_hidden == (512,) * 4 and not qam.actor_layer_norm
    assert AgentConfig.paper("scene", kl_budget=2.0).kl_budget == 2.0


def test_domains_outside_the_paper_use_their_family():
    cube = domain_preset("cube-single-play-singletask-task1-v0")
    assert (cube.inv_temp, cube.horizon, cube.sparse, cube.large) == (1.0, 5, False, False)
    assert domain_preset("puzzle-4x5-play-singletask-v0").sparse
    maze = domain_preset("pointmaze-large-navigate-singletask-v0")
    assert (maze.horizon, maze.inv_temp, maze.pessimism) == (1, 3.0, 0.5)


def test_bad_names():
    with pytest.raises(ValueError, match="no preset for 'cheetah'"):
        domain_preset("cheetah")
    with pytest.raises(ValueError, match="unknown agent 'sac'"):
        domain_preset("scene").agent_settings("sac")
