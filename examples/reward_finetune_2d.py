"""Reward fine-tuning of a 2-D flow under exact KL budgets (the trust region of TRQAM, RL-free).

1. Pretrain a small flow-matching model on a ring of 8 Gaussians.
2. Fine-tune a copy towards the reward r(x) = 2 x_0 (prefer the right of the ring) by adjoint
   matching, (a) under path-KL budgets 0.1, 0.5 and 2 with dual descent on λ, and (b) at a fixed
   λ = 1, QAM-style (inverse temperature 1).
3. Write a figure (densities before and after; path KL and λ against steps) and the numbers.

    python examples/reward_finetune_2d.py            # about 2–3 minutes on 2 CPU cores
    python examples/reward_finetune_2d.py --quick    # a few seconds of training, for smoke tests

Outputs go to outputs/reward_finetune_2d/ (figure.png, results.json) unless --out is given.
"""

import argparse
import json
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import flowsoc as fs


MODES, RADIUS, SPREAD = 8, 2.5, 0.25


class MLPField(eqx.Module):
    """v(t, x) for one 2-D sample: an MLP on (x, t)."""

    mlp: eqx.nn.MLP

    def __init__(self, key, width=128, depth=3):
        self.mlp = eqx.nn.MLP(3, 2, width, depth, activation=jax.nn.gelu, key=key)

    def __call__(self, t, x, args=None):
        return self.mlp(jnp.concatenate([x, jnp.reshape(t, (1,)).astype(x.dtype)]))


def reward(x, args=None):
    return 2.0 * x[0]


def sample_data(key, n):
    key_mode, key_noise = jr.split(key)
    angles = 2 * jnp.pi * jr.randint(key_mode, (n,), 0, MODES) / MODES
    centres = RADIUS * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
    return centres + SPREAD * jr.normal(key_noise, (n, 2))


def pretrain(key, steps, batch=512, lr=2e-3):
    """Flow matching on the ring, many steps fused per dispatch."""
    key_init, key = jr.split(key)
    field = MLPField(key_init)
    optimizer = optax.adam(lr)
    params, static = eqx.partition(field, eqx.is_inexact_array)
    opt_state = optimizer.init(params)

    def loss_fn(p, key):
        k0, k1, kt = jr.split(key, 3)
        f = eqx.combine(p, static)
        x0, x1, t = jr.normal(k0, (batch, 2)), sample_data(k1, batch), jr.uniform(kt, (batch,))
        return jnp.mean(jax.vmap(lambda a, b, s: fs.flow_matching_loss(f, a, b, s))(x0, x1, t))

    @eqx.filter_jit
    def run(params, opt_state, key, n):
        def body(carry, key):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, key)
            updates, opt_state = optimizer.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jr.split(key, n))
        return params, opt_state, losses

    from tqdm.auto import tqdm

    chunk = 500
    with tqdm(total=steps, desc="pretrain", unit="step") as bar:
        for start in range(0, steps, chunk):
            key, sub = jr.split(key)
            n = min(chunk, steps - start)
            params, opt_state, losses = run(params, opt_state, sub, n)
            bar.update(n)
            bar.set_postfix(fm_loss=f"{float(losses[-1]):.3f}")
    return eqx.combine(params, static)


