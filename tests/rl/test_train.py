"""The offline training loop: fused dispatches equal single updates, resume equals an uninterrupted
run, corrupt or mismatched checkpoints fail clearly, a NaN stops the run naming the step and the
saved state, metrics files and the figure are written."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from flowsoc import latest_checkpoint
from flowsoc.rl import AgentConfig, QAM, TRQAM
from flowsoc.rl._train import (
    batch_key,
    CheckpointError,
    fused_updates,
    load_agent_checkpoint,
    load_transitions,
    MetricsLog,
    NonFiniteLossError,
    train_offline,
    TrainConfig,
)
from flowsoc.rl.ogbench._data import sample_chunks, Transitions


OBS, ACT, N = 4, 2, 64
CONFIG = AgentConfig.small(horizon=2, actor_hidden=(8,), critic_hidden=(8,), num_critics=2, flow_steps=3)
TRAIN = TrainConfig(steps=12, batch_size=4, steps_per_dispatch=3, eval_every=6, checkpoint_every=6, progress=False)


def make_data(key, n=N, nan_row=None):
    k = jr.split(key, 4)
    obs = jr.normal(k[0], (n + 1, OBS))
    rewards = -jnp.abs(jr.normal(k[2], (n,)))
    if nan_row is not None:
        rewards = rewards.at[nan_row].set(jnp.nan)
    return Transitions(
        observations=obs[:-1],
        actions=jnp.clip(jr.normal(k[1], (n, ACT)), -1, 1),
        rewards=rewards,
        masks=jnp.ones(n),
        terminals=jnp.zeros(n).at[n // 2 - 1].set(1.0).at[-1].set(1.0),
        next_observations=obs[1:],
    )


def leaves(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))


def fake_evaluator(agent, step):
    """A deterministic function of the parameters, standing in for the environment."""
    value = float(jnp.mean(agent.sample_actions(jnp.ones((3, OBS)), jr.key(step))))
    return {"policy/success": value % 1.0, "policy/return": value, "policy/length": 1.0}


@pytest.fixture(scope="module")
def data():
    return make_data(jr.key(0))


def test_fused_dispatch_equals_sequential_updates(data):
    agent = TRQAM.create(jr.key(1), OBS, ACT, CONFIG)
    seed = jnp.asarray(7, jnp.uint32)
    fused, metrics = fused_updates(agent, data, seed, 3, 4)
    step = eqx.filter_jit(lambda a, b: a.update(b))
    sequential = agent
    kls = []
    for i in range(3):
        batch = sample_chunks(data, batch_key(seed, i), 4, CONFIG.horizon, CONFIG.discount)
        sequential, m = step(sequential, batch)
        kls.append(m["kl"])
    assert int(fused.step) == 3 and metrics["kl"].shape == (3,)
    np.testing.assert_allclose(metrics["kl"], jnp.stack(kls), rtol=1e-10)
    for a, b in zip(leaves(fused), leaves(sequential)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert float(fused.dual.lam) == pytest.approx(float(sequential.dual.lam), rel=1e-12)


def test_resume_equals_uninterrupted_run(data, tmp_path):
    agent = TRQAM.create(jr.key(2), OBS, ACT, CONFIG)
    full = train_offline(agent, data, TRAIN, evaluator=fake_evaluator, run_dir=tmp_path / "full")
    part = train_offline(agent, data, TRAIN.replace(steps=6), evaluator=fake_evaluator, run_dir=tmp_path / "part")
    assert int(part.agent.step) == 6
    # A crash after the checkpoint leaves rows behind it in metrics.jsonl; resume drops them.
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 9, "kl": 123.0}) + "\n" + '{"kind": "tra')
    resumed = train_offline(agent, data, TRAIN, evaluator=fake_evaluator, run_dir=tmp_path / "part", resume=True)
    assert int(resumed.agent.step) == 12
    for a, b in zip(leaves(full.agent), leaves(resumed.agent)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jr.key_data(full.agent.key), jr.key_data(resumed.agent.key))
    assert float(full.agent.dual.kl_avg) == float(resumed.agent.dual.kl_avg)
    assert resumed.rows == full.rows
    on_disk = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert on_disk == full.rows
    assert [r["step"] for r in full.evals] == [0, 6, 12]
    for name in ("train.csv", "eval.csv", "learning_curve.png"):
        assert (tmp_path / "full" / name).stat().st_size > 0
    # optimiser state round-trips too
    for a, b in zip(jax.tree.leaves(full.agent.opt_state), jax.tree.leaves(resumed.agent.opt_state)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["QAME", "QAMF"])
def test_qam_e_and_f_train_checkpoint_and_resume_like_any_agent(name, data, tmp_path):
    """The acting part's own parameters (edit actor and temperature, one-step policy) go through the offline loop,
    its checkpoints and resume like every other array of the agent."""
    import flowsoc.rl

    cls = getattr(flowsoc.rl, name)
    agent = cls.create(jr.key(2), OBS, ACT, CONFIG.replace(edit_scale=0.2, fql_alpha=10.0))
    assert agent.nets.actor is not None
    train = TRAIN.replace(steps=6)
    full = train_offline(agent, data, train, run_dir=tmp_path / "full")
    train_offline(agent, data, train.replace(steps=3), run_dir=tmp_path / "part")
    resumed = train_offline(agent, data, train, run_dir=tmp_path / "part", resume=True)
    for a, b in zip(leaves(full.agent), leaves(resumed.agent)):
        np.testing.assert_array_equal(a, b)
    moved = [not np.array_equal(a, b) for a, b in zip(leaves(agent.nets.actor), leaves(full.agent.nets.actor))]
    assert any(moved) and full.rows[-1]["step"] == 6
    assert ("edit_entropy" if name == "QAME" else "fql_distill_loss") in full.rows[-1]
    assert full.agent.sample_actions(data.observations[:4], jr.key(0)).shape == (4, CONFIG.horizon, ACT)


def test_existing_run_needs_resume_and_resume_needs_a_checkpoint(data, tmp_path):
    agent = TRQAM.create(jr.key(3), OBS, ACT, CONFIG)
    train_offline(agent, data, TRAIN.replace(steps=6), run_dir=tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train_offline(agent, data, TRAIN, run_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match="missing meta.json"):
        train_offline(agent, data, TRAIN, run_dir=tmp_path / "empty", resume=True)


def test_corrupt_or_mismatched_checkpoint_is_refused(data, tmp_path):
    agent = TRQAM.create(jr.key(4), OBS, ACT, CONFIG)
    train_offline(agent, data, TRAIN.replace(steps=6), run_dir=tmp_path / "run")
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoint")  # the folder of the one checkpoint, ckpt-0000000006
    assert ckpt.name == "ckpt-0000000006"
    restored, meta = load_agent_checkpoint(ckpt, agent)
    assert int(restored.step) == 6 and meta["agent"] == "TRQAM"

    other = TRQAM.create(jr.key(4), OBS, ACT, CONFIG.with_kl_budget(0.3))
    with pytest.raises(CheckpointError, match=r"agent_config\.trust_region\.kl_budget \(1.0 saved, 0.3 now\)"):
        train_offline(other, data, TRAIN, run_dir=tmp_path / "run", resume=True)
    with pytest.raises(CheckpointError, match="batch_size"):
        train_offline(agent, data, TRAIN.replace(batch_size=8), run_dir=tmp_path / "run", resume=True)
    with pytest.raises(CheckpointError, match="different settings: agent"):
        train_offline(QAM.create(jr.key(4), OBS, ACT, CONFIG), data, TRAIN, run_dir=tmp_path / "run", resume=True)

    state = ckpt / "state.eqx"
    good = state.read_bytes()
    state.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="state.eqx does not match the checksum"):
        train_offline(agent, data, TRAIN, run_dir=tmp_path / "run", resume=True)
    # another run's state.eqx of the same shape, swapped in: refused by the checksum too
    foreign = train_offline(
        TRQAM.create(jr.key(5), OBS, ACT, CONFIG), data, TRAIN.replace(steps=6), run_dir=tmp_path / "b"
    )
    state.write_bytes((latest_checkpoint(tmp_path / "b" / "checkpoint") / "state.eqx").read_bytes())
    assert int(foreign.agent.step) == 6
    with pytest.raises(CheckpointError, match="damaged or replaced"):
        load_agent_checkpoint(ckpt, agent)
    # a checkpoint without checksums (the earlier single-slot layout) is still checked by reading it
    legacy = {k: v for k, v in meta.items() if k != "files"}
    (ckpt / "meta.json").write_text(json.dumps(legacy))
    state.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="state.eqx cannot be read"):
        load_agent_checkpoint(ckpt, agent)
    state.write_bytes(good + b"junk")
    with pytest.raises(CheckpointError, match="trailing bytes"):
        load_agent_checkpoint(ckpt, agent)
    state.write_bytes(good)
    (ckpt / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json is corrupt"):
        load_agent_checkpoint(ckpt, agent)
    (ckpt / "meta.json").write_text(json.dumps({**legacy, "step": 3}))
    with pytest.raises(CheckpointError, match="inconsistent"):
        load_agent_checkpoint(ckpt, agent)
    # a checkpoint of a network of another size
    bigger = TRQAM.create(jr.key(4), OBS, ACT, CONFIG.replace(actor_hidden=(9,)))
    (ckpt / "meta.json").write_text(json.dumps(legacy))
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_agent_checkpoint(ckpt, bigger)
    # the run is refused on another dataset of the same shapes
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"different settings: data\.sha256"):
        train_offline(agent, make_data(jr.key(9)), TRAIN, run_dir=tmp_path / "run", resume=True)


def test_non_finite_loss_stops_and_saves_last_good_state(tmp_path):
    bad = make_data(jr.key(5), nan_row=None)
    bad = eqx.tree_at(lambda d: d.rewards, bad, jnp.full(N, jnp.nan))
    agent = TRQAM.create(jr.key(6), OBS, ACT, CONFIG)
    # One step per dispatch: the logged metrics name the first bad step.
    single = TRAIN.replace(steps_per_dispatch=1, eval_every=0, checkpoint_every=0)
    with pytest.raises(NonFiniteLossError, match=r"critic_loss.* at update step 1;.*step 0\) is saved in .*checkpoint"):
        train_offline(agent, bad, single, run_dir=tmp_path / "run")
    restored, _ = load_agent_checkpoint(tmp_path / "run" / "checkpoint", agent)
    assert int(restored.step) == 0
    # Fused dispatches: the core's own NaN check inside the scan fires first; same stop, same save.
    good = train_offline(agent, make_data(jr.key(5)), TRAIN.replace(steps=3), run_dir=tmp_path / "run2")
    with pytest.raises(NonFiniteLossError, match=r"within update steps 4-6 .*NaN.*step 3\) is saved"):
        train_offline(good.agent, bad, TRAIN.replace(steps=6), run_dir=tmp_path / "run2", resume=True)
    restored, _ = load_agent_checkpoint(tmp_path / "run2" / "checkpoint", agent)
    for a, b in zip(leaves(restored), leaves(good.agent)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(NonFiniteLossError, match="nothing was saved"):
        train_offline(agent, bad, single)


def test_load_transitions_rejects_nan_naming_field_and_row():
    data = {
        "observations": np.zeros((5, 3), np.float32),
        "actions": np.zeros((5, 2), np.float32),
        "rewards": np.array([0, 0, np.nan, 0, 0], np.float32),
        "masks": np.ones(5, np.float32),
        "terminals": np.zeros(5, np.float32),
        "next_observations": np.zeros((5, 3), np.float32),
    }
    with pytest.raises(ValueError, match="rewards holds NaN or inf in 1 rows \\(first at row 2\\)"):
        load_transitions(data, "demo")
    data["rewards"][2] = 0
    assert load_transitions(data, "demo").size == 5


def test_a_batch_larger_than_the_dataset_is_warned_about(data):
    # the check train_offline and train_offline_seeds run before anything else (called alone: no compilation)
    from flowsoc.rl._train import check_dataset

    with pytest.warns(UserWarning, match=f"batch size {N + 1} exceeds the dataset's {N} transitions"):
        check_dataset(data, CONFIG.horizon, N + 1)
    with pytest.raises(ValueError, match="fewer than the chunk length"):
        check_dataset(data, N + 1)  # no chunk of N + 1 steps in N transitions
    with pytest.raises(TypeError, match="must be a flowsoc.rl.Transitions"):
        check_dataset({"observations": None}, CONFIG.horizon)


def test_train_config_validation():
    with pytest.raises(ValueError, match="eval_every=7 must be a non-negative multiple of steps_per_dispatch=3"):
        TrainConfig(steps=12, steps_per_dispatch=3, eval_every=7, checkpoint_every=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="eval_flows"):
        TrainConfig(eval_flows=("actor",))
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\^31\), got -1"):
        TrainConfig(seed=-1)


def test_metrics_log_restore_keeps_rows_up_to_step(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (3, 6, 9):
        log.append({"kind": "train", "step": step, "kl": float(step)})
    log.append({"kind": "eval", "step": 6, "policy/success": 0.5})
    restored = MetricsLog.restore(tmp_path, 6)
    assert [r["step"] for r in restored.rows] == [3, 6, 6]
    assert (tmp_path / "train.csv").read_text().splitlines() == ["step,kl", "3,3.0", "6,6.0"]


# ---------------------------------------------------------------------------------- words and pictures


def _curve_rows():
    rows = [
        {"kind": "eval", "step": s, "policy/success": p, "behaviour/success": 0.05, "policy/return": 0.0}
        for s, p in ((0, 0.0), (20, 0.10), (40, 0.18))
    ]
    rows += [{"kind": "train", "step": s, "kl": 0.5, "lam": 3.0 * 0.9 ** (s / 2)} for s in range(2, 41, 2)]
    return rows


def test_learning_curve_axes_show_the_data_and_say_what_was_run(tmp_path, monkeypatch):
    """Checked on matplotlib's objects: the success axis spans the data (0 to 1.2 x the best rate), the
    legend uses the agent's name and "BC flow", λ's log axis reads plain numbers with a label a newcomer
    understands, and a caption line names the agent, dataset, steps, seed and KL budget."""
    import matplotlib.pyplot as plt

    from flowsoc.rl._train import plot_learning_curve, run_caption

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect it
    meta = {"agent": "TRQAM", "seed": 3, "info": {"env": "cube-single-play-singletask-task1-v0", "preset": "small"}}
    caption = run_caption(meta, 24_000, kl_budget=0.5)
    path = tmp_path / "curve.png"
    plot_learning_curve(_curve_rows(), path, kl_budget=0.5, agent="TRQAM", caption=caption)
    assert path.read_bytes()[:4] == b"\x89PNG"
    (fig,) = figures
    success, kl, lam = fig.axes
    bottom, top = success.get_ylim()
    assert top == pytest.approx(1.2 * 18) and -1 < bottom <= 0  # not 0-100%: 18% fills the panel
    assert [t.get_text() for t in success.get_legend().get_texts()] == ["TRQAM", "BC flow"]
    assert success.get_ylabel() == "success rate (%)"
    assert lam.get_yscale() == "log" and lam.get_ylabel() == "λ (larger = closer to the BC flow)"
    fig.canvas.draw()
    low, high = lam.get_ylim()
    labels = [t.get_text() for t in lam.get_yticklabels() if t.get_text() and low <= t.get_position()[1] <= high]
    assert labels == ["0.5", "1", "2"]  # plain numbers where λ runs (2.7 down to 0.36), no 5×10⁻¹
    assert [t.get_text() for t in fig.texts] == [
        "TRQAM on cube-single-play-singletask-task1-v0 · small preset · 24,000 update steps · seed 3 · "
        "KL budget 0.5 per action step"
    ]


def test_success_axis_keeps_a_floor_and_a_ceiling():
    from flowsoc.rl._train import success_axis_top

    assert success_axis_top([0.0, 0.0]) == 10  # nothing solved yet: 0-10%, not a flat line at the bottom
    assert success_axis_top([]) == 10
    assert success_axis_top([50.0]) == pytest.approx(60)
    assert success_axis_top([100.0]) == 103


def test_progress_bar_and_caption_use_the_same_names():
    from flowsoc.rl._train import progress_postfix, run_caption

    row = {"critic_loss": 1.0, "actor_loss": 2.0, "kl": 0.5, "lam": 1.5}
    last_eval = {"step": 20, "policy/success": 0.12, "behaviour/success": 0.05, "policy/return": -3.0}
    assert progress_postfix(row, last_eval, "TRQAM") == {
        "critic_loss": "1",
        "actor_loss": "2",
        "kl": "0.5",
        "lam": "1.5",
        "TRQAM": "12%",
        "BC flow": "5%",
    }
    seeds = {"agent": "QAM", "seeds": [0, 1, 2], "info": {}}
    assert run_caption(seeds, 1000) == "QAM · 1,000 update steps · seeds 0-2 (mean)"
