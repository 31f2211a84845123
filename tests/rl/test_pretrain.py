"""BC pre-training (the first stage of the TRQAM paper's pipeline): fine-tuning starts at policy = behaviour =
base = the pre-trained flow and a path KL of exactly 0; the BC update is Adam with a global-norm clip on the
official flow-matching loss; a complete checkpoint is reused without training, a stopped one resumes to the
uninterrupted result bit for bit, a checkpoint of other data / another flow / more steps is refused naming the
difference; every seed of a multi-seed run starts from the same flow with its own critic."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowsoc.rl._train as train_module
from flowsoc._checkpoint import CheckpointError as CoreCheckpointError, latest_checkpoint
from flowsoc.rl import AgentConfig, TRQAM
from flowsoc.rl._networks import VelocityMLP
from flowsoc.rl._pretrain import (
    bc_checkpoint_name,
    BCConfig,
    BCPretrainer,
    behaviour_flow_loss,
    dataset_fingerprint,
    pretrain_behaviour,
)
from flowsoc.rl._seeds import create_agents, unstack_agent
from flowsoc.rl._train import CheckpointError, TrainConfig
from flowsoc.rl.ogbench._data import ChunkBatch, sample_chunks, Transitions


OBS, ACT, N = 4, 2, 64
# learning_rate 1e-2: a visible drop of the flow-matching loss within a few dozen steps.
CONFIG = AgentConfig.small(
    horizon=2, actor_hidden=(8,), critic_hidden=(8,), num_critics=2, flow_steps=3, learning_rate=1e-2
)
BC = BCConfig.of(CONFIG)
PRE = TrainConfig(steps=40, batch_size=16, steps_per_dispatch=10, eval_every=0, checkpoint_every=0, progress=False)


def make_data(key, n=N):
    """Actions a deterministic function of the observation (learnable), two episodes."""
    obs = jr.normal(key, (n + 1, OBS))
    return Transitions(
        observations=obs[:-1],
        actions=jnp.tanh(obs[:-1, :ACT] - 0.5 * obs[:-1, ACT:]),
        rewards=-jnp.abs(obs[1:, 0]),
        masks=jnp.ones(n),
        terminals=jnp.zeros(n).at[n // 2 - 1].set(1.0).at[-1].set(1.0),
        next_observations=obs[1:],
    )


def leaves(tree):
    """The array leaves, PRNG keys as their data."""
    unkey = lambda x: jr.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x  # noqa: E731
    return [unkey(x) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_array))]


def assert_same(a, b):
    assert jax.tree.structure(eqx.filter(a, eqx.is_array)) == jax.tree.structure(eqx.filter(b, eqx.is_array))
    for x, y in zip(leaves(a), leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def differs(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


def read_rows(directory):
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data():
    return make_data(jr.key(0))


@pytest.fixture(scope="module")
def full(data, tmp_path_factory):
    """One uninterrupted pre-training of PRE.steps steps: (flow, directory)."""
    directory = tmp_path_factory.mktemp("bc") / "full"
    return pretrain_behaviour(data, BC, PRE, directory), directory


def hand_batch(seed, b=8):
    """A batch drawn by numpy (JAX's RNG would compile anew for every shape); chunks 0 and 3 cross an episode
    end."""
    rng = np.random.default_rng(seed)
    h = CONFIG.horizon
    valid = np.ones((b, h))
    valid[[0, 3], -1] = 0.0
    return ChunkBatch(
        observations=jnp.asarray(rng.standard_normal((b, OBS))),
        actions=jnp.asarray(np.clip(rng.standard_normal((b, h, ACT)), -1, 1)),
        rewards=jnp.zeros((b, h)),
        masks=jnp.ones((b, h)),
        terminals=jnp.zeros((b, h)),
        valid=jnp.asarray(valid),
        next_observations=jnp.asarray(rng.standard_normal((b, h, OBS))),
    )


# ---------------------------------------------------------------------------------- 1. KL = 0 at the start


@pytest.mark.slow  # one compiled TRQAM update: ~15-40 s on 2 shared CPU cores
def test_pretrained_flow_starts_finetuning_at_policy_equal_base_and_zero_kl(data, full):
    flow, directory = full
    assert jax.config.jax_enable_x64  # the comparisons below are in float64
    # Pre-training did something: the flow moved from its initialisation and the loss went down.
    fresh = BCPretrainer.create(jr.key(PRE.seed), OBS, ACT, BC).flow
    assert differs(flow, fresh)
    losses = [r["behaviour_loss"] for r in read_rows(directory) if r["kind"] == "train"]
    assert [r["step"] for r in read_rows(directory)] == [10, 20, 30, 40]
    assert losses[-1] < 0.8 * losses[0], losses

    agent = TRQAM.create(jr.key(5), OBS, ACT, CONFIG, pretrained=flow)
    for net in (agent.nets.policy, agent.nets.behaviour, agent.base):
        assert_same(net, flow)
    # The critic, its target and the optimiser are those of a from-scratch agent with the same key.
    plain = TRQAM.create(jr.key(5), OBS, ACT, CONFIG)
    assert_same(agent.nets.critic, plain.nets.critic)
    assert_same(agent.target_critic, plain.target_critic)
    assert all(not np.any(x) for x in jax.tree.leaves(agent.opt_state))  # Adam moments and count at 0
    assert int(agent.step) == 0 and float(agent.dual.lam) == CONFIG.trust_region.lam_init

    # The first fine-tuning update (compiled once, ~15 s on 2 CPU cores; eager costs more) measures KL 0.
    batch = sample_chunks(data, jr.key(3), 8, CONFIG.horizon, CONFIG.discount)
    update = eqx.filter_jit(lambda a, b: a.update(b))
    new, metrics = update(agent, batch)
    assert float(metrics["kl"]) == 0.0
    assert float(metrics["behaviour_loss"]) > 0.0 and int(new.step) == 1
    assert differs(new.nets.policy, flow)  # the update did move the policy
    _, plain_metrics = update(plain, batch)  # control (same compiled update): separate random inits, KL > 0
    assert float(plain_metrics["kl"]) > 1e-6


# ---------------------------------------------------------------------------------- 2. the update, by hand


def official_loss(flow, batch, key):
    """mean_b [valid_b · mean_d (v(t_b, x_t; s_b) − (a_b − x0_b))_d²], x_t = (1 − t) x0 + t a."""
    a = batch.actions.reshape(batch.actions.shape[0], -1)
    k_noise, k_time = jr.split(key)
    x0 = jr.normal(k_noise, a.shape, a.dtype)
    t = jr.uniform(k_time, a.shape[:1], a.dtype)

    def per_chunk(x0_b, a_b, t_b, s_b):
        v = flow(t_b, (1 - t_b) * x0_b + t_b * a_b, s_b)
        return jnp.mean((v - (a_b - x0_b)) ** 2)

    return jnp.mean(batch.valid[:, -1] * jax.vmap(per_chunk)(x0, a, t, batch.observations))


def test_behaviour_flow_loss_is_the_official_formula():
    flow = BCPretrainer.create(jr.key(1), OBS, ACT, BC).flow
    batch = hand_batch(2)
    library = behaviour_flow_loss  # eager: cheaper than compiling on 2 CPU cores
    loss, metrics = library(flow, batch, jr.key(4))
    expected = official_loss(flow, batch, jr.key(4))
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    assert float(metrics["behaviour_loss"]) == float(loss)
    # Invalid chunks do not count, not even their actions; valid ones do.
    changed = eqx.tree_at(lambda b: b.actions, batch, batch.actions.at[jnp.array([0, 3])].set(0.7))
    np.testing.assert_allclose(library(flow, changed, jr.key(4))[0], loss, rtol=1e-12)
    ones = eqx.tree_at(lambda b: b.valid, batch, jnp.ones_like(batch.valid))
    assert float(library(flow, ones, jr.key(4))[0]) > float(loss)


@pytest.mark.parametrize("clip", [0.05, None])
def test_bc_update_is_adam_with_global_norm_clip(clip):
    config = BCConfig.of(CONFIG.replace(grad_clip=clip))
    trainer = BCPretrainer.create(jr.key(1), OBS, ACT, config)
    params, static = eqx.partition(trainer.flow, eqx.is_inexact_array)
    lr, b1, b2, eps = config.learning_rate, 0.9, 0.999, 1e-8
    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    key = trainer.key
    value_and_grad = jax.value_and_grad(lambda p, b, k: official_loss(eqx.combine(p, static), b, k))
    for i in range(1, 4):
        batch = hand_batch(10 + i)
        key, sub = jr.split(key)
        loss, grads = value_and_grad(params, batch, sub)
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
        if clip is not None:
            assert float(norm) > clip  # the clip is active
            grads = jax.tree.map(lambda g: g * clip / norm, grads)
        m = jax.tree.map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
        v = jax.tree.map(lambda v_, g: b2 * v_ + (1 - b2) * g**2, v, grads)
        params = jax.tree.map(
            lambda p, m_, v_: p - lr * (m_ / (1 - b1**i)) / (jnp.sqrt(v_ / (1 - b2**i)) + eps), params, m, v
        )
        trainer, metrics = trainer.update(batch)  # eager, as the values are the same
        np.testing.assert_allclose(metrics["behaviour_loss"], loss, rtol=1e-12)
        np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-12)  # before the clip
        assert int(trainer.step) == i
        np.testing.assert_array_equal(jr.key_data(trainer.key), jr.key_data(key))
        for got, want in zip(leaves(trainer.flow), jax.tree.leaves(params), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------------------- 3.-4. reuse and resume


def test_complete_checkpoint_is_reused_without_training(data, full, capsys, monkeypatch):
    flow, directory = full
    before = {p.name: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}

    def no_training(*args, **kwargs):
        raise AssertionError("pretrain_behaviour trained although a complete checkpoint was there")

    monkeypatch.setattr(train_module, "train_offline", no_training)
    capsys.readouterr()
    again = pretrain_behaviour(data, BC, PRE, directory)
    assert "reusing" in capsys.readouterr().out
    assert_same(again, flow)
    after = {p.name: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
    assert after == before  # metrics.jsonl, checkpoint: untouched
    # The progress and the dispatch size are not part of the flow: reused too.
    assert_same(pretrain_behaviour(data, BC, PRE.replace(steps_per_dispatch=20, progress=True), directory), flow)


def test_stopped_pretraining_resumes_to_the_uninterrupted_flow(data, full, tmp_path, capsys, monkeypatch):
    flow, full_dir = full
    directory = tmp_path / "bc"
    original = train_module.fused_updates
    calls = []

    def interrupted(*args, **kwargs):  # Ctrl-C during the third dispatch (steps 21-30)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "fused_updates", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pretrain_behaviour(data, BC, PRE, directory)
    meta = json.loads((latest_checkpoint(directory / "checkpoint") / "meta.json").read_text())
    assert meta["step"] == 20 and meta["info"]["dataset"] == dataset_fingerprint(data)
    capsys.readouterr()
    resumed = pretrain_behaviour(data, BC, PRE, directory)
    assert "resuming" in capsys.readouterr().out
    assert_same(resumed, flow)
    assert read_rows(directory) == read_rows(full_dir)
    # A shorter pre-training continued to more steps is the longer one too (steps are not in the flow's key).
    short = tmp_path / "short"
    pretrain_behaviour(data, BC, PRE.replace(steps=20), short)
    assert_same(pretrain_behaviour(data, BC, PRE, short), flow)


# ---------------------------------------------------------------------------------- 5. refusals


def test_mismatched_checkpoints_are_refused(data, full, monkeypatch):
    flow, directory = full
    monkeypatch.setattr(train_module, "train_offline", None)  # nothing may train
    assert CheckpointError is CoreCheckpointError
    with pytest.raises(CheckpointError, match="pre-trained on other data"):
        pretrain_behaviour(make_data(jr.key(9)), BC, PRE, directory)
    with pytest.raises(CheckpointError, match=r"agent_config\.actor_hidden \(\[8\] saved, \[9\] now\)"):
        pretrain_behaviour(data, BCConfig.of(CONFIG.replace(actor_hidden=(9,))), PRE, directory)
    with pytest.raises(CheckpointError, match=r"agent_config\.horizon \(2 saved, 3 now\)"):
        pretrain_behaviour(data, BCConfig.of(CONFIG.replace(horizon=3)), PRE, directory)
    with pytest.raises(CheckpointError, match=r"agent_config\.learning_rate \(0\.01 saved, 0\.001 now\)"):
        pretrain_behaviour(data, BCConfig.of(CONFIG.replace(learning_rate=1e-3)), PRE, directory)
    with pytest.raises(CheckpointError, match=r"agent_config\.grad_clip \(1\.0 saved, None now\)"):
        pretrain_behaviour(data, BCConfig.of(CONFIG.replace(grad_clip=None)), PRE, directory)
    with pytest.raises(CheckpointError, match=r"batch_size \(16 saved, 32 now\)"):
        pretrain_behaviour(data, BC, PRE.replace(batch_size=32), directory)
    with pytest.raises(CheckpointError, match=r"seed \(0 saved, 1 now\)"):
        pretrain_behaviour(data, BC, PRE.replace(seed=1), directory)
    with pytest.raises(CheckpointError, match="holds 40 pre-training steps, more than the 20 asked for"):
        pretrain_behaviour(data, BC, PRE.replace(steps=20), directory)


def test_create_refuses_a_flow_of_another_shape():
    flow = BCPretrainer.create(jr.key(7), OBS, ACT, BC).flow  # the shape of a pre-trained one
    chunk = CONFIG.horizon * ACT
    wrong = VelocityMLP(OBS, chunk, (9,), key=jr.key(0))
    with pytest.raises(ValueError, match=r"hidden \(9,\).*hidden \(8,\)"):
        TRQAM.create(jr.key(0), OBS, ACT, CONFIG, pretrained=wrong)
    with pytest.raises(ValueError, match=r"flattened chunk 4.*flattened chunk 6"):
        TRQAM.create(jr.key(0), OBS, ACT, CONFIG.replace(horizon=3), pretrained=flow)
    with pytest.raises(ValueError, match=r"observation 4.*observation 5"):
        TRQAM.create(jr.key(0), OBS + 1, ACT, CONFIG, pretrained=flow)
    with pytest.raises(ValueError, match=r"layer_norm False.*layer_norm True"):
        TRQAM.create(jr.key(0), OBS, ACT, CONFIG.replace(actor_layer_norm=True), pretrained=flow)


def test_bc_checkpoint_name_holds_what_determines_the_flow():
    ln = BCConfig.of(CONFIG.replace(actor_hidden=(16, 16), actor_layer_norm=True))
    assert bc_checkpoint_name("cube-x", ln, 300, 64, 2) == "cube-x-h2-16x16-ln-300steps-b64-seed2"
    assert bc_checkpoint_name("cube-x", BC, 40, 16, 0) == "cube-x-h2-8-40steps-b16-seed0"


# ---------------------------------------------------------------------------------- 6. many seeds


def test_every_seed_starts_from_the_same_flow_with_its_own_critic():
    flow = BCPretrainer.create(jr.key(7), OBS, ACT, BC).flow  # any flow of the right shape
    agents = create_agents(TRQAM, [0, 1], OBS, ACT, CONFIG, pretrained=flow)
    seeds = [unstack_agent(agents, i) for i in range(2)]
    for i, agent in enumerate(seeds):
        for net in (agent.nets.policy, agent.nets.behaviour, agent.base):
            assert_same(net, flow)
        assert_same(agent, TRQAM.create(jr.key(i), OBS, ACT, CONFIG, pretrained=flow))
    assert differs(seeds[0].nets.critic, seeds[1].nets.critic)
    assert differs(seeds[0].target_critic, seeds[1].target_critic)
