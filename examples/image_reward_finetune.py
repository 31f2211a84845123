"""Reward fine-tuning of an image flow model under exact path-KL budgets, on a CPU.

Data: scikit-learn's bundled 8x8 handwritten digits (`sklearn.datasets.load_digits`: 1,797 images, 10
classes, no download), scaled to [-1, 1] and kept image-shaped, (1, 8, 8); 70% train, 30% held out.

1. Pre-train a small flow-matching model on the training images (an MLP-mixer velocity field: 2x2 patches,
   a sinusoidal time embedding, FiLM in every block) and a small classifier (held-out accuracy printed);
   both are cached, keyed by their settings, and reused on the next run.
2. Fine-tune copies of the flow with `flowsoc.finetune` towards r(x) = log p(target | x) under the
   classifier: (a) with the trust region at several path-KL budgets, (b) at a fixed λ = 1, whose tilted
   target p_base(x) p(target | x) is the base's own class-conditional law, and (c) a naive baseline that
   backpropagates the reward through the ODE sampler with no KL term, for the same number of steps.
3. Sample each model's ODE and write `samples.png` (sample grids), `curves.png` (reward, path KL and λ
   against steps, budgets dashed) and `results.json`; print a table: reward, the realised path KL (on fresh
   SDE paths of the final field) against its budget, the target class's share among samples (by the
   classifier), the Fréchet distance to held-out data in the classifier's feature space (to all held-out
   images and to those of the target class), and the diversity of the samples.

    python examples/image_reward_finetune.py            # 11 minutes on 2 CPU cores; 6.6 once cached
    python examples/image_reward_finetune.py --quick    # tiny settings for smoke tests (mostly compilation)
    python examples/image_reward_finetune.py --budgets 1 4 --target 8 --steps 600

Outputs go to outputs/image_reward_finetune/ unless --out is given; the pre-trained flow and classifier to
~/.cache/flowsoc/digits/ unless --cache-dir is given.
"""

import dataclasses
import hashlib
import json
import math
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

import flowsoc as fs
from flowsoc._checkpoint import CheckpointError, load_tree, save_tree


SHAPE = (1, 8, 8)  # one image: channels, height, width
FLOW = dict(patch=2, dim=48, depth=2, time_dim=32)  # the base flow's architecture (part of its cache key)
QUICK_FLOW = dict(patch=2, dim=16, depth=1, time_dim=16)  # --quick: the smallest program to compile


# ------------------------------------------------------------------------------------------ models


def sinusoidal_embedding(t: Float[Array, ""], dim: int) -> Float[Array, " dim"]:
    r"""$[\sin(2\pi f_k t), \cos(2\pi f_k t)]_k$ with $f_k$ geometric from 1 to 100 (Transformer-style)."""
    freqs = jnp.exp(jnp.linspace(0.0, math.log(100.0), dim // 2))
    angles = 2 * jnp.pi * freqs * jnp.asarray(t, jnp.float32)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)])


class MixerBlock(eqx.Module):
    """One MLP-mixer block with FiLM time conditioning: token mixing (across patches, per channel),
    then channel mixing (per patch), each pre-normalised, residual."""

    norm1: eqx.nn.LayerNorm
    token_mlp: eqx.nn.MLP
    norm2: eqx.nn.LayerNorm
    channel_mlp: eqx.nn.MLP
    film: eqx.nn.Linear

    def __init__(self, tokens: int, dim: int, time_dim: int, key: PRNGKeyArray):
        k1, k2, k3 = jr.split(key, 3)
        self.norm1 = eqx.nn.LayerNorm(dim, use_weight=False, use_bias=False)
        self.token_mlp = eqx.nn.MLP(tokens, tokens, 2 * tokens, 1, activation=jax.nn.gelu, key=k1)
        self.norm2 = eqx.nn.LayerNorm(dim, use_weight=False, use_bias=False)
        self.channel_mlp = eqx.nn.MLP(dim, dim, 2 * dim, 1, activation=jax.nn.gelu, key=k2)
        self.film = eqx.nn.Linear(time_dim, 4 * dim, key=k3)

    def __call__(self, h: Float[Array, "tokens dim"], temb: Float[Array, " time_dim"]) -> Float[Array, "tokens dim"]:
        s1, b1, s2, b2 = jnp.split(self.film(temb), 4)
        y = jax.vmap(self.norm1)(h) * (1 + s1) + b1
        h = h + jax.vmap(self.token_mlp, in_axes=1, out_axes=1)(y)
        y = jax.vmap(self.norm2)(h) * (1 + s2) + b2
        return h + jax.vmap(self.channel_mlp)(y)


