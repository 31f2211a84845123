"""Time the official TRQAM update (github.com/yonghdong/trqam) outside its main.py: the child process that
`benchmarks/vs_official.py` runs with the official code's own Python (never imports flowsoc).

    /tmp/official/venv/bin/python benchmarks/_official_update.py --official /tmp/official/trqam --size paper

Builds the official `TRQAMAgent` at the shapes of `vs_official.SIZES` (observation 40, action 5 in chunks of
5, batch 256), one synthetic batch of `sample_sequence`'s layout on the device, and calls the official
jitted `agent.update(batch)` as its main.py does (offline phase). Prints one JSON line: creation time, every
call's wall time (the first ones include tracing and compilation: the official update compiles twice, the
second time when λ and the KL average become arrays), XLA's FLOP count of the update (Python loops:
every step is in the program, so the count is complete) and peak host memory.
"""

import argparse
import json
import resource
import sys
import time


START = time.perf_counter()

SIZES = {
    # name: (actor hidden, critic hidden, critic members, batch)
    "paper": ((512, 512, 512, 512), (512, 512, 512, 512), 10, 256),
    "small": ((256, 256), (256, 256), 10, 256),
}
OBS, ACT, HORIZON, FLOW_STEPS = 40, 5, 5, 10


def synthetic_batch(batch_size, seed=0):
    """A batch with `sample_sequence`'s keys and shapes (float32); throughput does not depend on the values."""
    import numpy as np

    rng = np.random.default_rng(seed)
    valid = np.ones((batch_size, HORIZON), np.float32)
    valid[: batch_size // 8, -2:] = 0.0  # some chunks cross an episode end
    return dict(
        observations=rng.normal(size=(batch_size, OBS)).astype(np.float32),
        actions=np.clip(rng.normal(size=(batch_size, HORIZON, ACT)), -1, 1).astype(np.float32),
        rewards=-rng.uniform(size=(batch_size, HORIZON)).astype(np.float32),
        masks=np.ones((batch_size, HORIZON), np.float32),
        terminals=np.zeros((batch_size, HORIZON), np.float32),
        valid=valid,
        next_observations=rng.normal(size=(batch_size, HORIZON, OBS)).astype(np.float32),
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--official", required=True, help="work tree of github.com/yonghdong/trqam")
    parser.add_argument("--size", choices=sorted(SIZES), default="paper")
    parser.add_argument("--calls", type=int, default=10, help="timed calls after the warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="calls before the timed ones (compilations included)")
    opts = parser.parse_args()

    sys.path.insert(0, opts.official)
    import jax
    import jax.numpy as jnp
    from agents.trqam import get_config, TRQAMAgent

    imported = time.perf_counter()
    actor_hidden, critic_hidden, members, batch_size = SIZES[opts.size]
    config = get_config()
    config.update(
        dict(
            horizon_length=HORIZON,
            action_chunking=True,
            actor_hidden_dims=actor_hidden,
            value_hidden_dims=critic_hidden,
            num_qs=members,
            batch_size=batch_size,
            flow_steps=FLOW_STEPS,
            discount=0.99,
        )
    )
    batch = {k: jnp.asarray(v) for k, v in synthetic_batch(batch_size).items()}
    jax.block_until_ready(batch)

    t0 = time.perf_counter()
    agent = TRQAMAgent.create(0, jnp.zeros((OBS,)), jnp.zeros((ACT,)), config)
    jax.block_until_ready(agent.network.params)
    creation = time.perf_counter() - t0

    calls = []
    for _ in range(opts.warmup + opts.calls):
        t = time.perf_counter()
        agent, info = agent.update(batch)
        jax.block_until_ready((agent, info))
        calls.append(time.perf_counter() - t)
    finite = bool(all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(info)))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the extra compile below

    cost = type(agent).update.lower(agent, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    gflop = float(cost.get("flops", float("nan"))) / 1e9 if cost else float("nan")
    print(
        json.dumps(
            dict(
                side="official",
                size=opts.size,
                import_s=imported - START,
                creation_s=creation,
                calls_s=calls,
                warmup=opts.warmup,
                gflop=gflop,
                peak_mb=peak_mb,
                finite=finite,
                jax=jax.__version__,
            )
        )
    )


if __name__ == "__main__":
    main()
