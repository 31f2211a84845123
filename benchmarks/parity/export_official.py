"""Export the official TRQAM / QAM / BAM / QAM-E / QAM-F update terms as numbers, for flowsoc's parity test.

Runs in the official codes' own environment (never imports flowsoc):

    /tmp/official/venv/bin/python benchmarks/parity/export_official.py \
        --trqam /tmp/official/trqam --qam /tmp/official/qam --out tests/rl/fixtures/parity.npz

`--trqam` / `--qam` are work trees of github.com/yonghdong/trqam and github.com/ColinQiyangLi/qam
(see benchmarks/parity/README.md). The official agents are imported directly from those trees.

What it builds, for one small configuration (`CONFIG` below):

- the official TRQAM agent at two values of its λ state, the official QAM agent and the official BAM
  agent, all holding ONE set of weights: the TRQAM agent's freshly initialised modules, with every
  leaf (biases and LayerNorm scales/offsets included) perturbed so that a transposed or misplaced
  parameter changes the numbers; `target_critic` and `target_actor_slow` are small perturbations of
  `critic` and `actor_slow` (using the wrong one is detectable), `actor_fast` a larger one of
  `actor_slow` (non-zero KL);
- one synthetic batch drawn by the official `Dataset.sample_sequence` from short synthetic episodes
  (so some chunks cross an episode end: `valid` has zeros);
- for each agent setting and each of `CONFIG["n_seeds"]` PRNG keys: the critic loss (and its `q_mean`,
  the mean TD target), the behaviour flow-matching loss `flow_loss`, the actor term (TRQAM/QAM
  `adj_loss`, BAM `bam_loss` and `bc_loss`), TRQAM's `path_kl`, and the gradients of the critic loss
  w.r.t. `critic`, of the flow loss w.r.t. `actor_slow` and of the actor term w.r.t. `actor_fast`;
- deterministic probes: every module's outputs on fixed inputs, and for TRQAM (λ = 0.2) and QAM one
  adjoint-matching pass on 16 observations (the states `xs`, adjoints `adjs` and times of the
  official `adj_matching`, with the `adj_loss` / `path_kl` that the official `actor_loss` reports
  on exactly those states); TRQAM's dual step on λ from a few states (`dual_update`);
- QAM-E and QAM-F: the official `QAMAgent` with `edit_scale` > 0 / `fql_alpha` > 0 (QAM's τ), holding the
  shared weights plus their own modules (the fresh `edit_actor` / `one_step_actor`, every leaf perturbed
  from a separate numpy stream, and `edit_alpha`'s log-value set to log `edit_alpha`). Per key: the critic
  terms (their TD target acts with the edited flow / the one-step policy), the acting part's terms
  (`edit_q_loss`, `edit_entropy_loss`, `edit_alpha_loss`, `edit_entropy`, `edit_alpha`; `fql_q_loss`,
  `fql_distill_loss`), the batch means of the acting action's entries and squares (`action_moments`, from
  the official `sample_actions`), and the gradients w.r.t. `critic` and the variant's own modules. Their
  flow and adjoint-matching terms are QAM's on the same keys: checked here, not stored again. Probes: the
  edit actor's mean, clipped log-std and `log_prob` on fixed inputs and draws, the one-step actor's outputs.
  These run after everything above, from their own seeds: the other arrays do not change.

The .npz holds: `w/<module>/<path>` (weights, flax layout), `batch/<key>`, `probe/...`,
`<setting>/<term>/mean|se|seeds` (per-seed values, their mean and standard error),
`<setting>/grad/<module>/<path>` (seed-averaged gradients) and `.../grad_se/...` (their per-entry
standard errors), and `meta` (JSON: commits, configuration, N, command, package versions).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


CONFIG = dict(
    obs_dim=5,
    action_dim=2,
    horizon=3,
    hidden=(32, 32),
    num_qs=4,
    flow_steps=10,
    batch_size=512,
    discount=0.99,
    rho=0.5,
    lam_scale=3.0,
    trqam_lams=(1.0, 0.2),
    inv_temp=3.0,
    n_seeds=64,
    weight_seed=0,
    data_seed=0,
    perturb_target=0.05,  # std of the noise added to critic / actor_slow to make the targets
    perturb_fast=0.1,  # std of the noise added to actor_slow to make actor_fast
    perturb_leaf=0.1,  # std of the noise added to every freshly initialised leaf
    critic_out_scale=3.0,  # the critic's output layer is scaled up so that its action gradient matters
    probe_size=16,
    # QAM-E and QAM-F (the official QAMAgent with edit_scale > 0 / fql_alpha > 0), at the QAM setting's inv_temp:
    edit_scale=0.5,  # large, so that the edit (and a mistake in it) moves Q
    edit_alpha=0.7,  # the edit temperature's value (its log is the LogParam leaf), not the initial 1
    fql_alpha=10.0,
    variant_seed=1,  # numpy seed of the perturbation of the variants' own modules (edit_actor, one_step_actor)
    edit_probe_scale=6.0,  # the edit-actor probe's second half: inputs scaled up, so that log-stds reach the clip
)


def _purge(prefixes):
    for name in list(sys.modules):
        if name.split(".")[0] in prefixes:
            del sys.modules[name]


def import_official(trqam_dir: Path, qam_dir: Path):
    """The official agent classes and config factories. Both trees have top-level packages named
    `agents` and `utils` (their `utils` are identical), so each tree is imported in turn."""
    sys.path.insert(0, str(trqam_dir))
    from agents.trqam import get_config as trqam_config, TRQAMAgent

    sys.path.remove(str(trqam_dir))
    _purge({"agents", "utils"})
    sys.path.insert(0, str(qam_dir))
    from agents.bam import BAMAgent, get_config as bam_config
    from agents.qam import get_config as qam_config, QAMAgent

    return {
        "trqam": (TRQAMAgent, trqam_config),
        "qam": (QAMAgent, qam_config),
        "bam": (BAMAgent, bam_config),
    }


def make_config(factory, **extra):
    """The official config with this harness's settings (only the keys that config defines)."""
    cfg = factory()
    settings = dict(
        horizon_length=CONFIG["horizon"],
        action_chunking=True,
        actor_hidden_dims=CONFIG["hidden"],
        value_hidden_dims=CONFIG["hidden"],
        actor_layer_norm=False,
        value_layer_norm=True,
        num_qs=CONFIG["num_qs"],
        flow_steps=CONFIG["flow_steps"],
        discount=CONFIG["discount"],
        rho=CONFIG["rho"],
        batch_size=CONFIG["batch_size"],
        best_of_n=1,
        target_actor=True,
        residual=False,
        clip_adj=True,
        use_target_grad=True,
        **extra,
    )
    missing = set(extra) - set(cfg.keys())
    assert not missing, f"not official settings: {missing}"
    cfg.update({k: v for k, v in settings.items() if k in cfg})
    return cfg