class MixerField(eqx.Module):
    r"""A velocity field $v(t, x)$ on one image of shape `(C, H, W)`: an MLP-mixer over `patch` x `patch`
    patches with a sinusoidal time embedding fed to every block by FiLM.

    Why a mixer: it is all dense matrix products (fast on a CPU, where small convolutions are not), the
    patches keep the image's spatial structure, and one token-mixing layer already sees the whole 8x8
    image. Its output layer starts at zero."""

    embed: eqx.nn.Linear
    pos: Float[Array, "tokens dim"]
    time_mlp: eqx.nn.MLP
    blocks: tuple[MixerBlock, ...]
    out: eqx.nn.Linear
    shape: tuple[int, int, int] = eqx.field(static=True)
    patch: int = eqx.field(static=True)
    time_dim: int = eqx.field(static=True)

    def __init__(self, key, shape=SHAPE, patch=2, dim=64, depth=3, time_dim=32):
        c, h, w = shape
        tokens, pixels = (h // patch) * (w // patch), c * patch * patch
        keys = jr.split(key, depth + 4)
        self.shape, self.patch, self.time_dim = shape, patch, time_dim
        self.embed = eqx.nn.Linear(pixels, dim, key=keys[0])
        self.pos = 0.02 * jr.normal(keys[1], (tokens, dim))
        self.time_mlp = eqx.nn.MLP(time_dim, time_dim, 2 * time_dim, 1, activation=jax.nn.gelu, key=keys[2])
        self.blocks = tuple(MixerBlock(tokens, dim, time_dim, k) for k in keys[3 : 3 + depth])
        out = eqx.nn.Linear(dim, pixels, key=keys[-1])
        self.out = eqx.tree_at(
            lambda l: (l.weight, l.bias), out, (jnp.zeros_like(out.weight), jnp.zeros_like(out.bias))
        )

    def _patches(self, x):
        c, h, w = self.shape
        p = self.patch
        return x.reshape(c, h // p, p, w // p, p).transpose(1, 3, 0, 2, 4).reshape((h // p) * (w // p), c * p * p)

    def _image(self, tokens):
        c, h, w = self.shape
        p = self.patch
        return tokens.reshape(h // p, w // p, c, p, p).transpose(2, 0, 3, 1, 4).reshape(c, h, w)

    def __call__(self, t, x: Float[Array, "c h w"], args=None) -> Float[Array, "c h w"]:
        temb = self.time_mlp(sinusoidal_embedding(t, self.time_dim))
        h = jax.vmap(self.embed)(self._patches(x)) + self.pos
        for block in self.blocks:
            h = block(h, temb)
        return self._image(jax.vmap(self.out)(h)).astype(x.dtype)


class Classifier(eqx.Module):
    """A small MLP classifier on one image; `features` is its last hidden layer (the space of the
    Fréchet distance)."""

    layers: tuple[eqx.nn.Linear, ...]
    head: eqx.nn.Linear

    def __init__(self, key, pixels=64, width=128, feature_dim=64, classes=10):
        k1, k2, k3 = jr.split(key, 3)
        self.layers = (eqx.nn.Linear(pixels, width, key=k1), eqx.nn.Linear(width, feature_dim, key=k2))
        self.head = eqx.nn.Linear(feature_dim, classes, key=k3)

    def features(self, x: Float[Array, "c h w"]) -> Float[Array, " feature_dim"]:
        h = x.reshape(-1)
        for layer in self.layers:
            h = jax.nn.gelu(layer(h))
        return h

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " classes"]:
        return self.head(self.features(x))


class ClassLogProb(eqx.Module):
    """The reward's `args`: the frozen classifier and the target class; r(x) = log p(target | x)."""

    classifier: Classifier
    target: int = eqx.field(static=True)


def reward(x: Float[Array, "c h w"], args: ClassLogProb) -> Float[Array, ""]:
    r"""$r(x) = \log p(\text{target} \mid x)$ under the classifier (passed as `args`, so that it is an array
    input of the compiled step rather than constants baked into it)."""
    return jax.nn.log_softmax(args.classifier(x))[args.target]


# -------------------------------------------------------------------------------------------- data


def load_data(seed: int = 0):
    """The digits as float32 images in [-1, 1], shape (n, 1, 8, 8), split 70/30 stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, digits.target, test_size=0.3, stratify=digits.target, random_state=seed
    )
    return jnp.asarray(x_tr), jnp.asarray(y_tr), jnp.asarray(x_te), jnp.asarray(y_te)


# -------------------------------------------------------------------------------- training loops


def _fused_train(loss_fn, params, optimizer, key, steps, desc, chunk=250):
    """Adam-style training of `params` on `loss_fn(params, key)`, `chunk` steps per compiled call, with a
    progress bar."""
    from tqdm.auto import tqdm

    opt_state = optimizer.init(params)

    @eqx.filter_jit
    def run(params, opt_state, key, n):
        def body(carry, key):
            params, opt_state = carry
            loss, grads = eqx.filter_value_and_grad(loss_fn)(params, key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (eqx.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jr.split(key, n))
        return params, opt_state, losses

    losses_all = []
    with tqdm(total=steps, desc=desc, unit="step", file=sys.stdout) as bar:
        for start in range(0, steps, chunk):
            key, sub = jr.split(key)
            n = min(chunk, steps - start)
            params, opt_state, losses = run(params, opt_state, sub, n)
            losses_all.append(np.asarray(losses))
            bar.update(n)
            bar.set_postfix(loss=f"{float(losses[-1]):.4f}")
    return params, np.concatenate(losses_all)


def pretrain_flow(key, x_train, steps, arch, batch=256, lr=2e-3) -> MixerField:
    """Flow matching on the training images (noise at t=0, data at t=1), cosine-decayed Adam."""
    key_init, key = jr.split(key)
    params, static = eqx.partition(MixerField(key_init, **arch), eqx.is_inexact_array)

    def loss_fn(p, key):
        k0, k1, kt = jr.split(key, 3)
        field = eqx.combine(p, static)
        x1 = x_train[jr.randint(k1, (batch,), 0, x_train.shape[0])]
        x0, t = jr.normal(k0, x1.shape), jr.uniform(kt, (batch,))
        return jnp.mean(jax.vmap(lambda a, b, s: fs.flow_matching_loss(field, a, b, s))(x0, x1, t))

    schedule = optax.cosine_decay_schedule(lr, max(steps, 1), alpha=0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    params, _ = _fused_train(loss_fn, params, optimizer, key, steps, "pretrain flow")
    return eqx.combine(params, static)


def train_classifier(key, x_train, y_train, steps, batch=256, lr=2e-3, noise=0.1) -> Classifier:
    """Cross-entropy with light Gaussian-noise augmentation (std `noise`), Adam with weight decay."""
    key_init, key = jr.split(key)
    params, static = eqx.partition(Classifier(key_init), eqx.is_inexact_array)

    def loss_fn(p, key):
        ki, kn = jr.split(key)
        clf = eqx.combine(p, static)
        idx = jr.randint(ki, (batch,), 0, x_train.shape[0])
        x = x_train[idx] + noise * jr.normal(kn, (batch,) + SHAPE)
        logits = jax.vmap(clf)(x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y_train[idx]))

    optimizer = optax.adamw(lr, weight_decay=1e-4)
    params, _ = _fused_train(loss_fn, params, optimizer, key, steps, "classifier")
    return eqx.combine(params, static)


def cached(cache_dir: pathlib.Path, name: str, settings: dict, like, build):
    """`build()` once per `settings`: saved atomically as `<name>-<hash of settings>.eqx` (with a .json of
    the settings beside it) and loaded on later runs. Returns (tree, whether it came from the cache)."""
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir / f"{name}-{tag}.eqx"
    if path.exists():
        try:
            return load_tree(path, like), True
        except CheckpointError as err:
            print(f"{path} unusable ({err}); rebuilding it")
    tree = build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_tree(path, tree)
    (cache_dir / f"{name}-{tag}.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
    return tree, False


# ------------------------------------------------------------------------------ naive baseline


def batched(field):
    """A one-sample field applied to a batch (what `flowsoc.finetune` does inside)."""
    return lambda t, x, args: jax.vmap(lambda xi: field(t, xi, args))(x)


def naive_finetune(base, args: ClassLogProb, steps, batch, num_flow_steps, lr, grad_clip, seed):
    """Maximise E[r(X_1)] by backpropagating through the Euler ODE sampler, with no KL term: the reward
    fine-tuning that has no guard against reward hacking. Same optimiser, batch and steps as the others."""
    from tqdm.auto import tqdm

    params, static = eqx.partition(base, eqx.is_inexact_array)
    ts = fs.uniform_grid(num_flow_steps)
    optimizer = optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(lr))

    def loss_fn(p, key):
        x0 = jr.normal(key, (batch,) + SHAPE)
        x1 = fs.sample_ode(batched(eqx.combine(p, static)), x0, ts)
        rewards = jax.vmap(reward, in_axes=(0, None))(x1, args)
        return -jnp.mean(rewards)

    @eqx.filter_jit
    def run(params, opt_state, key, n):
        def body(carry, key):
            params, opt_state = carry
            loss, grads = eqx.filter_value_and_grad(loss_fn)(params, key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (eqx.apply_updates(params, updates), opt_state), -loss

        (params, opt_state), rewards = jax.lax.scan(body, (params, opt_state), jr.split(key, n))
        return params, opt_state, rewards

    opt_state, key, history = optimizer.init(params), jr.key(seed), []
    chunk = min(100, steps)
    with tqdm(total=steps, desc="naive", unit="step", file=sys.stdout) as bar:
        for start in range(0, steps, chunk):
            key, sub = jr.split(key)
            n = min(chunk, steps - start)
            params, opt_state, rewards = run(params, opt_state, sub, n)
            history.append(np.asarray(rewards))
            bar.update(n)
            bar.set_postfix(reward=f"{float(rewards[-1]):.3g}")
    return eqx.combine(params, static), {"reward": np.concatenate(history)}


# ---------------------------------------------------------------------------------- evaluation


@eqx.filter_jit
def sample_images(field, key, n: int, num_flow_steps: int):
    """n images from the flow ODE (Euler on the training grid)."""
    x0 = jr.normal(key, (n,) + SHAPE)
    return fs.sample_ode(batched(field), x0, fs.uniform_grid(num_flow_steps))


@eqx.filter_jit
def realised_path_kl(field, base, key, n: int, num_flow_steps: int):
    """Mean Girsanov path KL over n fresh paths of the field's memoryless SDE (the last step a base ODE
    step, as in training): the estimator the trust region holds at its budget, on new paths."""
    ts = fs.uniform_grid(num_flow_steps)
    key_x0, key_bm = jr.split(key)
    x0 = jr.normal(key_x0, (n,) + SHAPE)
    xs = fs.sample_sde(batched(field), x0, ts, key_bm, final_field=batched(base))
    kls = jax.vmap(lambda path: fs.path_kl(field, base, path, ts), in_axes=1)(xs)
    return jnp.mean(kls)


@eqx.filter_jit
def _classify(classifier, x):
    return jax.vmap(classifier.features)(x), jax.vmap(classifier)(x)


def mean_pairwise_distance(x, max_n=500) -> float:
    """Diversity: the mean L2 distance between two different samples (pixel space, first `max_n`)."""
    flat = np.asarray(x[:max_n], np.float64).reshape(min(len(x), max_n), -1)
    sq = np.sum(flat**2, 1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0, None)
    n = flat.shape[0]
    return float(np.sqrt(d2).sum() / (n * (n - 1)))


def evaluate(images, classifier, target, ref_all, ref_target) -> dict:
    """Reward, target share, Fréchet distances (to all held-out images, to the target class's) and diversity."""
    feats, logits = _classify(classifier, images)
    log_probs = jax.nn.log_softmax(logits)
    return {
        "reward": float(jnp.mean(log_probs[:, target])),
        "target_share": float(jnp.mean(jnp.argmax(logits, -1) == target)),
        "fd_all": fs.frechet_distance(feats, ref_all),
        "fd_target": fs.frechet_distance(feats, ref_target),
        "diversity": mean_pairwise_distance(images),
    }


# ------------------------------------------------------------------------------------------ figures


def mosaic(images, rows=6, cols=6, pad=1):
    x = np.asarray(images[: rows * cols, 0])
    h, w = x.shape[1:]
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), -1.0)  # white gaps
    for i, img in enumerate(x):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return canvas


