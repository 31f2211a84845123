"""Many seeds in one program: the vmapped block equals each seed run alone, sharding the seed axis
over 4 (forced CPU) devices equals the unsharded program, the dataset is not copied per seed, the
multi-seed loop resumes exactly and equals single-seed runs, statistics, and clear errors.

Run as a script (`python tests/rl/test_seeds.py`), this file performs the sharded check; the test
starts it in a subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=4`, which must be
set before JAX initialises.
"""

import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from flowsoc.rl import AgentConfig, QAM, TRQAM
from flowsoc.rl._seeds import (
    aggregate,
    create_agents,
    final_summary,
    fused_updates_seeds,
    mean_rows,
    replicate,
    seed_mesh,
    shard_seeds,
    stack_agents,
    t_quantile_975,
    train_offline_seeds,
    unstack_agent,
)
from flowsoc.rl._train import CheckpointError, fused_updates, NonFiniteLossError, train_offline, TrainConfig
from flowsoc.rl.ogbench._data import Transitions


OBS, ACT, N = 4, 2, 61  # N: a row count no parameter shape uses, to spot copies of the dataset
CONFIG = AgentConfig.small(horizon=2, actor_hidden=(8,), critic_hidden=(8,), num_critics=2, flow_steps=3)
SEEDS = [3, 11, 7]
TRAIN = TrainConfig(steps=6, batch_size=4, steps_per_dispatch=3, eval_every=3, checkpoint_every=3, progress=False)


def make_data(key, n=N):
    k = jr.split(key, 4)
    obs = jr.normal(k[0], (n + 1, OBS))
    return Transitions(
        observations=obs[:-1],
        actions=jnp.clip(jr.normal(k[1], (n, ACT)), -1, 1),
        rewards=-jnp.abs(jr.normal(k[2], (n,))),
        masks=jnp.ones(n),
        terminals=jnp.zeros(n).at[n // 2 - 1].set(1.0).at[-1].set(1.0),
        next_observations=obs[1:],
    )


def arrays(tree):
    """Every array leaf, PRNG keys as their raw data."""
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_array))
    return [jr.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x for x in leaves]


@eqx.filter_jit
def _mean_action(agent, key):
    return jnp.mean(agent.sample_actions(jnp.ones((3, OBS)), key))


def fake_evaluator(agent, step, seed):
    """A deterministic function of the parameters and the seed, standing in for the environment."""
    value = float(_mean_action(agent, jr.fold_in(jr.key(seed), step)))
    return {"policy/success": value % 1.0, "policy/return": value}


@pytest.fixture(scope="module")
def data():
    return make_data(jr.key(0))


