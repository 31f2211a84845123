"""Two variants of the paper-size TRQAM update timed against each other in one process, call by call.

On a shared machine separate processes differ by ±10% in speed, more than most single changes gain; this script
compiles the same update twice, differing only in a trace-time switch of flowsoc (a module attribute read while
tracing) or in an XLA compiler option, and alternates their calls (A B, B A, ...), so that the machine's load falls
on both alike. It prints the median time of each and the median of the paired ratios A/B, checks that both give
the same metrics to float rounding, and writes `benchmarks/results/ab_update.json`.

    python benchmarks/ab_update.py --attr flowsoc._losses:SHARE_PASSES --values True False
    python benchmarks/ab_update.py --xla-option xla_cpu_experimental_ynn_fusion_type --values DEFAULT ""

`DEFAULT` leaves the option unset. Each variant is traced from its own function (JAX caches a trace by function:
compiling one function twice after flipping a switch gives the first program twice, which the script refuses).
Measured this way while speeding up the update (2 shared cores, paper size, 16 rounds; ratio old/new): the
critic's LayerNorm with Flax's variance and its tangent written out (`flowsoc.rl._networks.normalise`), against
autodiff of `jnp.var`: 1.029 and 1.034 (`next`), 1.019 (`grid`), kept; a hand-written GELU tangent 0.95 and
XLA's YNNPACK fusions off 0.96 (slower; dropped). The paired ratio itself moves by about ±4% between runs here
(YNNPACK fusing single dots only, `--xla-option xla_cpu_experimental_ynn_fusion_type --values DEFAULT
LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`, gave 1.027 and then 0.959): run a change several times before keeping it.
"""

import argparse
import importlib
import json
import pathlib
import statistics
import sys
import time


HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _value(text: str):
    return {"True": True, "False": False, "None": None}.get(text, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--attr", help="MODULE:ATTRIBUTE of flowsoc read at trace time, e.g. flowsoc._losses:SHARE_PASSES"
    )
    group.add_argument("--xla-option", help="an XLA compiler option name, e.g. xla_cpu_experimental_ynn_fusion_type")
    parser.add_argument("--values", nargs=2, required=True, metavar=("A", "B"))
    parser.add_argument("--convention", default="next", choices=["next", "grid"])
    parser.add_argument("--size", default="paper", choices=["paper", "small"])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", default=str(HERE / "results" / "ab_update.json"))
    opts = parser.parse_args()

    import equinox as eqx
    import jax
    import jax.random as jr
    from _official_update import ACT, OBS, SIZES
    from vs_official import flowsoc_batch, flowsoc_config

    from flowsoc.rl import TRQAM

    batch = flowsoc_batch(SIZES[opts.size][3])
    agent = TRQAM.create(jr.key(0), OBS, ACT, flowsoc_config(opts.size, opts.convention))
    arrays, static = eqx.partition(agent, eqx.is_array)

    def make_update():  # a new function per variant: JAX caches traces by function, which would reuse the first
        def update(arrays, batch):
            new, metrics = eqx.combine(arrays, static).update(batch)
            return eqx.filter(new, eqx.is_array), metrics

        return update

    compiled, first = {}, {}
    for value in opts.values:
        update = make_update()
        if opts.attr:
            module, attr = opts.attr.split(":")
            mod = importlib.import_module(module)
            if not hasattr(mod, attr):
                parser.error(f"--attr {opts.attr}: {module} has no attribute {attr}")
            setattr(mod, attr, _value(value))
            compiled[value] = jax.jit(update).lower(arrays, batch).compile()
        else:
            options = {} if value == "DEFAULT" else {opts.xla_option: value}
            compiled[value] = jax.jit(update).lower(arrays, batch).compile(compiler_options=options)
        first[value] = {k: float(v) for k, v in compiled[value](arrays, batch)[1].items()}
    a, b = opts.values
    if compiled[a].as_text() == compiled[b].as_text():
        parser.error(f"the two variants compiled to the same program: {opts.attr or opts.xla_option} has no effect")
    state, times = {v: arrays for v in opts.values}, {v: [] for v in opts.values}
    for i in range(opts.rounds):
        for value in (a, b) if i % 2 else (b, a):
            start = time.perf_counter()
            out = compiled[value](state[value], batch)
            jax.block_until_ready(out)
            times[value].append(time.perf_counter() - start)
            state[value] = out[0]
    timed = {v: t[2:] for v, t in times.items()}  # the first rounds warm the caches
    ratios = [x / y for x, y in zip(timed[a], timed[b])]
    worst = max(abs(first[a][k] - first[b][k]) / max(abs(first[b][k]), 1e-12) for k in first[a])
    print(f"TRQAM update ({opts.size}, {opts.convention}), {opts.attr or opts.xla_option}, {opts.rounds} rounds")
    for value in opts.values:
        median, fastest = statistics.median(timed[value]) * 1e3, min(timed[value]) * 1e3
        print(f"  {value!r:<12} median {median:7.1f} ms   min {fastest:7.1f} ms")
    ratio = statistics.median(ratios)
    print(f"  paired time ratio {a}/{b}: median {ratio:.3f}; metrics' largest relative gap {worst:.1e}")
    record = {
        "benchmark": "ab_update",
        "command": "python benchmarks/ab_update.py " + " ".join(sys.argv[1:]),
        "median_s": {v: statistics.median(t) for v, t in timed.items()},
        "paired_ratio_median": statistics.median(ratios),
        "metrics_max_relative_gap": worst,
        "times_s": times,
    }
    out = pathlib.Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