def flatten(tree, prefix=""):
    """Nested dict of arrays -> {'a/b/c': array}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if hasattr(value, "items"):
            out.update(flatten(value, name))
        else:
            out[name] = np.asarray(value)
    return out


def synthetic_batch(dataset_cls):
    """A batch from the official `sample_sequence` on short synthetic episodes (mean length 8)."""
    rng = np.random.default_rng(CONFIG["data_seed"])
    n, obs_dim, act_dim = 4096, CONFIG["obs_dim"], CONFIG["action_dim"]
    terminals = (rng.random(n) < 1 / 8).astype(np.float32)
    terminals[-1] = 1.0
    observations = rng.normal(size=(n, obs_dim)).astype(np.float32)
    next_observations = np.concatenate([observations[1:], rng.normal(size=(1, obs_dim))]).astype(np.float32)
    next_observations[terminals > 0] = rng.normal(size=(int(terminals.sum()), obs_dim))  # a terminal state
    data = dict(
        observations=observations,
        actions=rng.uniform(-0.99, 0.99, size=(n, act_dim)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        masks=np.where(rng.random(n) < 0.5, 1.0 - terminals, 1.0).astype(np.float32),  # some ends are timeouts
        terminals=terminals,
        next_observations=next_observations,
    )
    dataset = dataset_cls.create(**data)
    np.random.seed(CONFIG["data_seed"])
    batch = dataset.sample_sequence(
        CONFIG["batch_size"], sequence_length=CONFIG["horizon"], discount=CONFIG["discount"]
    )
    batch = {k: np.asarray(v, np.float32) for k, v in batch.items()}
    assert 0 < batch["valid"][:, -1].sum() < CONFIG["batch_size"], "the batch should have some invalid chunks"
    return batch


def shared_params(params):
    """The one weight set: perturbed fresh initialisation, targets and fast actor as perturbations."""
    import jax

    rng = np.random.default_rng(CONFIG["weight_seed"])

    def noisy(tree, std):
        return jax.tree_util.tree_map(lambda p: np.asarray(p) + std * rng.normal(size=p.shape).astype(np.float32), tree)

    params = dict(params)
    out_layer = params["modules_critic"]["value_net"][f"Dense_{len(CONFIG['hidden'])}"]
    for leaf in ("kernel", "bias"):
        out_layer[leaf] = CONFIG["critic_out_scale"] * np.asarray(out_layer[leaf])
    params["modules_critic"] = noisy(params["modules_critic"], CONFIG["perturb_leaf"])
    params["modules_actor_slow"] = noisy(params["modules_actor_slow"], CONFIG["perturb_leaf"])
    params["modules_target_critic"] = noisy(params["modules_critic"], CONFIG["perturb_target"])
    params["modules_target_actor_slow"] = noisy(params["modules_actor_slow"], CONFIG["perturb_target"])
    params["modules_actor_fast"] = noisy(params["modules_actor_slow"], CONFIG["perturb_fast"])
    params["modules_target_actor_fast"] = noisy(params["modules_actor_fast"], CONFIG["perturb_target"])
    return jax.tree_util.tree_map(lambda p: np.asarray(p, np.float32), params)


def variant_params(fresh_qame, fresh_qamf):
    """The variants' own modules: the official QAM-E / QAM-F agents' fresh `edit_actor` / `one_step_actor`
    with every leaf perturbed (own numpy stream, so the shared weights above are untouched), and
    `edit_alpha`'s log-value set to log(`edit_alpha`)."""
    import jax

    rng = np.random.default_rng(CONFIG["variant_seed"])

    def noisy(tree, std):
        return jax.tree_util.tree_map(lambda p: np.asarray(p) + std * rng.normal(size=p.shape).astype(np.float32), tree)

    edit = {
        "modules_edit_actor": noisy(fresh_qame["modules_edit_actor"], CONFIG["perturb_leaf"]),
        "modules_edit_alpha": {"log_value": np.log(np.float32(CONFIG["edit_alpha"]))},
    }
    fql = {"modules_one_step_actor": noisy(fresh_qamf["modules_one_step_actor"], CONFIG["perturb_leaf"])}
    return (jax.tree_util.tree_map(lambda p: np.asarray(p, np.float32), tree) for tree in (edit, fql))