def test_vmapped_seeds_equal_each_seed_alone(data):
    agents = create_agents(TRQAM, SEEDS, OBS, ACT, CONFIG)
    out, metrics = fused_updates_seeds(agents, data, jnp.asarray(SEEDS, jnp.uint32), 3, 4)
    assert metrics["kl"].shape == (3, 3) and out.step.tolist() == [3, 3, 3]
    for i, s in enumerate(SEEDS):
        alone = TRQAM.create(jr.key(s), OBS, ACT, CONFIG)
        for a, b in zip(arrays(unstack_agent(agents, i)), arrays(alone)):  # create_agents stacks create
            np.testing.assert_array_equal(a, b)
        single, m = fused_updates(alone, data, jnp.asarray(s, jnp.uint32), 3, 4)
        # Same batches, same keys, same arithmetic: equal up to the order XLA picks for the batched
        # matmuls and reductions of the vmapped program (float64: relative differences below 1e-13).
        for k in m:
            np.testing.assert_allclose(metrics[k][i], m[k], rtol=1e-9, atol=1e-12, err_msg=k)
        for a, b in zip(arrays(unstack_agent(out, i)), arrays(single)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def _avals(jaxpr):
    """The abstract values of every variable of `jaxpr` and of the jaxprs nested in it."""
    yield from (v.aval for v in (*jaxpr.invars, *jaxpr.constvars))
    for eqn in jaxpr.eqns:
        yield from (v.aval for v in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _avals(inner)


def test_dataset_is_not_copied_per_seed(data):
    agents = create_agents(TRQAM, SEEDS, OBS, ACT, CONFIG)
    seeds = jnp.asarray(SEEDS, jnp.uint32)
    closed, _, _ = eqx.filter_make_jaxpr(fused_updates_seeds)(agents, data, seeds, 3, 4)
    shapes = {tuple(getattr(a, "shape", ())) for a in _avals(closed.jaxpr)}
    assert (N, OBS) in shapes and (len(SEEDS), 8, OBS) in shapes  # the data unbatched, the agents stacked
    # no array anywhere in the program holds a per-seed copy of the dataset's rows
    assert not [s for s in shapes if len(s) >= 2 and s[0] == len(SEEDS) and N in s[1:]]


def test_train_offline_seeds_resume_and_single_seed_runs(data, tmp_path):
    agents = create_agents(TRQAM, SEEDS, OBS, ACT, CONFIG)
    full = train_offline_seeds(agents, data, TRAIN, SEEDS, evaluator=fake_evaluator, run_dir=tmp_path / "full")
    part = train_offline_seeds(
        agents, data, TRAIN.replace(steps=3), SEEDS, evaluator=fake_evaluator, run_dir=tmp_path / "part"
    )
    assert part.agent.step.tolist() == [3, 3, 3]
    resumed = train_offline_seeds(
        agents, data, TRAIN, SEEDS, evaluator=fake_evaluator, run_dir=tmp_path / "part", resume=True
    )
    for a, b in zip(arrays(full.agent), arrays(resumed.agent)):
        np.testing.assert_array_equal(a, b)
    assert resumed.rows == full.rows
    on_disk = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert on_disk == full.rows
    assert [(r["step"], r["seed"]) for r in full.evals] == [(s, seed) for s in (0, 3, 6) for seed in SEEDS]
    assert len(full.train) == 2 * len(SEEDS)
    meta = json.loads((tmp_path / "full" / "checkpoint" / "ckpt-0000000006" / "meta.json").read_text())
    assert meta["seeds"] == SEEDS and meta["step"] == 6
    assert (tmp_path / "full" / "learning_curve.png").stat().st_size > 0

    # seed 11's rows and agent are those of a single-seed run with that seed
    alone = train_offline(
        TRQAM.create(jr.key(11), OBS, ACT, CONFIG),
        data,
        TRAIN.replace(seed=11),
        evaluator=lambda a, s: fake_evaluator(a, s, 11),
    )
    mine = [{k: v for k, v in r.items() if k != "seed"} for r in full.rows if r["seed"] == 11]
    assert len(mine) == len(alone.rows)
    for r, q in zip(mine, alone.rows):
        assert r.keys() == q.keys() and r["step"] == q["step"]
        values = [(r[k], q[k]) for k in r if k not in ("kind", "step")]
        np.testing.assert_allclose(*zip(*values), rtol=1e-9, atol=1e-12)
    for a, b in zip(arrays(full.agent_of(11)), arrays(alone.agent)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)

    # statistics over seeds
    summary = final_summary(full.rows)["policy/return"]
    values = [r["policy/return"] for r in full.evals if r["step"] == 6]
    assert summary["seeds"] == sorted(SEEDS) and summary["mean"] == pytest.approx(np.mean(values))
    assert [r["step"] for r in mean_rows(full.rows) if r["kind"] == "eval"] == [0, 3, 6]

    # a resume with another seed list is refused
    with pytest.raises(CheckpointError, match="seeds"):
        other = create_agents(TRQAM, [3, 11, 8], OBS, ACT, CONFIG)
        train_offline_seeds(other, data, TRAIN, [3, 11, 8], run_dir=tmp_path / "full", resume=True)


def test_non_finite_stop_names_the_seed(data, tmp_path):
    agents = create_agents(TRQAM, SEEDS, OBS, ACT, CONFIG)
    broken = eqx.tree_at(lambda a: a.nets.critic, agents, replace_fn=lambda c: _nan_in_seed(c, 1))
    with pytest.raises(NonFiniteLossError, match=r"in seed 11;.*step 0\) is saved in .*checkpoint") as err:
        train_offline_seeds(broken, data, TRAIN, SEEDS, run_dir=tmp_path / "run")
    assert "seed 3" not in str(err.value) and "seed 7" not in str(err.value)


def _nan_in_seed(module, i):
    arrays_, static = eqx.partition(module, eqx.is_inexact_array)
    return eqx.combine(jax.tree.map(lambda x: x.at[i].set(jnp.nan), arrays_), static)


def test_aggregate_against_hand_computation():
    values = [0.2, 0.5, 0.9, 0.4]
    s = np.sqrt(sum((v - 0.5) ** 2 for v in values) / 3)
    mean, half = aggregate(values)
    assert mean == pytest.approx(0.5) and half == pytest.approx(3.182 * s / 2)
    assert aggregate([0.7])[0] == 0.7 and np.isnan(aggregate([0.7])[1])
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (*range(1, 31), 40, 60, 120):
        assert t_quantile_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-3)
    with pytest.raises(ValueError, match="no values"):
        aggregate([])


def test_bad_inputs_are_refused(data, tmp_path):
    a = TRQAM.create(jr.key(0), OBS, ACT, CONFIG)
    with pytest.raises(ValueError, match=r"another AgentConfig than agent 0: trust_region\.kl_budget \(1.0 vs 0.3\)"):
        stack_agents([a, TRQAM.create(jr.key(1), OBS, ACT, CONFIG.with_kl_budget(0.3))])
    with pytest.raises(ValueError, match="agent 1 is a QAM"):
        stack_agents([a, QAM.create(jr.key(1), OBS, ACT, CONFIG)])
    with pytest.raises(ValueError, match="other array shapes"):
        stack_agents([a, TRQAM.create(jr.key(1), OBS + 1, ACT, CONFIG)])
    with pytest.raises(ValueError, match="distinct"):
        create_agents(TRQAM, [1, 1], OBS, ACT, CONFIG)
    agents = stack_agents([a, a])
    with pytest.raises(IndexError, match="out of range for 2 seeds"):
        unstack_agent(agents, 2)
    with pytest.raises(ValueError, match="one distinct seed per stacked agent"):
        train_offline_seeds(agents, data, TRAIN, [0, 1, 2])
    with pytest.raises(ValueError, match="axis named 'seeds'"):
        shard_seeds(agents, jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("batch",)))