def sample(field, key, n, steps=50):
    x0 = jr.normal(key, (n, 2))
    batched = lambda t, x, args: jax.vmap(lambda xi: field(t, xi, args))(x)
    return eqx.filter_jit(fs.sample_ode)(batched, x0, fs.uniform_grid(steps))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/reward_finetune_2d", help="output directory")
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--finetune-steps", type=int, default=600)
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    if opts.quick:
        opts.pretrain_steps, opts.finetune_steps = 200, 100
    out = pathlib.Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    key_pre, key_eval = jr.split(jr.key(opts.seed))

    base = pretrain(key_pre, opts.pretrain_steps)
    base_samples = sample(base, key_eval, 20000)
    base_rewards = jax.vmap(reward)(base_samples)

    common = dict(
        num_steps=opts.finetune_steps,
        num_flow_steps=20,
        batch_size=256,
        learning_rate=1e-3,
        steps_per_dispatch=min(100, opts.finetune_steps),
        seed=opts.seed,
    )
    runs = {
        f"budget {eps:g}": fs.FinetuneConfig(
            trust_region=fs.DualDescent(kl_budget=eps, log_space=True, step_size=0.02, lam_max=1000.0), **common
        )
        for eps in (0.1, 0.5, 2.0)
    }
    runs["fixed λ=1 (QAM τ=1)"] = fs.FinetuneConfig.fixed(1.0, **common)

    results, histories, samples = {}, {}, {"base": base_samples}
    for name, config in runs.items():
        print(f"\n{name}")
        field, history, _ = fs.finetune(base, reward, (2,), config)
        xs = sample(field, key_eval, 20000)
        lam_final = float(history["lam"][-100:].mean())
        results[name] = {
            "kl_budget": config.trust_region.kl_budget if config.trust_region else None,
            "final_lambda": lam_final,
            "path_kl_estimate_last100": float(history["kl"][-100:].mean()),
            "kl_of_exact_tilt_at_final_lambda": float(fs.optimal_kl(base_rewards, lam_final)),
            "mean_reward": float(jax.vmap(reward)(xs).mean()),
            "fraction_right_half": float((xs[:, 0] > 0).mean()),
        }
        histories[name], samples[name] = history, xs
    results["base"] = {
        "mean_reward": float(base_rewards.mean()),
        "fraction_right_half": float((base_samples[:, 0] > 0).mean()),
    }

    print(f"\n{'run':<22}{'λ':>9}{'path KL':>9}{'KL*(λ)':>9}{'reward':>9}{'right half':>12}")
    print(
        f"{'base':<22}{'':>9}{'':>9}{'':>9}{results['base']['mean_reward']:>9.3f}{results['base']['fraction_right_half']:>12.3f}"
    )
    for name in runs:
        r = results[name]
        print(
            f"{name:<22}{r['final_lambda']:>9.3f}{r['path_kl_estimate_last100']:>9.3f}"
            f"{r['kl_of_exact_tilt_at_final_lambda']:>9.3f}{r['mean_reward']:>9.3f}{r['fraction_right_half']:>12.3f}"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(16, 7))
    grid = fig.add_gridspec(2, 5, height_ratios=[1.1, 1])
    lim = RADIUS + 1.2
    for i, (name, xs) in enumerate(samples.items()):
        ax = fig.add_subplot(grid[0, i])
        ax.hist2d(np.asarray(xs[:, 0]), np.asarray(xs[:, 1]), bins=80, range=[[-lim, lim], [-lim, lim]], cmap="magma")
        ax.set_title(name if name == "base" else f"{name}\nreward {results[name]['mean_reward']:.2f}", fontsize=10)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    ax_kl, ax_lam = fig.add_subplot(grid[1, :3]), fig.add_subplot(grid[1, 3:])
    for (name, history), colour in zip(histories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        smooth = np.convolve(history["kl"], np.ones(25) / 25, mode="valid")
        ax_kl.plot(smooth, color=colour, label=name)
        if runs[name].trust_region is not None:
            ax_kl.axhline(runs[name].trust_region.kl_budget, color=colour, linestyle="--", linewidth=1)
        ax_lam.plot(history["lam"], color=colour, label=name)
    ax_kl.set(
        yscale="log", xlabel="step", ylabel="path KL estimate (25-step mean)", title="KL against its budget (dashed)"
    )
    ax_lam.set(yscale="log", xlabel="step", ylabel="λ", title="trust-region parameter λ")
    ax_kl.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "figure.png", dpi=110)
    record = {
        "command": "python examples/reward_finetune_2d.py" + (" --quick" if opts.quick else ""),
        "pretrain_steps": opts.pretrain_steps,
        "finetune_steps": opts.finetune_steps,
        "wall_s": time.time() - started,
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(record, indent=2))
    print(f"\nwrote {out / 'figure.png'} and {out / 'results.json'} ({record['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
