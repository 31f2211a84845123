"""Experiments end to end: data (generated locally if absent), agent from a preset, training with
evaluation, a results table and the learning-curve figure; offline, and offline-to-online.

`examples/ogbench_offline.py` is the command-line face of
[`run_offline`][flowsoc.rl.ogbench.run_offline] (flags: the fields of
[`OfflineArgs`][flowsoc.rl.ogbench.OfflineArgs]); `examples/ogbench_offline_to_online.py` that of
[`run_offline_to_online`][flowsoc.rl.ogbench.run_offline_to_online] (flags:
[`OfflineToOnlineArgs`][flowsoc.rl.ogbench.OfflineToOnlineArgs]).
"""

import dataclasses
import json
import math
import os
import pathlib
import re
import time
from typing import Literal

import jax
import jax.random as jr
import numpy as np

from ..._checkpoint import latest_checkpoint, read_meta, write_text
from ..._logging import make_loggers
from .._agents import BAM, QAM, QAME, QAMF, SQAM, TRQAM
from .._config import AgentConfig, SMALL_NETWORKS
from .._online import latest_online_checkpoint, OnlineConfig, train_online
from .._pretrain import bc_checkpoint_name, BCConfig, pretrain_behaviour
from .._seeds import aggregate, create_agents, seed_mesh, SeedsResult, train_offline_seeds
from .._sharded import data_widths
from .._train import flow_label, load_transitions, train_offline, TrainConfig, TrainResult
from ._envs import ogbench_evaluator, ogbench_seeds_evaluator, OGBenchEnvFactory
from ._presets import paper_preset, PaperPreset


DEFAULT_ENV = "cube-single-play-singletask-task1-v0"
AGENTS = {"trqam": TRQAM, "qam": QAM, "bam": BAM, "qame": QAME, "qamf": QAMF, "sqam": SQAM}