def with_params(agent, params):
    import jax.numpy as jnp

    return agent.replace(network=agent.network.replace(params=jax_tree(params, jnp.asarray)))


def jax_tree(tree, fn):
    import jax

    return jax.tree_util.tree_map(fn, tree)


# The QAM variants' own modules and reported terms (official `QAMAgent.actor_loss`).
VARIANT_MODULES = {"qame": ("edit_actor", "edit_alpha"), "qamf": ("one_step_actor",)}
VARIANT_TERMS = {
    "qame": ("edit_q_loss", "edit_entropy_loss", "edit_alpha_loss", "edit_entropy", "edit_alpha"),
    "qamf": ("fql_q_loss", "fql_distill_loss"),
}


def seed_terms(agent, kind, batch):
    """Per-key official terms and gradients: `f(key) -> (scalars, grads)`, to be vmapped."""
    import jax
    import jax.numpy as jnp

    cfg = agent.config
    params = agent.network.params

    def target_mean(key):
        # The official critic_loss's TD target, through the official methods (BAM splits its key first).
        if kind == "bam":
            _, key = jax.random.split(key)
        next_obs = batch["next_observations"][..., -1, :]
        next_actions = jnp.clip(agent.sample_actions(next_obs, rng=key), -1, 1)
        next_qs = agent.network.select("target_critic")(next_obs, next_actions)
        next_q = next_qs.mean(axis=0) - cfg["rho"] * next_qs.std(axis=0)
        target = batch["rewards"][..., -1] + cfg["discount"] ** cfg["horizon_length"] * batch["masks"][..., -1] * next_q
        q = agent.network.select("critic")(batch["observations"], batch["actions"].reshape(len(target), -1))
        return target.mean(), (jnp.square(q - target) * batch["valid"][..., -1]).mean()

    def f(key):
        critic_key, actor_key = jax.random.split(key)
        (_, c_info), c_grads = jax.value_and_grad(lambda p: agent.critic_loss(batch, p, critic_key), has_aux=True)(
            params
        )
        (_, a_info), a_grads = jax.value_and_grad(lambda p: agent.actor_loss(batch, p, actor_key), has_aux=True)(params)
        tmean, critic_check = target_mean(critic_key)
        scalars = {
            "critic_loss": c_info["critic_loss"],
            "critic_loss_check": critic_check,
            "q_mean": c_info["q_mean"],
            "target_mean": tmean,
            "flow_loss": a_info["flow_loss"],
        }
        if kind == "bam":
            scalars["bam_loss"] = a_info["bam_loss"]
            scalars["bc_loss"] = a_info["bc_loss"]
        else:
            scalars["adj_loss"] = a_info["adj_loss"]
        if kind == "trqam":
            scalars["path_kl"] = a_info["path_kl"]
        own = VARIANT_MODULES.get(kind, ())
        for name in VARIANT_TERMS.get(kind, ()):
            scalars[name] = a_info[name]
        if own:
            # The acting action (official `sample_actions`, what the critic's TD target also uses) in
            # distribution: per key, the batch means of the 6 chunk entries and of their squares.
            acts = agent.sample_actions(batch["next_observations"][..., -1, :], rng=jax.random.split(key, 3)[2])
            scalars["action_moments"] = jnp.concatenate([acts.mean(axis=0), jnp.square(acts).mean(axis=0)])
        mine = ("modules_actor_slow", "modules_actor_fast", *(f"modules_{m}" for m in own))
        others = {k: v for k, v in a_grads.items() if k not in mine} | {
            k: v for k, v in c_grads.items() if k != "modules_critic"
        }
        leak = sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(others))
        grads = {
            "critic": c_grads["modules_critic"],
            "actor_slow": a_grads["modules_actor_slow"],
            "actor_fast": a_grads["modules_actor_fast"],
        } | {m: a_grads[f"modules_{m}"] for m in own}
        return scalars, grads, leak

    return f