def test_sharded_over_four_devices_equals_unsharded():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sharded == unsharded" in proc.stdout


def sharded_check():
    """The body of the sharded test, run in a process that sees 4 CPU devices."""
    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 4, jax.devices()
    data = make_data(jr.key(0))
    seeds = [0, 5, 2, 9]
    agents = create_agents(TRQAM, seeds, OBS, ACT, CONFIG)
    seed_array = jnp.asarray(seeds, jnp.uint32)
    reference, ref_metrics = fused_updates_seeds(agents, data, seed_array, 3, 4)

    mesh = seed_mesh()
    sharded_agents, sharded_seeds = shard_seeds(agents, mesh), shard_seeds(seed_array, mesh)
    sharded_data = replicate(data, mesh)
    for x in jax.tree.leaves(sharded_data):  # one whole copy of the dataset on each device
        assert len(x.sharding.device_set) == 4 and all(s.data.shape == x.shape for s in x.addressable_shards)
    out, metrics = fused_updates_seeds(sharded_agents, sharded_data, sharded_seeds, 3, 4)
    for x in [*jax.tree.leaves(eqx.filter(out, eqx.is_array)), *metrics.values()]:
        assert len(x.sharding.device_set) == 4, x.sharding
        assert [s.data.shape[0] for s in x.addressable_shards] == [1, 1, 1, 1], x.sharding
        assert len({s.device for s in x.addressable_shards}) == 4
    for a, b in zip(arrays(out), arrays(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    for k in metrics:
        np.testing.assert_allclose(np.asarray(metrics[k]), np.asarray(ref_metrics[k]), rtol=1e-9, atol=1e-12)

    # the training loop with a mesh equals the loop without one
    config = TRAIN.replace(steps=3, eval_every=0, checkpoint_every=0)
    plain = train_offline_seeds(agents, data, config, seeds)
    on_mesh = train_offline_seeds(agents, data, config, seeds, mesh=mesh)
    assert len(jax.tree.leaves(on_mesh.agent)[0].sharding.device_set) == 4
    for a, b in zip(arrays(on_mesh.agent), arrays(plain.agent)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)

    try:
        shard_seeds(create_agents(TRQAM, [0, 1, 2], OBS, ACT, CONFIG), mesh)
    except ValueError as err:
        assert "3 seeds cannot be split evenly over 4 devices" in str(err), err
    else:
        raise AssertionError("3 seeds over 4 devices was accepted")
    print("sharded == unsharded")


if __name__ == "__main__":
    sharded_check()