@dataclasses.dataclass(frozen=True)
class OfflineArgs:
    """Train a flow agent offline on an OGBench single-task dataset and evaluate it in the environment.

    With no flags: the embedded default, a small locally generated cube-single dataset, the small
    preset, TRQAM with its BC flow evaluated alongside (about 10 minutes on 2 CPU cores).
    """

    env: str = DEFAULT_ENV
    """OGBench single-task dataset name, e.g. cube-double-play-singletask-task2-v0."""
    agent: Literal["trqam", "qam", "bam", "qame", "qamf", "sqam"] = "trqam"
    """trqam: λ by dual descent on a KL budget; qam: fixed temperature τ; bam: basic-adjoint ablation; qame: QAM
    with a learned bounded edit of its actions; qamf: QAM acting with a distilled one-step policy; sqam: TRQAM's
    trust region with scalar adjoint matching on bridge states and a critic value penalty."""
    preset: Literal["small", "paper"] = "small"
    """paper: the official per-domain settings and protocol (1M steps, 4x512 nets); small: CPU-sized."""
    protocol: Literal["qam", "trqam"] | None = None
    """Whose protocol: the QAM paper's (no BC pre-training, its networks, γ and sparse rewards) or the TRQAM
    paper's (BC pre-training, dense rewards); default: the paper that ran --agent (qam, bam, qame, qamf: QAM's;
    trqam, sqam: TRQAM's)."""
    pretrain_steps: int | None = None
    """Steps of BC pre-training of the behaviour flow before RL (default: the protocol's, 300,000 for TRQAM's
    and 0 for QAM's with --preset paper; 5,000 and 0 for small); 0 starts every network from scratch."""
    bc_checkpoint: str | None = None
    """Directory of the pre-trained behaviour flow: reused when complete, resumed when stopped, trained
    there when absent (default: runs/bc/<dataset>-<flow shape>-<steps>-<batch>-seed<bc-seed>, shared by every
    agent and seed, as the official runs share one per domain)."""
    bc_seed: int = 0
    """Seed of the BC pre-training (one pre-trained flow serves every --seed)."""
    steps: int | None = None
    """Update steps (default: 1,000,000 for paper, 24,000 for small)."""
    batch_size: int | None = None
    """Default: 256 for paper, 128 for small."""
    eval_every: int | None = None
    """Steps between evaluations (default: 50,000 for paper, 4,000 for small)."""
    eval_episodes: int | None = None
    """Episodes per evaluation (default: 50 for paper, 20 for small)."""
    kl_budget: float | None = None
    """Override TRQAM's ε_KL per action step (the preset's otherwise)."""
    inv_temp: float | None = None
    """Override QAM/BAM's τ (the preset's otherwise)."""
    bc: bool = True
    """Also evaluate the behaviour (BC) flow trained alongside, as the baseline."""
    seed: int = 0
    """Seed of the agent's initialisation, the batches and the evaluation."""
    seeds: int = 1
    """Seeds trained together in one compiled program: seed, seed+1, ..., seed+seeds-1 (each equal to its
    single-seed run), sharded over the devices when there are several; results as mean and 95% CI."""
    data_dir: str | None = None
    """Where datasets live (default: $FLOWSOC_DATA_DIR or ~/.ogbench/data for paper; a cache
    directory per size for small)."""
    episodes: int | None = None
    """Episodes to generate if the dataset is absent (default: OGBench's count for paper, 50 for small)."""
    workers: int = max(1, os.cpu_count() or 1)
    """Processes for dataset generation."""
    run_dir: str | None = None
    """Output directory (default: runs/<env>-<agent>-<preset>-seed<seed>)."""
    resume: bool = False
    """Continue the run in run_dir from its last checkpoint."""
    steps_per_dispatch: int = 100
    """Updates fused into one compiled call."""
    progress: bool = True
    """Show a progress bar."""
    logger: tuple[Literal["tensorboard", "wandb"], ...] = ()
    """Also send every metric row to TensorBoard (run_dir/tensorboard; pip install 'flowsoc[tensorboard]') and/or
    Weights & Biases (offline, under run_dir/wandb; pip install 'flowsoc[wandb]')."""
    smoke: bool = False
    """A seconds-long run on a tiny dataset with tiny networks (for CI)."""
    dataset_dir: str | None = None
    """Train from a folder of dataset shards, the official large datasets' layout (DATA_DIR/cube-triple-play-10m-v0,
    made by python -m flowsoc.rl.datagen cube-triple-play-10m-v0); default with --preset paper on cube-triple,
    cube-quadruple, puzzle-4x4 and antmaze-giant: DATA_DIR/<the paper's large dataset>."""
    standard_data: bool = False
    """With --preset paper, train on the standard 1M file even where the paper used a large dataset."""
    shard_interval: int = 1000
    """Updates (online: environment steps) on one shard before the next (the official dataset_replace_interval)."""
    data_mode: Literal["auto", "stream", "memory"] = "auto"
    """Sharded data: stream (the current shard on the device, the next read in the background), memory (every
    shard on the device), or auto (memory when the dataset takes at most half of the device's free memory)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """The concrete settings an `OfflineArgs` resolves to."""

    env: str
    agent_cls: type
    agent_config: AgentConfig
    train_config: TrainConfig
    data_dir: str | None
    episodes: int | None
    episode_length: int | None
    run_dir: pathlib.Path
    preset: PaperPreset
    pretrain: TrainConfig | None
    bc_dir: pathlib.Path | None
    dataset_dir: pathlib.Path | None = None  # a folder of shards to train from (None: the standard file)


def _cache_dir(episodes: int, episode_length: int | None) -> str:
    root = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "flowsoc"
    suffix = f"-len{episode_length}" if episode_length else ""
    return str(root / f"ogbench-{episodes}ep{suffix}")


def _check_env(env: str) -> None:
    """Refuse an `--env` that is not an OGBench dataset name, in one line naming the flag, the name format with
    an example, the domains generated here and `python -m flowsoc.rl.datagen --list`."""
    from ._datagen_recipes import DatasetError, parse_dataset_name

    try:
        parse_dataset_name(env)
    except DatasetError as err:
        raise ValueError(f"--env: {err}") from None


def plan(args: OfflineArgs) -> Plan:
    """Resolve presets and defaults (validating them) into a `Plan`."""
    _check_env(args.env)
    preset = paper_preset(args.env, args.agent, protocol=args.protocol)
    settings = preset.agent_settings()
    episode_length = None
    pretrains = preset.pretrain_steps > 0
    if args.smoke:
        settings.update(actor_hidden=(32, 32), critic_hidden=(32, 32), num_critics=2, flow_steps=4)
        defaults = dict(steps=20, batch_size=16, eval_every=20, eval_episodes=2, episodes=3, pretrain=20 * pretrains)
        episode_length = 101
        args = dataclasses.replace(args, steps_per_dispatch=min(args.steps_per_dispatch, 10))
    elif args.preset == "small":
        settings.update(SMALL_NETWORKS)
        defaults = dict(
            steps=24_000, batch_size=128, eval_every=4_000, eval_episodes=20, episodes=50, pretrain=5_000 * pretrains
        )
    else:
        defaults = dict(
            steps=1_000_000,
            batch_size=256,
            eval_every=50_000,
            eval_episodes=50,
            episodes=None,
            pretrain=preset.pretrain_steps,
        )
    for flag, value in (("--seed", args.seed), ("--bc-seed", args.bc_seed)):
        if not 0 <= value < 2**31:
            raise ValueError(f"{flag} must be an integer in [0, 2^31), got {value}.")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers} (processes for dataset generation).")
    if args.kl_budget is not None:
        trust_region = settings.get("trust_region", AgentConfig().trust_region)
        settings["trust_region"] = dataclasses.replace(trust_region, kl_budget=args.kl_budget)
    if args.inv_temp is not None:
        settings["inv_temp"] = args.inv_temp
    agent_config = AgentConfig(**settings)
    pick = lambda name: defaults[name] if getattr(args, name) is None else getattr(args, name)  # noqa: E731
    steps, every = pick("steps"), pick("eval_every")
    train_config = TrainConfig(
        steps=steps,
        batch_size=pick("batch_size"),
        steps_per_dispatch=args.steps_per_dispatch,
        eval_every=every,
        eval_episodes=pick("eval_episodes"),
        eval_envs=min(10, pick("eval_episodes")),
        eval_flows=("policy", "behaviour") if args.bc else ("policy",),
        checkpoint_every=every,
        seed=args.seed,
        progress=args.progress,
    )
    episodes = pick("episodes")
    data_dir = args.data_dir
    dataset_dir = _dataset_dir(args, preset)
    if dataset_dir is not None:
        if not isinstance(args.shard_interval, int) or args.shard_interval < 1:
            raise ValueError(f"--shard-interval must be a positive integer, got {args.shard_interval!r}.")
        if args.shard_interval % args.steps_per_dispatch:
            raise ValueError(
                f"--shard-interval {args.shard_interval} must be a multiple of --steps-per-dispatch "
                f"{args.steps_per_dispatch} (a fused block of updates samples from one shard); change one of them."
            )
    if data_dir is None and (args.preset == "small" or args.smoke):
        data_dir = _cache_dir(episodes, episode_length)
    run_dir = args.run_dir or f"runs/{args.env}-{args.agent}-{'smoke' if args.smoke else args.preset}-seed{args.seed}"
    pretrain_steps = defaults["pretrain"] if args.pretrain_steps is None else args.pretrain_steps
    if not isinstance(pretrain_steps, int) or pretrain_steps < 0:
        raise ValueError(f"--pretrain-steps must be a non-negative integer, got {pretrain_steps!r}.")
    pretrain, bc_dir = None, None
    if pretrain_steps or args.bc_checkpoint:
        if not pretrain_steps:
            raise ValueError("--bc-checkpoint needs --pretrain-steps > 0 (the pre-trained flow's steps).")
        per = math.gcd(pretrain_steps, 500)
        if dataset_dir is not None:
            per = math.gcd(per, args.shard_interval)  # a fused block samples from one shard
        pretrain = TrainConfig(
            steps=pretrain_steps,
            batch_size=train_config.batch_size,
            steps_per_dispatch=per,
            eval_every=0,
            checkpoint_every=per * max(1, pretrain_steps // 10 // per),
            seed=args.bc_seed,
            progress=args.progress,
        )
        bc_config = BCConfig.of(agent_config)
        data_name = args.env if dataset_dir is None else f"{args.env}-{dataset_dir.name}"
        name = bc_checkpoint_name(data_name, bc_config, pretrain_steps, pretrain.batch_size, args.bc_seed)
        bc_dir = pathlib.Path(args.bc_checkpoint or pathlib.Path(run_dir).parent / "bc" / name)
    return Plan(
        env=args.env,
        agent_cls=AGENTS[args.agent],
        agent_config=agent_config,
        train_config=train_config,
        data_dir=data_dir,
        episodes=episodes,
        episode_length=episode_length,
        run_dir=pathlib.Path(run_dir),
        preset=preset,
        pretrain=pretrain,
        bc_dir=bc_dir,
        dataset_dir=dataset_dir,
    )


def _dataset_dir(args: OfflineArgs, preset: PaperPreset) -> pathlib.Path | None:
    """The folder of shards to train from: `--dataset-dir`, else with `--preset paper` the paper's large dataset
    in the data directory (unless `--standard-data`), else `None` (the standard file)."""
    from ._dataset_files import data_dir as resolve_data_dir

    if args.dataset_dir is not None:
        if args.standard_data:
            raise ValueError("--dataset-dir and --standard-data contradict each other: give one of them.")
        return pathlib.Path(args.dataset_dir).expanduser()
    if args.preset != "paper" or args.smoke or args.standard_data or preset.dataset is None:
        return None
    return resolve_data_dir(args.data_dir) / preset.dataset


def pretrained_flow(p: Plan, data, resume: bool = False):
    """The BC-pre-trained behaviour flow of plan `p` ([`flowsoc.rl.pretrain_behaviour`][]), or `None`
    when the plan has no pre-training or when `resume` continues a fine-tuning run (whose checkpoint holds
    every network)."""
    if p.pretrain is None or resume:
        return None
    return pretrain_behaviour(data, BCConfig.of(p.agent_config), p.pretrain, p.bc_dir)


def _resuming(p: Plan, args: OfflineArgs) -> bool:
    """Whether `--resume` continues a fine-tuning checkpoint; `False` when the run stopped during its BC
    pre-training (fine-tuning then starts from the pre-trained flow), an error when there is nothing at all."""
    if not args.resume or latest_checkpoint(p.run_dir / "checkpoint") is not None:
        return args.resume
    bc = None if p.bc_dir is None else latest_checkpoint(p.bc_dir / "checkpoint")
    if bc is not None and (p.run_dir.exists() or read_meta(bc)["step"] < p.pretrain.steps):
        print(f"no fine-tuning checkpoint in {p.run_dir} yet: continuing from the BC pre-training in {p.bc_dir}")
        return False
    if not p.run_dir.exists():  # a mistyped --run-dir must not start a new run from zero
        raise ValueError(
            f"--resume: there is no run in {p.run_dir} (the directory does not exist); check --run-dir, or start "
            "without --resume."
        )
    return True  # train_offline names the missing checkpoint


def _loggers(args: OfflineArgs, p: Plan) -> list:
    """The extra metric backends asked for with --logger, writing under the run directory."""
    return make_loggers(args.logger, p.run_dir, name=p.run_dir.name)


def _write_results(run_dir: pathlib.Path, summary: dict, table: str) -> None:
    """`summary.json` and `results.txt`, each written atomically (a crash leaves the old file or the new one)."""
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    write_text(run_dir / "results.txt", table + "\n")


def results_table(result: TrainResult, agent_name: str) -> str:
    """A text table: per evaluated flow, success at the start and at the end (± standard error over
    episodes), the best evaluation, and the final mean return."""
    evals = result.evals
    if not evals:
        return "(no evaluations)"
    first, last = evals[0], evals[-1]
    lines = [
        f"{'method':<22}{'start':>9}{'final':>9}{'best':>9}{'final return':>15}",
    ]
    flows = [k[: -len("/success")] for k in last if k.endswith("/success")]
    for flow in flows:
        best = max(r[f"{flow}/success"] for r in evals)
        lines.append(
            f"{flow_label(flow, agent_name):<22}"
            f"{100 * first[f'{flow}/success']:>8.0f}%{100 * last[f'{flow}/success']:>8.0f}%"
            f"{100 * best:>8.0f}%{last[f'{flow}/return']:>15.1f}"
        )
    lines.append(
        f"(success rate over the evaluation episodes; start = step {first['step']}, final = step {last['step']})"
    )
    return "\n".join(lines)


def _load_data(p: Plan, args: OfflineArgs):
    from ._data import dataset_paths, load_ogbench

    if p.dataset_dir is not None:
        from ._shards import open_shards

        data = open_shards(
            p.env,
            p.dataset_dir,
            interval=args.shard_interval,
            mode=args.data_mode,
            sparse=p.preset.sparse,
            env_kwargs=_eval_env_kwargs(args),
        )
        obs_dim, action_dim = data_widths(data)
        print(
            f"data: {p.dataset_dir} ({data.num_shards} shards, {data.size} transitions, {data.mode} mode, the next "
            f"shard every {data.interval} updates), observation {obs_dim}, action {action_dim} (chunks of "
            f"{p.agent_config.horizon}); run directory {p.run_dir}"
        )
        return data

    train_path, _ = dataset_paths(p.env, p.data_dir)
    cached, started = train_path.exists(), time.time()
    _, train, _ = load_ogbench(
        p.env,
        p.data_dir,
        generate=True,
        episodes=p.episodes,
        episode_length=p.episode_length,
        workers=1 if args.smoke else args.workers,
        progress=args.progress,
        sparse=p.preset.sparse,
    )
    how = "cached" if cached else f"generated in {time.time() - started:.0f} s"
    print(f"dataset {train_path.name[: -len('.npz')]} in {train_path.parent} ({how})")
    data = load_transitions(train, p.env, sparse_rewards=p.preset.sparse)
    obs_dim, action_dim = data_widths(data)
    print(
        f"data: {data.size} transitions, observation {obs_dim}, action {action_dim} "
        f"(chunks of {p.agent_config.horizon}); run directory {p.run_dir}"
    )
    return data


def provenance(started: float) -> dict:
    """Where and how a run was produced, for its `summary.json`: the command line, the wall time since
    `started` (`time.time()`), and the hardware and software."""
    import platform
    import sys
    import time

    script = sys.argv[0]
    if os.path.isabs(script):
        try:
            script = os.path.relpath(script)
        except ValueError:
            pass
    return {
        "command": " ".join(["python", script, *sys.argv[1:]]),
        "wall_s": round(time.time() - started, 1),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "devices": str(jax.devices()),
        "jax": jax.__version__,
    }


def _bc_info(p: Plan) -> dict:
    return {} if p.pretrain is None else {"pretrain": f"BC pre-training {p.pretrain.steps} steps"}


def _eval_env_kwargs(args: OfflineArgs) -> dict:
    return {"max_episode_steps": 50} if args.smoke else {}


def run_offline(args: OfflineArgs) -> TrainResult:
    """Load (or generate) the data, build the agent, train with evaluation, print the table, and
    write `summary.json` and `learning_curve.png` into the run directory. With `args.seeds > 1`, the
    seeds train together ([`run_offline_seeds`][flowsoc.rl.ogbench.run_offline_seeds])."""
    if args.seeds != 1:
        return run_offline_seeds(args)
    started = time.time()
    p = plan(args)
    print(f"flowsoc offline: {p.env}, {p.agent_cls.__name__}, {'smoke' if args.smoke else args.preset} preset")
    data = _load_data(p, args)
    resume = _resuming(p, args)
    agent = p.agent_cls.create(
        jr.key(args.seed),
        *data_widths(data),
        p.agent_config,
        pretrained=pretrained_flow(p, data, resume),
    )
    info = {"env": p.env, "agent": args.agent, "preset": "smoke" if args.smoke else args.preset, **_bc_info(p)}
    result = train_offline(
        agent,
        data,
        p.train_config,
        evaluator=ogbench_evaluator(p.env, p.train_config, **_eval_env_kwargs(args)),
        run_dir=p.run_dir,
        resume=resume,
        info=info,
        loggers=_loggers(args, p),
    )
    table = results_table(result, args.agent)
    print(table)
    summary = {
        **info,
        "steps": int(result.agent.step),
        "evals": result.evals,
        "final_kl": float(np.mean([r["kl"] for r in result.train[-5:]])) if result.train else None,
        "final_lam": result.train[-1]["lam"] if result.train else None,
        "agent_config": dataclasses.asdict(p.agent_config),
        "train_config": dataclasses.asdict(p.train_config),
        "bc_checkpoint": None if p.bc_dir is None else str(p.bc_dir),
        "provenance": provenance(started),
    }
    _write_results(p.run_dir, summary, table)
    print(f"figure: {p.run_dir / 'learning_curve.png'}")
    return result


# Config fields whose flag has another name than the field (keyed by the config class, as its message names it).
_RENAMED_FLAGS = {
    ("OnlineConfig", "steps"): "--online-steps",
    ("OnlineConfig", "kl_budget"): "--online-kl-budget",
    ("OnlineConfig", "steps_per_dispatch"): "--online-steps-per-dispatch",
}
_CONFIG_MESSAGE = re.compile(r"(?P<cls>[A-Z]\w*): (?P<field>[a-z_]+)(?:=(?P<value>\S+))? (?P<rest>must\b.*)", re.S)


def flag_message(args_type: type, message: str) -> str:
    """`message` in the words of the command line: a configuration error `<Class>: <field> must ...` (or
    `<Class>: <field>=<value> must ...`) about a field set by a flag of the dataclass `args_type` names the flag,
    `--kl-budget must be > 0, got -1.0.`, and so do the `<field>=<value>` it mentions (`--steps-per-dispatch
    100`); fields whose flag has another name (`OnlineConfig`'s `steps` is `--online-steps`) are looked up in
    `_RENAMED_FLAGS`. Any other message, or one about a field that no flag sets, is returned as it is."""
    match = _CONFIG_MESSAGE.fullmatch(message.strip())
    if match is None:
        return message
    flags = {f.name for f in dataclasses.fields(args_type)}

    def flag_of(field: str) -> str | None:
        renamed = _RENAMED_FLAGS.get((match["cls"], field))
        return renamed or (f"--{field.replace('_', '-')}" if field in flags else None)

    head = flag_of(match["field"])
    if head is None:
        return message

    def mention(m: re.Match) -> str:
        flag = flag_of(m[1])
        return m[0] if flag is None else f"{flag} {m[2]}"

    rest = re.sub(r"\b([a-z_]+)=([^\s,;)]+)", mention, match["rest"])
    return f"{head}{'' if match['value'] is None else ' ' + match['value']} {rest}"


def _literal_choices(tp) -> tuple[tuple[str, ...], bool] | None:
    """The allowed strings of a `Literal[...]` type (also inside `... | None` or `tuple[Literal[...], ...]`)
    and whether the flag takes several values; `None` for any other type."""
    import types
    import typing

    origin, members = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return tuple(str(v) for v in members), False
    if origin in (typing.Union, types.UnionType):
        found = [c for c in map(_literal_choices, members) if c is not None]
        return (found[0][0], found[0][1]) if len(found) == 1 else None
    if origin is tuple and len(members) == 2 and members[1] is Ellipsis:
        inner = _literal_choices(members[0])
        return None if inner is None else (inner[0], True)
    return None


def choice_error(args_type: type, argv: list[str]) -> str | None:
    """The one-line usage error for a value outside a flag's choices (`--preset fast: choose small or
    paper`), checked before tyro (whose own message is a boxed block); `None` when every choice is valid."""
    import typing

    hints = typing.get_type_hints(args_type)
    choices: dict[str, tuple[tuple[str, ...], bool]] = {
        f"--{f.name.replace('_', '-')}": c
        for f in dataclasses.fields(args_type)
        if (c := _literal_choices(hints[f.name])) is not None
    }
    for i, token in enumerate(argv):
        flag, eq, value = token.partition("=")
        if flag not in choices:
            continue
        allowed, several = choices[flag]
        if eq:
            given = [value]
        else:
            following = list(argv[i + 1 :])
            end = next((j for j, t in enumerate(following) if t.startswith("--")), len(following))
            given = following[:end] if several else following[:1]
        for value in given:
            if value not in allowed:
                listed = allowed[0] if len(allowed) == 1 else ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
                return f"{flag} {value}: choose {listed}."
    return None


def _tyro_error(text: str) -> str:
    """tyro's boxed usage error as one line: the first paragraph of the box (`Unrecognized options: --stpes`),
    the flags it suggests (`did you mean --steps?`), and where to look."""
    sections: list[list[str]] = [[]]
    for line in text.splitlines():
        inner = line.strip().strip("│╭╮╰╯").strip()
        if line.strip().startswith(("╭", "╰")):  # the frame's top (holding the title) and bottom
            continue
        if inner and set(inner) <= set("─-"):
            sections.append([])
        else:
            sections[-1].append(inner)
    if "╭" not in text:  # without a frame (no Unicode terminal), the title comes first, above a rule
        sections = sections[1:] or [[]]
    sections = [lines[next((i for i, x in enumerate(lines) if x), len(lines)) :] for lines in sections]
    first = " ".join(" ".join(sections[0][: (sections[0] + [""]).index("")]).split())
    suggested = [
        lines[1].split()[0]
        for lines in sections
        if len(lines) > 1 and lines[0].startswith("Perhaps you meant") and lines[1].startswith("-")
    ]
    hint = f"; did you mean {suggested[0]}?" if suggested else ""
    return f"{first or 'invalid command line'}{hint} (see --help)"


def _help_without_none(args_type: type, tyro) -> type:
    """A subclass of the dataclass `args_type` for tyro's `--help`: each field defaulting to `None` (whose
    docstring says what `None` stands for) loses tyro's "(default: None)" and its "{None}|INT" metavar reads
    "INT"."""
    import typing

    hints = typing.get_type_hints(args_type, include_extras=True)
    annotations, defaults = {}, {}
    for f in dataclasses.fields(args_type):
        if f.default is not None:
            continue
        members = [m for m in typing.get_args(hints[f.name]) if m is not type(None)]
        plain = len(members) == 1 and members[0] in (int, float, str)
        conf = tyro.conf.arg(help_behavior_hint="", metavar=members[0].__name__.upper() if plain else None)
        annotations[f.name], defaults[f.name] = typing.Annotated[hints[f.name], conf], None
    namespace = {"__annotations__": annotations, "__doc__": args_type.__doc__, "__module__": args_type.__module__}
    return dataclasses.dataclass(frozen=True)(type(args_type.__name__, (args_type,), {**namespace, **defaults}))


def parse_cli(args_type: type, argv: list[str] | None = None):
    """Parse `argv` (default: `sys.argv[1:]`) into the dataclass `args_type` with tyro. A usage error prints one
    line `error: ...` and raises `SystemExit(2)`: a value outside a flag's choices is caught before tyro, any
    other error of tyro's is its boxed message flattened to a line."""
    import contextlib
    import io
    import sys

    import tyro

    argv = sys.argv[1:] if argv is None else list(argv)
    problem = choice_error(args_type, argv)
    if problem is None:
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                parsed = tyro.cli(_help_without_none(args_type, tyro), args=argv)
            return args_type(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(args_type)})
        except SystemExit as stop:
            if not stop.code:
                sys.stderr.write(captured.getvalue())
                raise
            problem = _tyro_error(captured.getvalue())
    print(f"error: {problem}", file=sys.stderr)
    raise SystemExit(2)


def run_cli(args_type: type, run, argv: list[str] | None = None) -> int:
    """The examples' `main`: parse `argv` into the dataclass `args_type` with tyro (`--help` lists its
    fields) and call `run(args)`. Each failure prints one line `error: ...` without a traceback: bad
    settings (a usage error: a bad flag value, or a setting out of range, named by its flag) return 2; a
    dataset, checkpoint, file-system or NaN failure returns 1; Ctrl-C (after the run saved its state and said
    so) returns 130. Success returns 0."""
    import sys

    from .._train import CheckpointError, NonFiniteLossError
    from ._data import DatasetError

    try:
        args = parse_cli(args_type, argv)
    except SystemExit as stop:
        return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 2
    try:
        run(args)
    except KeyboardInterrupt:
        return 130
    except (DatasetError, CheckpointError, NonFiniteLossError, OSError) as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"error: {_one_line(flag_message(args_type, str(err)))}", file=sys.stderr)
        return 2
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------- many seeds


def seeds_results_table(result: SeedsResult, agent_name: str) -> str:
    """A text table: per evaluated flow, the success rate across seeds at the start, at the end (mean
    and 95% Student-t confidence half-width) and at the best step (of the mean), and each seed's final
    success rate."""
    evals = result.evals
    if not evals:
        return "(no evaluations)"
    steps = sorted({r["step"] for r in evals})
    at = {step: [r for r in evals if r["step"] == step] for step in steps}
    flows = [k[: -len("/success")] for k in evals[-1] if k.endswith("/success")]
    lines = [
        f"{'method':<22}{'start':>8}{'final ± 95% CI':>17}{'best':>8}   final per seed ({len(result.seeds)} seeds)"
    ]
    for flow in flows:
        key = f"{flow}/success"
        mean = {step: aggregate([r[key] for r in rows]) for step, rows in at.items()}
        final = sorted(at[steps[-1]], key=lambda r: r["seed"])
        m, ci = mean[steps[-1]]
        ci_text = "" if np.isnan(ci) else f" ± {100 * ci:.0f}%"
        lines.append(
            f"{flow_label(flow, agent_name):<22}{100 * mean[steps[0]][0]:>7.0f}%{f'{100 * m:.0f}%{ci_text}':>17}"
            f"{100 * max(v[0] for v in mean.values()):>7.0f}%   " + " ".join(f"{100 * r[key]:.0f}" for r in final)
        )
    lines.append(
        f"(success rate over the evaluation episodes, mean over seeds {list(result.seeds)}; start = step {steps[0]}, "
        f"final = step {steps[-1]}; CI: Student t over seeds)"
    )
    return "\n".join(lines)


def run_offline_seeds(args: OfflineArgs) -> SeedsResult:
    """`args.seeds` seeds (`args.seed` onwards) trained together in one compiled program, sharded over
    the devices (as many as divide the seed count), each seed evaluated as its single-seed run would
    be; prints the table of means and 95% CIs and writes `summary.json`, `results.txt` and
    `learning_curve.png` (the mean over seeds) into the run directory."""
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}.")
    started = time.time()
    seeds = list(range(args.seed, args.seed + args.seeds))
    mode = "smoke" if args.smoke else args.preset
    p = plan(args)
    if args.run_dir is None:
        p = dataclasses.replace(
            p, run_dir=pathlib.Path(f"runs/{args.env}-{args.agent}-{mode}-seeds{seeds[0]}-{seeds[-1]}")
        )
    print(f"flowsoc offline: {p.env}, {p.agent_cls.__name__}, {mode} preset, seeds {seeds[0]}-{seeds[-1]}")
    data = _load_data(p, args)
    resume = _resuming(p, args)
    agents = create_agents(
        p.agent_cls,
        seeds,
        *data_widths(data),
        p.agent_config,
        pretrained=pretrained_flow(p, data, resume),
    )
    devices = jax.devices()[: math.gcd(len(seeds), jax.device_count())]
    mesh = seed_mesh(devices) if len(devices) > 1 else None
    if len(devices) < jax.device_count():
        print(
            f"note: {len(seeds)} seeds over {len(devices)} of {jax.device_count()} devices "
            "(a multiple of the device count uses them all)"
        )
    info = {"env": p.env, "agent": args.agent, "preset": mode, **_bc_info(p)}
    result = train_offline_seeds(
        agents,
        data,
        p.train_config,
        seeds,
        evaluator=ogbench_seeds_evaluator(p.env, p.train_config, **_eval_env_kwargs(args)),
        run_dir=p.run_dir,
        resume=resume,
        info=info,
        loggers=_loggers(args, p),
        mesh=mesh,
    )
    table = seeds_results_table(result, args.agent)
    print(table)
    summary = {
        **info,
        "seeds": seeds,
        "devices": len(devices),
        "steps": int(result.agent.step[0]),
        "final": result.summary(),
        "evals": result.evals,
        "agent_config": dataclasses.asdict(p.agent_config),
        "train_config": dataclasses.asdict(p.train_config),
        "provenance": provenance(started),
    }
    if jax.process_index() == 0:
        _write_results(p.run_dir, summary, table)
    print(f"figure: {p.run_dir / 'learning_curve.png'}")
    return result


# ---------------------------------------------------------------------------------- offline to online


@dataclasses.dataclass(frozen=True)
class OfflineToOnlineArgs(OfflineArgs):
    """Train a flow agent offline on an OGBench single-task dataset, then keep training it online while
    it acts in the environment (replay = offline data + online transitions), evaluating throughout.

    With no flags: the embedded default, the small cube-single dataset and preset, a short offline
    phase then a short online phase (about 10 minutes on 2 CPU cores). `--preset paper`: 1M offline
    + 500K online steps with the official settings.
    """

    steps: int | None = None
    """Offline update steps (default: 1,000,000 for paper, 10,000 for small)."""
    eval_every: int | None = None
    """Steps between evaluations, in both phases (default: 50,000 for paper, 5,000 for small)."""
    bc: bool = False
    """Also evaluate the behaviour (BC) flow (it keeps training on the mixed buffer online)."""
    online_steps: int | None = None
    """Environment steps of the online phase (default: 500,000 for paper, 10,000 for small)."""
    start_training: int | None = None
    """Online environment steps collected before the first online update (default: 5,000 for paper,
    1,000 for small)."""
    utd: int = 1
    """Updates per online environment step."""
    online_kl_budget: float | None = None
    """TRQAM: a separate KL budget for the online phase (default: keep the offline one)."""
    num_envs: int = 1
    """Environments acting together online (one batched policy call per chunk)."""
    env_workers: bool = False
    """Step each online environment in its own process."""
    online_steps_per_dispatch: int = 100
    """Online environment steps between update dispatches (utd x this updates are fused)."""


def plan_online(args: OfflineToOnlineArgs) -> tuple[Plan, OnlineConfig, OGBenchEnvFactory]:
    """The offline `Plan`, the `OnlineConfig` and the environment factory `args` resolve to."""
    if args.seeds != 1:
        raise ValueError(
            f"--seeds {args.seeds}: the offline-to-online run trains one seed per process (each seed acts in "
            "its own environments); run one command per seed with --seed."
        )
    if args.smoke:
        defaults = dict(steps=20, eval_every=20, online_steps=40, start_training=20, per_dispatch=10)
    elif args.preset == "small":
        defaults = dict(steps=10_000, eval_every=5_000, online_steps=10_000, start_training=1_000, per_dispatch=None)
    else:
        defaults = dict(
            steps=1_000_000, eval_every=50_000, online_steps=500_000, start_training=5_000, per_dispatch=None
        )
    offline_args = dataclasses.replace(
        args,
        steps=defaults["steps"] if args.steps is None else args.steps,
        eval_every=defaults["eval_every"] if args.eval_every is None else args.eval_every,
        run_dir=args.run_dir
        or f"runs/{args.env}-{args.agent}-{'smoke' if args.smoke else args.preset}-o2o-seed{args.seed}",
    )
    p = plan(offline_args)
    t = p.train_config
    per_dispatch = defaults["per_dispatch"] or args.online_steps_per_dispatch
    online = OnlineConfig(
        steps=defaults["online_steps"] if args.online_steps is None else args.online_steps,
        start_training=defaults["start_training"] if args.start_training is None else args.start_training,
        utd=args.utd,
        steps_per_dispatch=per_dispatch,
        batch_size=t.batch_size,
        num_envs=args.num_envs,
        env_workers=args.env_workers,
        kl_budget=args.online_kl_budget,
        sparse_rewards=p.preset.sparse,
        eval_every=t.eval_every,
        eval_episodes=t.eval_episodes,
        eval_envs=t.eval_envs,
        eval_flows=t.eval_flows,
        checkpoint_every=t.checkpoint_every,
        seed=args.seed,
        progress=args.progress,
    )
    factory = OGBenchEnvFactory(args.env, tuple(_eval_env_kwargs(args).items()))
    return p, online, factory


def online_results_table(result: TrainResult, agent_name: str, offline_steps: int) -> str:
    """Per evaluated flow: success at the start, at the end of the offline phase (before online), at
    the end of the online phase, and the best online evaluation."""
    evals = result.evals
    before = [r for r in evals if r["step"] <= offline_steps]
    after = [r for r in evals if r["step"] > offline_steps]
    if not before or not after:
        return results_table(result, agent_name)
    flows = [k[: -len("/success")] for k in evals[-1] if k.endswith("/success")]
    lines = [f"{'method':<22}{'start':>9}{'offline':>9}{'online':>9}{'best online':>13}"]
    for flow in flows:
        key = f"{flow}/success"
        best = max(r[key] for r in after)
        lines.append(
            f"{flow_label(flow, agent_name):<22}{100 * before[0][key]:>8.0f}%{100 * before[-1][key]:>8.0f}%"
            f"{100 * after[-1][key]:>8.0f}%{100 * best:>12.0f}%"
        )
    lines.append(
        f"(success rate over the evaluation episodes; offline = step {before[-1]['step']}, end of the offline "
        f"phase; online = step {after[-1]['step']}, after {after[-1]['step'] - offline_steps} environment steps)"
    )
    return "\n".join(lines)


def run_offline_to_online(args: OfflineToOnlineArgs) -> TrainResult:
    """The offline phase (skipped when `--resume` finds it complete), then the online phase; prints
    the before/after table and writes `summary.json`, `results.txt` and `learning_curve.png`."""
    started = time.time()
    p, online, factory = plan_online(args)
    mode = "smoke" if args.smoke else args.preset
    print(f"flowsoc offline-to-online: {p.env}, {p.agent_cls.__name__}, {mode} preset")
    data = _load_data(p, args)
    resume_online = args.resume and latest_online_checkpoint(p.run_dir) is not None
    resume_offline = not resume_online and _resuming(p, args)
    agent = p.agent_cls.create(
        jr.key(args.seed),
        *data_widths(data),
        p.agent_config,
        pretrained=pretrained_flow(p, data, resume_online or resume_offline),
    )
    info = {"env": p.env, "agent": args.agent, "preset": mode, "protocol": "offline-to-online", **_bc_info(p)}
    evaluator = ogbench_evaluator(p.env, p.train_config, **_eval_env_kwargs(args))  # one set of envs, both phases
    if resume_online:
        offline_agent = agent
    else:
        print(f"offline phase: {p.train_config.steps} updates")
        offline_agent = train_offline(
            agent,
            data,
            p.train_config,
            evaluator=evaluator,
            run_dir=p.run_dir,
            resume=resume_offline,
            info=info,
            loggers=_loggers(args, p),
        ).agent
    print(f"online phase: {online.steps} environment steps, updates from step {online.start_training}")
    result = train_online(
        offline_agent,
        data,
        online,
        factory,
        evaluator=evaluator,
        run_dir=p.run_dir,
        resume=resume_online,
        info=info,
        loggers=_loggers(args, p),
    )
    offline_steps = p.train_config.steps
    table = online_results_table(result, args.agent, offline_steps)
    print(table)
    online_rows = [r for r in result.train if r.get("phase") == "online"]
    summary = {
        **info,
        "offline_steps": offline_steps,
        "online_steps": online.steps,
        "updates": int(result.agent.step),
        "evals": result.evals,
        "online_episodes": online_rows[-1].get("online/episodes") if online_rows else 0,
        "final_kl": next((r["kl"] for r in reversed(result.train) if "kl" in r), None),
        "final_lam": next((r["lam"] for r in reversed(result.train) if "lam" in r), None),
        "agent_config": dataclasses.asdict(result.agent.config),
        "train_config": dataclasses.asdict(p.train_config),
        "online_config": dataclasses.asdict(online),
        "provenance": provenance(started),
    }
    _write_results(p.run_dir, summary, table)
    print(f"figure: {p.run_dir / 'learning_curve.png'}")
    return result