def run_setting(agent, kind, batch, keys):
    import jax

    f = seed_terms(agent, kind, batch)
    chunks = [jax.vmap(f)(keys[i : i + 16]) for i in range(0, len(keys), 16)]
    scalars, grads, leak = jax.tree_util.tree_map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *chunks)
    assert float(np.max(leak)) == 0.0, "a loss leaked gradient into a module it should not touch"
    gap = np.max(np.abs(scalars["critic_loss_check"] - scalars["critic_loss"]) / np.abs(scalars["critic_loss"]))
    assert gap < 1e-5, f"the recomputed TD target does not reproduce the official critic loss ({gap})"
    del scalars["critic_loss_check"]
    n = len(keys)
    out = {}
    for name, values in scalars.items():
        if values.ndim > 1:  # a vector per key (action_moments): entry-wise statistics
            values = values.astype(np.float64)
            out[f"{name}/seeds"] = values.astype(np.float32)
            out[f"{name}/mean"] = values.mean(axis=0)
            out[f"{name}/se"] = values.std(axis=0, ddof=1) / np.sqrt(n)
            continue
        values = values.astype(np.float64)
        out[f"{name}/seeds"] = values.astype(np.float32)
        out[f"{name}/mean"] = np.float64(values.mean())
        out[f"{name}/se"] = np.float64(values.std(ddof=1) / np.sqrt(n))
    for name, g in flatten(grads).items():
        out[f"grad/{name}"] = g.mean(axis=0).astype(np.float32)
        out[f"grad_se/{name}"] = (g.std(axis=0, ddof=1) / np.sqrt(n)).astype(np.float32)
    return out


