"""Benchmark of the SOC core.

1. One adjoint-matching step (memoryless SDE forward, lean adjoint, loss and its gradient) for a
   batch of 256 paths, a 4x512 GELU MLP velocity field on a 25-dim state conditioned on a 40-dim
   observation (the paper's chunked action size), K = 10: through flowsoc (Diffrax terms) versus
   the same arithmetic written as plain `lax.scan` loops. Median wall time, compile time, and the
   FLOPs XLA counts for each program.
2. Accuracy against the Gaussian oracle: terminal-law error of the memoryless SDE driven by the
   exact optimal field, for Euler-Maruyama and ShARK, against the number of drift evaluations.

    python benchmarks/core.py            # prints tables, writes benchmarks/results/core.json
    python benchmarks/core.py --quick    # fewer repetitions
"""

import argparse
import json
import pathlib
import platform
import statistics
import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import flowsoc as fs
from flowsoc import gaussian as G


BATCH, DIM, OBS, WIDTH, DEPTH, K, LAM = 256, 25, 40, 512, 4, 10, 0.7


class Field(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(OBS + DIM + 1, DIM, WIDTH, DEPTH, activation=jax.nn.gelu, key=key)

    def __call__(self, t, x, obs):
        tt = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1] + (1,))
        return jax.vmap(self.mlp)(jnp.concatenate([obs, x, tt], axis=-1))


def reward_grad(x):
    return jax.grad(lambda y: -jnp.sum((y - 0.5) ** 2))(x)


def library_step(field, base, x0, key, obs):
    ts = fs.uniform_grid(K)
    xs = fs.sample_sde(field, x0, ts, key, args=obs, final_field=base)
    adj = fs.lean_adjoint(base, xs, ts, -reward_grad(xs[-1]), args=obs, base_time="grid", final_ode_step=False)

    def loss_fn(f):
        loss, kl = fs.adjoint_matching_loss(f, base, xs, ts, adj, lam=LAM, args=obs, with_kl=True)
        return loss / BATCH, kl / BATCH

    (loss, kl), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(field)
    return loss, kl, grads


def plain_step(field, base, x0, key, obs):
    """The same arithmetic as plain lax.scan loops (the reference discretisation, shift = h)."""
    h = 1.0 / K
    ts = jnp.linspace(0.0, 1.0, K + 1)
    g = jnp.sqrt(2 * (1 - ts[:-1] + h) / (ts[:-1] + h))
    normals = jr.normal(jr.split(key)[0], (K - 1,) + x0.shape, x0.dtype)

    def forward(x, inp):
        t, gi, z = inp
        x = x + h * (2 * field(t, x, obs) - x / (t + h)) + jnp.sqrt(h) * gi * z
        return x, x

    x_last, xs = jax.lax.scan(forward, x0, (ts[: K - 1], g[: K - 1], normals))
    x_end = x_last + h * base(ts[K - 1], x_last, obs)
    xs = jnp.concatenate([x0[None], xs, x_end[None]])

    def backward(a, inp):
        t, x = inp
        _, vjp = jax.vjp(lambda y: 2 * base(t, y, obs) - y / (t + h), x)
        a = a + h * vjp(a)[0]
        return a, a

    _, adj = jax.lax.scan(backward, -reward_grad(x_end), (ts[:-1], xs[:-1]), reverse=True)
    v_base = jax.lax.stop_gradient(jax.vmap(lambda t, x: base(t, x, obs))(ts[:-1], xs[:-1]))
    sigma = (g / jnp.sqrt(LAM))[:, None, None]

    def loss_fn(f):
        gaps = jax.vmap(lambda t, x: f(t, x, obs))(ts[:-1], xs[:-1]) - v_base
        loss = jnp.sum((2 / sigma * gaps + sigma * adj) ** 2) / BATCH
        kl = jnp.sum(2 * h / g[:, None, None] ** 2 * jax.lax.stop_gradient(gaps) ** 2) / BATCH
        return loss, kl

    (loss, kl), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(field)
    return loss, kl, grads


def compiled_gflop(fn, inputs):
    cost = eqx.filter_jit(fn).lower(*inputs).compile().compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) / 1e9 if cost else float("nan")


