"""Reward fine-tuning of an image flow model: fine-tuning steps per second and peak memory against the
image batch size, and the cost of one fine-tuning step relative to one flow-matching pre-training step.

The model is the image example's (examples/image_reward_finetune.py): an MLP-mixer velocity field on
(1, 8, 8) images, the reward log p(class | x) of its MLP classifier; weights at their initialisation (the
speed does not depend on them). A fine-tuning step of `flowsoc.Finetuner` (trust region, 20 Euler steps)
is one memoryless-SDE rollout, one reward gradient, one lean-adjoint solve through the base and one
regression step on the adjoint-matching loss (with the path KL and the dual step); a pre-training step is
one flow-matching loss, its gradient and an Adam step at the same batch size. Both are fused `steps` per
compiled call; the time is the median over timed calls after a first (compiling) one. Peak memory is
XLA's buffer assignment for the compiled call (arguments, outputs and temporaries), and the process's
peak resident memory is given once at the end.

    python benchmarks/image_finetune.py            # about 3 minutes on 2 CPU cores
    python benchmarks/image_finetune.py --quick    # two batch sizes
"""

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import resource
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

import flowsoc as fs


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location(
        "image_reward_finetune", ROOT / "examples" / "image_reward_finetune.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _timed(fn, carry, calls):
    """First call (compile + run), then the median of `calls` timed calls, each fed the previous carry."""
    start = time.perf_counter()
    carry = jax.block_until_ready(fn(carry))
    first = time.perf_counter() - start
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        carry = jax.block_until_ready(fn(carry))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], first


def _memory_mb(compiled) -> float:
    stats = getattr(compiled, "compiled", compiled).memory_analysis()  # eqx.filter_jit wraps jax's Compiled
    if stats is None:
        return float("nan")
    total = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    return (total - getattr(stats, "alias_size_in_bytes", 0)) / 2**20


def measure(ex, batch_size, steps, calls, num_flow_steps=20):
    base = ex.MixerField(jr.key(0), **ex.FLOW)
    args = ex.ClassLogProb(ex.Classifier(jr.key(1)), 3)
    config = fs.FinetuneConfig(
        trust_region=fs.DualDescent(kl_budget=2.0, log_space=True, step_size=0.05),
        batch_size=batch_size,
        num_flow_steps=num_flow_steps,
        learning_rate=5e-4,
    )
    finetuner = fs.Finetuner(base, ex.reward, ex.SHAPE, config)
    state = finetuner.init()
    finetune_run = eqx.filter_jit(lambda s: finetuner.run(s, steps, args)[0])
    ft_s, ft_first = _timed(finetune_run, state, calls)
    ft_mb = _memory_mb(finetune_run.lower(state).compile())

    params, static = eqx.partition(base, eqx.is_inexact_array)
    optimizer = optax.adam(1e-3)
    data = jr.uniform(jr.key(2), (1000,) + ex.SHAPE, minval=-1, maxval=1)

    def fm_loss(p, key):
        k0, k1, kt = jr.split(key, 3)
        field = eqx.combine(p, static)
        x1 = data[jr.randint(k1, (batch_size,), 0, data.shape[0])]
        x0, t = jr.normal(k0, x1.shape), jr.uniform(kt, (batch_size,))
        return jnp.mean(jax.vmap(lambda a, b, s: fs.flow_matching_loss(field, a, b, s))(x0, x1, t))

    def fm_run(carry):
        def body(carry, key):
            p, o = carry
            grads = jax.grad(fm_loss)(p, key)
            updates, o = optimizer.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), None

        carry, _ = jax.lax.scan(body, carry, jr.split(jr.key(3), steps))
        return carry

    fm_jit = eqx.filter_jit(fm_run)
    fm_carry = (params, optimizer.init(params))
    fm_s, _ = _timed(fm_jit, fm_carry, calls)
    fm_mb = _memory_mb(fm_jit.lower(fm_carry).compile())
    return {
        "batch_size": batch_size,
        "finetune_steps_per_s": steps / ft_s,
        "finetune_ms_per_step": 1e3 * ft_s / steps,
        "finetune_images_per_s": batch_size * steps / ft_s,
        "finetune_peak_mb": ft_mb,
        "finetune_first_call_s": ft_first,
        "pretrain_ms_per_step": 1e3 * fm_s / steps,
        "pretrain_peak_mb": fm_mb,
        "finetune_over_pretrain": ft_s / fm_s,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two batch sizes, fewer timed calls")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "image_finetune.json"))
    opts = parser.parse_args()
    ex = _example()
    sizes = (16, 64) if opts.quick else (16, 32, 64, 128, 256)
    steps, calls = (5, 2) if opts.quick else (10, 3)
    rows = []
    for batch_size in sizes:
        rows.append(measure(ex, batch_size, steps, calls))
        r = rows[-1]
        print(f"batch {batch_size}: {r['finetune_steps_per_s']:.2f} fine-tuning steps/s", flush=True)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(x.size for x in jax.tree.leaves(eqx.filter(ex.MixerField(jr.key(0), **ex.FLOW), eqx.is_inexact_array)))
    print(f"\nimage fine-tuning on {jax.devices()[0]} (float32), MixerField with {params} parameters, 20 flow steps")
    print(
        f"{'batch':>6}{'ft steps/s':>12}{'ft ms/step':>12}{'images/s':>10}{'ft peak MB':>12}"
        f"{'pt ms/step':>12}{'pt peak MB':>12}{'ft / pt':>9}"
    )
    for r in rows:
        print(
            f"{r['batch_size']:>6}{r['finetune_steps_per_s']:>12.2f}{r['finetune_ms_per_step']:>12.1f}"
            f"{r['finetune_images_per_s']:>10.0f}{r['finetune_peak_mb']:>12.1f}{r['pretrain_ms_per_step']:>12.2f}"
            f"{r['pretrain_peak_mb']:>12.1f}{r['finetune_over_pretrain']:>9.1f}"
        )
    print("(ft: one fine-tuning step; pt: one flow-matching pre-training step; peak MB: XLA's buffers for the call)")
    print(f"peak resident memory of the process: {peak_rss_mb:.0f} MB")
    record = {
        "benchmark": "image_finetune",
        "command": "python benchmarks/image_finetune.py" + (" --quick" if opts.quick else ""),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "model": f"MixerField (examples/image_reward_finetune.py), {params} parameters, images (1, 8, 8)",
        "num_flow_steps": 20,
        "steps_per_dispatch": steps,
        "peak_rss_mb": peak_rss_mb,
        "rows": rows,
    }
    out = pathlib.Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