def probes(agent, batch):
    """Module outputs on fixed inputs (deterministic forward-pass parity)."""
    import jax.numpy as jnp

    m = CONFIG["probe_size"]
    rng = np.random.default_rng(1)
    chunk = CONFIG["horizon"] * CONFIG["action_dim"]
    obs = jnp.asarray(batch["observations"][:m])
    x = jnp.asarray(rng.normal(size=(m, chunk)).astype(np.float32) * 1.5)
    t = jnp.asarray(np.linspace(0.0, 1.0, m, dtype=np.float32)[:, None])
    out = {"probe/obs": obs, "probe/x": x, "probe/t": t}
    for name in ("actor_slow", "target_actor_slow", "actor_fast"):
        out[f"probe/{name}"] = agent.network.select(name)(obs, x, t)
    for name in ("critic", "target_critic"):
        out[f"probe/{name}"] = agent.network.select(name)(obs, x)  # (K, m)
    return {k: np.asarray(v) for k, v in out.items()}


def variant_probes(qame, qamf, batch):
    """Deterministic outputs of the variants' modules. The edit actor on inputs (obs, action in [-1, 1]),
    the second half scaled by `edit_probe_scale` so that some log-stds are clipped at 2: the mean and the
    (clipped) log-std of its pre-tanh Gaussian, and the official `log_prob` of edits tanh(u),
    u = mean + std * eps for fixed eps (chosen so that u lies in [-2.5, 2.5]: no tanh saturation).
    The one-step actor on the probe's (obs, x)."""
    import flax
    import jax.numpy as jnp

    m = CONFIG["probe_size"]
    chunk = CONFIG["horizon"] * CONFIG["action_dim"]
    rng = np.random.default_rng(3)
    obs = np.asarray(batch["observations"][:m])
    inputs = np.concatenate([obs, rng.uniform(-1, 1, size=(m, chunk)).astype(np.float32)], axis=-1)
    inputs = np.concatenate([inputs, CONFIG["edit_probe_scale"] * inputs]).astype(np.float32)
    dist = qame.network.select("edit_actor")(jnp.asarray(inputs))
    mean, std = np.asarray(dist.distribution.mean()), np.asarray(dist.distribution.stddev())
    u = rng.uniform(-2.5, 2.5, size=mean.shape).astype(np.float32)
    eps = ((u - mean) / std).astype(np.float32)
    edit = np.tanh(mean + std * eps)
    log_prob = np.asarray(dist.log_prob(jnp.asarray(edit)))
    # The unclipped log-std head, to check that the probe reaches the clip.
    p = flax.core.unfreeze(qame.network.params)["modules_edit_actor"]
    h = inputs
    for i in range(len(CONFIG["hidden"])):
        h = np.asarray(flax.linen.gelu(h @ p["MLP_0"][f"Dense_{i}"]["kernel"] + p["MLP_0"][f"Dense_{i}"]["bias"]))
    raw = h @ p["OutputDenseLogStd"]["kernel"] + p["OutputDenseLogStd"]["bias"]
    assert (raw > 2.0).sum() >= 4 and np.allclose(np.log(std)[raw > 2.0], 2.0), "the probe should reach the clip"
    assert np.all(np.isfinite(log_prob)) and np.abs(edit).max() < 0.999
    x = jnp.asarray(np.random.default_rng(1).normal(size=(m, chunk)).astype(np.float32) * 1.5)  # probe/x
    out = {
        "probe/edit_actor/inputs": inputs,
        "probe/edit_actor/mean": mean,
        "probe/edit_actor/log_std": np.log(std),
        "probe/edit_actor/eps": eps,
        "probe/edit_actor/edit": edit,
        "probe/edit_actor/log_prob": log_prob,
        "probe/one_step_actor": qamf.network.select("one_step_actor")(jnp.asarray(obs), x),
    }
    print(f"edit-actor probe: {(raw > 2.0).sum()} log-stds clipped at 2 (largest unclipped {raw.max():.2f})")
    return {k: np.asarray(v) for k, v in out.items()}