def step_benchmark(repeats):
    keys = jr.split(jr.key(0), 5)
    field, base = Field(keys[0]), Field(keys[1])
    x0 = jr.normal(keys[2], (BATCH, DIM))
    obs = jr.normal(keys[3], (BATCH, OBS))
    inputs = (field, base, x0, keys[4], obs)
    programs = {"flowsoc": eqx.filter_jit(library_step), "plain_scan": eqx.filter_jit(plain_step)}
    first_call_s, outs = {}, {}
    for name, fn in programs.items():
        start = time.perf_counter()
        outs[name] = jax.block_until_ready(fn(*inputs))
        first_call_s[name] = time.perf_counter() - start  # trace + compile + one run
    agree = bool(
        jnp.allclose(outs["flowsoc"][0], outs["plain_scan"][0], rtol=1e-4)
        and jnp.allclose(outs["flowsoc"][1], outs["plain_scan"][1], rtol=1e-4)
    )
    # Alternate the two programs call by call so that machine noise hits both alike, and
    # summarise by the median of the paired ratios (robust on a shared 2-core VM).
    times = {name: [] for name in programs}
    for _ in range(repeats):
        for name, fn in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*inputs))
            times[name].append(time.perf_counter() - start)
    summary = {
        name: {
            "median_s": statistics.median(times[name]),
            "min_s": min(times[name]),
            "first_call_s": first_call_s[name],
            "gflop": compiled_gflop(fn, inputs),
        }
        for name, fn in (("flowsoc", library_step), ("plain_scan", plain_step))
    }
    ratios = [a / b for a, b in zip(times["flowsoc"], times["plain_scan"])]
    summary["ratio_paired_median"] = statistics.median(ratios)
    summary["ratio_median"] = summary["flowsoc"]["median_s"] / summary["plain_scan"]["median_s"]
    summary["ratio_min"] = summary["flowsoc"]["min_s"] / summary["plain_scan"]["min_s"]
    summary["repeats"] = repeats
    summary["same_loss_and_kl"] = agree
    return summary


def accuracy_benchmark(n_paths):
    """Terminal mean/covariance error of the SDE with the exact optimal field vs the tilted target."""
    jax.config.update("jax_enable_x64", True)
    mu = jnp.array([0.5, -1.0])
    cov = jnp.array([[1.0, 0.3], [0.3, 0.5]])
    b = jnp.array([1.0, 0.5])
    lam, t0 = 1.0, 0.05
    target_mean, target_cov = G.tilt_linear(mu, cov, b, lam)
    optimum = G.GaussianVelocity(target_mean, target_cov)
    x0 = G.flow_map(target_mean, target_cov, t0, jr.normal(jr.key(1), (n_paths, 2)))
    rows = []
    for name, solver, evals in (("Euler", dfx.Euler(), 1), ("ShARK", dfx.ShARK(), 2)):
        for k in (5, 10, 20, 40, 80, 160):
            ts = fs.uniform_grid(k, t0=t0)
            sample = eqx.filter_jit(lambda x, key: fs.sample_sde(optimum, x, ts, key, shift=0.0, solver=solver)[-1])
            x1 = sample(x0, jr.key(2))
            mean_err = float(jnp.max(jnp.abs(x1.mean(0) - target_mean)))
            cov_err = float(jnp.max(jnp.abs(jnp.cov(x1.T) - target_cov)))
            rows.append(
                {"solver": name, "steps": k, "drift_evals": k * evals, "mean_err": mean_err, "cov_err": cov_err}
            )
    jax.config.update("jax_enable_x64", False)
    return {"n_paths": n_paths, "mc_floor_approx": float(1 / jnp.sqrt(n_paths)), "rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and paths")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "core.json"))
    opts = parser.parse_args()
    repeats = 10 if opts.quick else 60
    step = step_benchmark(repeats)
    print(f"\nAdjoint-matching step: batch {BATCH}, {DEPTH}x{WIDTH} MLP, state {DIM} + obs {OBS}, K={K} (float32)")
    print(f"{'program':<12}{'median ms':>11}{'min ms':>9}{'1st call s':>11}{'GFLOP':>8}")
    for name in ("flowsoc", "plain_scan"):
        r = step[name]
        print(
            f"{name:<12}{1e3 * r['median_s']:>11.1f}{1e3 * r['min_s']:>9.1f}{r['first_call_s']:>11.2f}{r['gflop']:>8.2f}"
        )
    print(
        f"ratio flowsoc/plain: paired median {step['ratio_paired_median']:.3f} (medians {step['ratio_median']:.3f}, "
        f"minima {step['ratio_min']:.3f}); same loss and KL: {step['same_loss_and_kl']}"
    )

    accuracy = accuracy_benchmark(50000 if opts.quick else 200000)
    print(
        f"\nTerminal-law error vs the tilted Gaussian target ({accuracy['n_paths']} paths, MC floor ~{accuracy['mc_floor_approx']:.3f})"
    )
    print(f"{'solver':<8}{'steps':>6}{'drift evals':>13}{'mean err':>10}{'cov err':>10}")
    for row in accuracy["rows"]:
        print(
            f"{row['solver']:<8}{row['steps']:>6}{row['drift_evals']:>13}{row['mean_err']:>10.4f}{row['cov_err']:>10.4f}"
        )

    out = pathlib.Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "core",
        "command": "python benchmarks/core.py" + (" --quick" if opts.quick else ""),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "devices": [str(d) for d in jax.devices()],
            "jax": jax.__version__,
        },
        "step": step,
        "accuracy": accuracy,
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