def write_figures(out, samples, results, histories, budgets):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(2.3 * len(samples), 2.9))
    for ax, (name, images) in zip(np.atleast_1d(axes), samples.items()):
        ax.imshow(mosaic(images), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        r = results[name]
        ax.set_title(f"{name}\nr {r['reward']:.2f}, share {100 * r['target_share']:.0f}%", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=110)
    plt.close(fig)

    fig, (ax_r, ax_kl, ax_lam) = plt.subplots(1, 3, figsize=(15, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    window = 10
    for (name, history), colour in zip(histories.items(), colours):
        steps = np.arange(1, len(history["reward"]) + 1)
        smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid") if len(v) >= window else v
        ax_r.plot(
            steps[len(steps) - len(smooth(history["reward"])) :], smooth(history["reward"]), color=colour, label=name
        )
        if "kl" in history:
            kl = smooth(history["kl"])
            ax_kl.plot(steps[len(steps) - len(kl) :], kl, color=colour, label=name)
            ax_lam.plot(steps, history["lam"], color=colour, label=name)
        if name in budgets:
            ax_kl.axhline(budgets[name], color=colour, linestyle="--", linewidth=1)
    ax_r.set(xlabel="step", ylabel="batch mean log p(target | x)", title="reward")
    ax_kl.set(xlabel="step", ylabel=f"path KL of the batch ({window}-step mean)", title="path KL; budgets dashed")
    ax_kl.set_yscale("symlog", linthresh=0.1)
    ax_lam.set(xlabel="step", ylabel="λ", yscale="log", title="λ (dual variable, or fixed)")
    ax_r.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- CLI


@dataclasses.dataclass
class Args:
    """Reward fine-tuning of a digits flow under exact path-KL budgets (see the module docstring)."""

    out: pathlib.Path = pathlib.Path("outputs/image_reward_finetune")
    """Output directory (samples.png, curves.png, results.json)."""
    cache_dir: pathlib.Path = pathlib.Path("~/.cache/flowsoc/digits")
    """Where the pre-trained flow and classifier are cached, keyed by their settings."""
    target: int = 3
    """The digit class the reward favours: r(x) = log p(target | x)."""
    budgets: tuple[float, ...] = (0.5, 2.0, 4.0)
    """Path-KL budgets (nats) of the trust-region runs."""
    fixed_lam: float = 1.0
    """λ of the fixed-λ run (λ = 1: the target is the base's class-conditional law); 0 skips the run."""
    naive: bool = True
    """Run the naive baseline (reward backpropagated through the ODE sampler, no KL)."""
    steps: int = 300
    """Fine-tuning steps of every run."""
    batch_size: int = 32
    """Paths (images) per fine-tuning step."""
    num_flow_steps: int = 10
    """Euler steps of the sampler, the SDE and the lean adjoint."""
    learning_rate: float = 1e-3
    """Adam's learning rate for fine-tuning (all runs)."""
    pretrain_steps: int = 4000
    """Flow-matching steps of the base flow (cached)."""
    classifier_steps: int = 1500
    """Training steps of the classifier (cached)."""
    samples: int = 1000
    """Images sampled per model for the table."""
    seed: int = 0
    """Seed of everything."""
    quick: bool = False
    """Tiny settings for a smoke test: a one-block mixer of width 16, seconds of training (the numbers mean
    nothing; the time is mostly compilation)."""

    def check(self) -> None:
        def positive(flag, value):
            if not value >= 1:
                raise ValueError(f"--{flag} must be a positive integer, got {value}.")

        for flag in ("steps", "batch_size", "pretrain_steps", "classifier_steps"):
            positive(flag.replace("_", "-"), getattr(self, flag))
        if self.samples < 2:
            raise ValueError(f"--samples must be >= 2 (a covariance needs two samples), got {self.samples}.")
        if self.num_flow_steps < 2:
            raise ValueError(f"--num-flow-steps must be >= 2, got {self.num_flow_steps}.")
        if not 0 <= self.target <= 9:
            raise ValueError(f"--target must be a digit class 0-9, got {self.target}.")
        if not all(np.isfinite(b) and b > 0 for b in self.budgets):
            raise ValueError(f"--budgets must all be > 0, got {list(self.budgets)}.")
        if not (np.isfinite(self.fixed_lam) and self.fixed_lam >= 0):
            raise ValueError(f"--fixed-lam must be > 0 (or 0 to skip the run), got {self.fixed_lam}.")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}.")


QUICK = dict(steps=12, batch_size=8, num_flow_steps=4, pretrain_steps=60, classifier_steps=60, samples=64)


def run(args: Args, argv: list[str] | None = None) -> dict:
    if args.quick:
        args = dataclasses.replace(args, **QUICK)
    args.check()
    started = time.time()
    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir.expanduser()
    key_flow, key_clf, key_eval, key_kl = jr.split(jr.key(args.seed), 4)
    x_tr, y_tr, x_te, y_te = load_data(args.seed)
    print(f"digits: {x_tr.shape[0]} train, {x_te.shape[0]} held-out images of shape {tuple(x_tr.shape[1:])}")

    arch = QUICK_FLOW if args.quick else FLOW
    flow_settings = {"model": "mixer", **arch, "steps": args.pretrain_steps, "seed": args.seed, "v": 1}
    clf_settings = {"model": "mlp-128-64", "steps": args.classifier_steps, "seed": args.seed, "v": 1}
    t0 = time.time()
    base, flow_hit = cached(
        cache_dir,
        "flow",
        flow_settings,
        MixerField(jr.key(0), **arch),
        lambda: pretrain_flow(key_flow, x_tr, args.pretrain_steps, arch),
    )
    classifier, clf_hit = cached(
        cache_dir,
        "classifier",
        clf_settings,
        Classifier(jr.key(0)),
        lambda: train_classifier(key_clf, x_tr, y_tr, args.classifier_steps),
    )
    pretrain_s = time.time() - t0
    _, test_logits = _classify(classifier, x_te)
    accuracy = float(jnp.mean(jnp.argmax(test_logits, -1) == y_te))
    print(
        f"flow {'from the cache' if flow_hit else 'trained'}, classifier {'from the cache' if clf_hit else 'trained'} "
        f"({pretrain_s:.0f} s); classifier held-out accuracy {100 * accuracy:.1f}% on {len(y_te)} images"
    )

    reward_args = ClassLogProb(classifier, args.target)
    ref_all = np.asarray(_classify(classifier, x_te)[0])
    ref_target = ref_all[np.asarray(y_te) == args.target]
    common = dict(
        num_steps=args.steps,
        batch_size=args.batch_size,
        num_flow_steps=args.num_flow_steps,
        learning_rate=args.learning_rate,
        steps_per_dispatch=min(50, args.steps),
        checkpoint_every=args.steps,
        seed=args.seed,
    )
    configs = {
        f"budget {eps:g}": fs.FinetuneConfig(
            trust_region=fs.DualDescent(kl_budget=eps, log_space=True, step_size=0.05, lam_min=0.01, lam_max=1000.0),
            **common,
        )
        for eps in args.budgets
    }
    if args.fixed_lam > 0:
        configs[f"fixed λ={args.fixed_lam:g}"] = fs.FinetuneConfig.fixed(args.fixed_lam, **common)

    fields, histories, timings = {"base": base}, {}, {}
    for name, config in configs.items():
        print(f"\n{name}")
        t0 = time.time()
        field, history, _ = fs.finetune(base, reward, SHAPE, config, args=reward_args)
        fields[name], histories[name], timings[name] = field, history, time.time() - t0
    if args.naive:
        print("\nnaive (reward backpropagated through the ODE sampler, no KL)")
        t0 = time.time()
        field, history = naive_finetune(
            base, reward_args, args.steps, args.batch_size, args.num_flow_steps, args.learning_rate, 1.0, args.seed
        )
        fields["naive"], histories["naive"], timings["naive"] = field, history, time.time() - t0

    results = {
        "data (train)": evaluate(x_tr, classifier, args.target, ref_all, ref_target),
    }
    results["data (train)"]["fd_target"] = fs.frechet_distance(
        np.asarray(_classify(classifier, x_tr[np.asarray(y_tr) == args.target])[0]), ref_target
    )
    samples = {}
    tail = max(1, args.steps // 5)
    for name, field in fields.items():
        images = sample_images(field, key_eval, args.samples, args.num_flow_steps)
        samples[name] = images
        row = evaluate(images, classifier, args.target, ref_all, ref_target)
        row["path_kl"] = (
            0.0 if name == "base" else float(realised_path_kl(field, base, key_kl, 512, args.num_flow_steps))
        )
        config = configs.get(name)
        row["kl_budget"] = config.trust_region.kl_budget if config is not None and config.trust_region else None
        if name in histories and "lam" in histories[name]:
            row["lam_final"] = float(np.mean(histories[name]["lam"][-tail:]))
            row["train_kl_last"] = float(np.mean(histories[name]["kl"][-tail:]))
        if name in timings:
            row["train_s"] = timings[name]
        results[name] = row

    header = (
        f"{'run':<14}{'λ':>8}{'path KL':>9}{'budget':>8}{'reward':>9}{'share':>8}{'FD all':>9}{'FD class':>10}"
        f"{'diversity':>11}"
    )
    lines = [header]
    for name, r in results.items():
        lam = f"{r['lam_final']:.3g}" if "lam_final" in r else ""
        kl = f"{r['path_kl']:.3f}" if "path_kl" in r else ""
        budget = f"{r['kl_budget']:g}" if r.get("kl_budget") else ""
        lines.append(
            f"{name:<14}{lam:>8}{kl:>9}{budget:>8}{r['reward']:>9.3f}{100 * r['target_share']:>7.1f}%"
            f"{r['fd_all']:>9.2f}{r['fd_target']:>10.2f}{r['diversity']:>11.2f}"
        )
    table = "\n".join(lines)
    print(f"\ntarget digit {args.target}; {args.samples} samples per model; classifier accuracy {100 * accuracy:.1f}%")
    print(table)

    budgets = {name: c.trust_region.kl_budget for name, c in configs.items() if c.trust_region is not None}
    shown = {"data (held-out)": x_te[:36], **samples}
    titles = {**results, "data (held-out)": evaluate(x_te, classifier, args.target, ref_all, ref_target)}
    write_figures(out, shown, titles, histories, budgets)
    record = {
        "command": " ".join(["python examples/image_reward_finetune.py", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in dataclasses.asdict(args).items()},
        "classifier_heldout_accuracy": accuracy,
        "cache": {"flow": flow_hit, "classifier": clf_hit},
        "pretrain_s": pretrain_s,
        "wall_s": time.time() - started,
        "results": results,
        "histories": {name: {k: np.asarray(v).tolist() for k, v in h.items()} for name, h in histories.items()},
        "table": table,
    }
    (out / "results.json").write_text(json.dumps(record, indent=1))
    print(f"\nwrote {out / 'samples.png'}, {out / 'curves.png'} and {out / 'results.json'} ({record['wall_s']:.0f} s)")
    return record


def main(argv=None) -> int:
    """Parse the flags with tyro and run; a bad setting prints one line naming its flag and returns 2, a
    file-system or non-finite failure returns 1."""
    import tyro

    try:
        args = tyro.cli(Args, args=argv)
    except SystemExit as stop:
        return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 2
    try:
        run(args, argv)
    except KeyboardInterrupt:
        return 130
    except (OSError, CheckpointError, FloatingPointError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