def adjoint_probe(agent, batch, tag, n_split):
    """One official adjoint-matching pass on `probe_size` observations: the official `adj_matching`
    states/adjoints for the key that the official `actor_loss` gives it, and the loss terms
    `actor_loss` reports on them."""
    import jax

    m = CONFIG["probe_size"]
    small = {k: v[:m] for k, v in batch.items()}
    key = jax.random.PRNGKey(123)
    # `actor_loss` splits its key into `n_split` (TRQAM: rng, x_rng, t_rng, adj_rng; QAM: ..., edit_rng).
    adj_rng = jax.random.split(key, n_split)[3]
    xs, adjs, ts, _ = agent.adj_matching(small["observations"], adj_rng)
    _, info = agent.actor_loss(small, agent.network.params, key)
    out = {
        f"probe/{tag}/xs": xs,
        f"probe/{tag}/adjs": adjs,
        f"probe/{tag}/ts": ts[:, 0, 0],
        f"probe/{tag}/adj_loss": info["adj_loss"],
    }
    if "path_kl" in info:
        out[f"probe/{tag}/path_kl"] = info["path_kl"]
    return {k: np.asarray(v) for k, v in out.items()}


def dual_probe(agent):
    """The official projected dual step on λ from a few (λ, KL average, KL estimate) states, covering the
    KL clip and both ends of the projection: rows (lam, kl_ema, kl, new_lam, new_kl_ema)."""
    import jax.numpy as jnp

    rows = []
    for lam, ema, kl in [(1.0, 0.0, 0.5), (1.0, 0.0, 5.0), (0.2, 1.3, 1.7), (0.011, 0.2, 0.0), (99.995, 3.0, 10.0)]:
        state = agent.replace(lam=jnp.float32(lam), kl_ema=jnp.float32(ema))
        new_lam, new_ema = state.dual_update(jnp.float32(kl))
        rows.append([lam, ema, kl, float(new_lam), float(new_ema)])
    return {"probe/dual": np.asarray(rows, np.float64)}


def git_head(path: Path) -> str:
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trqam", type=Path, required=True, help="work tree of the official TRQAM code")
    parser.add_argument("--qam", type=Path, required=True, help="work tree of the official QAM code (QAM, BAM)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=CONFIG["n_seeds"])
    args = parser.parse_args()
    CONFIG["n_seeds"] = args.seeds
    start = time.time()

    official = import_official(args.trqam.resolve(), args.qam.resolve())
    import flax
    import jax
    import jax.numpy as jnp
    from utils.datasets import Dataset  # the QAM tree's (identical in both trees)

    ex_obs = jnp.zeros((CONFIG["obs_dim"],), jnp.float32)
    ex_act = jnp.zeros((CONFIG["action_dim"],), jnp.float32)

    configs = {
        "trqam": make_config(official["trqam"][1], lam_scale=CONFIG["lam_scale"]),
        "qam": make_config(official["qam"][1], inv_temp=CONFIG["inv_temp"], fql_alpha=0.0, edit_scale=0.0),
        "bam": make_config(official["bam"][1], inv_temp=CONFIG["inv_temp"]),
    }
    agents = {k: official[k][0].create(CONFIG["weight_seed"], ex_obs, ex_act, configs[k]) for k in configs}
    params = shared_params(flax.core.unfreeze(agents["trqam"].network.params))
    for k in agents:
        structure = jax.tree_util.tree_structure(flax.core.unfreeze(agents[k].network.params))
        assert structure == jax.tree_util.tree_structure(params), f"{k}: module structure differs from TRQAM's"
        agents[k] = with_params(agents[k], params)

    batch = synthetic_batch(Dataset)
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    keys = jax.random.split(jax.random.PRNGKey(2024), CONFIG["n_seeds"])

    settings = {f"trqam_lam{lam:g}": ("trqam", lam) for lam in CONFIG["trqam_lams"]}
    settings |= {"qam": ("qam", None), "bam": ("bam", None)}
    out = {f"w/{k}": v for k, v in flatten(params).items()}
    out |= {f"batch/{k}": v for k, v in batch.items()}
    out |= probes(agents["trqam"], jbatch)
    for name, (kind, lam) in settings.items():
        agent = agents[kind]
        if lam is not None:
            agent = agent.replace(lam=jnp.float32(lam))
        t0 = time.time()
        res = run_setting(agent, kind, jbatch, keys)
        out |= {f"{name}/{k}": v for k, v in res.items()}
        summary = ", ".join(f"{k[:-5]}={res[k]:.5g}±{res[k[:-5] + '/se']:.2g}" for k in res if k.endswith("/mean"))
        print(f"{name} ({time.time() - t0:.1f}s): {summary}", flush=True)
    out |= adjoint_probe(agents["trqam"].replace(lam=jnp.float32(0.2)), jbatch, "trqam_lam0.2", 4)
    out |= adjoint_probe(agents["qam"], jbatch, "qam", 5)
    out |= dual_probe(agents["trqam"])

    # QAM-E and QAM-F: the official QAMAgent with edit_scale > 0 / fql_alpha > 0, the shared weights plus their
    # own modules. Their flow and adjoint-matching terms are QAM's (same keys: checked, not stored again).
    variants = {
        "qame": dict(inv_temp=CONFIG["inv_temp"], fql_alpha=0.0, edit_scale=CONFIG["edit_scale"]),
        "qamf": dict(inv_temp=CONFIG["inv_temp"], fql_alpha=CONFIG["fql_alpha"], edit_scale=0.0),
    }
    for name, extra in variants.items():
        configs[name] = make_config(official["qam"][1], **extra)
        agents[name] = official["qam"][0].create(CONFIG["weight_seed"], ex_obs, ex_act, configs[name])
    own = variant_params(*(flax.core.unfreeze(agents[k].network.params) for k in variants))
    for name, extra_params in zip(variants, own):
        full = params | extra_params
        structure = jax.tree_util.tree_structure(flax.core.unfreeze(agents[name].network.params))
        assert structure == jax.tree_util.tree_structure(full), f"{name}: module structure differs"
        agents[name] = with_params(agents[name], full)
        out |= {f"w/{k}": v for k, v in flatten(extra_params).items()}
        t0 = time.time()
        res = run_setting(agents[name], name, jbatch, keys)
        for term in ("flow_loss", "adj_loss"):  # QAM's, on the same keys
            gap = np.max(np.abs(res.pop(f"{term}/seeds") - out[f"qam/{term}/seeds"]) / np.abs(out[f"qam/{term}/seeds"]))
            assert gap < 1e-5, f"{name}: {term} differs from QAM's on the same keys ({gap})"
            del res[f"{term}/mean"], res[f"{term}/se"]
        for key in [k for k in res if k.split("/")[1] in ("actor_slow", "actor_fast")]:
            scale = np.abs(out[f"qam/{key}"]).max()
            gap = np.abs(res.pop(key) - out[f"qam/{key}"]).max() / scale
            assert gap < 1e-4, f"{name}: {key} differs from QAM's on the same keys ({gap})"
        out |= {f"{name}/{k}": v for k, v in res.items()}
        summary = ", ".join(
            f"{k[:-5]}={res[k]:.5g}±{res[k[:-5] + '/se']:.2g}" for k in res if k.endswith("/mean") and res[k].ndim == 0
        )
        print(f"{name} ({time.time() - t0:.1f}s): {summary}", flush=True)
        settings[name] = (name, None)
    out |= variant_probes(agents["qame"], agents["qamf"], batch)

    meta = dict(
        trqam_commit=git_head(args.trqam),
        qam_commit=git_head(args.qam),
        trqam_repo="github.com/yonghdong/trqam",
        qam_repo="github.com/ColinQiyangLi/qam",
        config=CONFIG,
        settings={k: {"agent": v[0], "lam": v[1]} for k, v in settings.items()},
        official_configs={k: c.to_dict() for k, c in configs.items()},
        n_seeds=CONFIG["n_seeds"],
        seed_keys="jax.random.split(PRNGKey(2024), n_seeds); per key: critic_key, actor_key = split(key); "
        "QAM-E / QAM-F acting action: sample_actions(next observations, split(key, 3)[2])",
        command="/tmp/official/venv/bin/python benchmarks/parity/export_official.py --trqam /tmp/official/trqam "
        f"--qam /tmp/official/qam --out {args.out}" + (f" --seeds {args.seeds}" if args.seeds != 64 else ""),
        versions={"jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__},
        seconds=round(time.time() - start, 1),
    )
    out["meta"] = np.asarray(json.dumps(meta, default=str))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
