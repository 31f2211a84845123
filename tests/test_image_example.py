"""The image reward fine-tuning example and what it rests on: the Fréchet distance against its closed form,
the trust region on image-shaped states holding the realised path KL at two budgets, a smoke run of the
example, its cache, and its one-line flag errors."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowsoc as fs
from flowsoc import gaussian as G


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


# --------------------------------------------------------------------------------- Fréchet distance


def _closed_form(m1, s1, m2, s2):
    """||m1 - m2||² + tr(S1 + S2 - 2 (S1^½ S2 S1^½)^½), square roots by scipy's general sqrtm."""
    from scipy.linalg import sqrtm

    r1 = np.real(sqrtm(s1))
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(sqrtm(r1 @ s2 @ r1))))


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    d, n = 6, 200_000
    a1, a2 = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = a1 @ a1.T / d + 0.1 * np.eye(d), a2 @ a2.T / d + 0.1 * np.eye(d)
    exact = _closed_form(m1, s1, m2, s2)
    assert abs(fs.gaussian_frechet_distance(m1, s1, m2, s2) - exact) < 1e-9 * max(1.0, exact)
    # Commuting (diagonal) covariances: d² = ||m1 - m2||² + Σ (√a_i - √b_i)², no matrix square root at all.
    a, b = rng.uniform(0.2, 2.0, d), rng.uniform(0.2, 2.0, d)
    diag = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert abs(fs.gaussian_frechet_distance(m1, np.diag(a), m2, np.diag(b)) - diag) < 1e-10
    # From samples of the two Gaussians: the closed form at their sample moments, exactly, and the
    # population value within sampling error.
    x1 = rng.multivariate_normal(m1, s1, size=n)
    x2 = rng.multivariate_normal(m2, s2, size=n)
    sampled = fs.frechet_distance(x1, x2)
    moments = _closed_form(x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0), np.cov(x2, rowvar=False))
    assert abs(sampled - moments) < 1e-8 * max(1.0, moments)
    assert abs(sampled - exact) < 0.02 * exact
    assert fs.frechet_distance(x1[:1000], x1[:1000]) < 1e-8
    with pytest.raises((ValueError, TypeError)):  # our check, or jaxtyping's under the test suite
        fs.frechet_distance(x1[:, :3], x2)
    with pytest.raises(ValueError, match="NaN"):
        fs.frechet_distance(np.full((4, d), np.nan), x2)


# --------------------------------------------------------------- the trust region on image states


class ImageGaussian(eqx.Module):
    """The exact Gaussian flow as a field on image-shaped states (1, 4, 4): flattened to 16 entries."""

    inner: G.GaussianVelocity

    def __call__(self, t, x, args=None):
        return self.inner(t, x.reshape(-1), args).reshape(x.shape)


IMAGE = (1, 4, 4)
D = 16


def test_trust_region_holds_two_budgets_on_image_states():
    """On (1, 4, 4) states and a linear reward, the path KL realised on each step's fresh paths, averaged after
    convergence (the last 200 of 500 steps), sits within 10% of each of two budgets, and λ within 10% of its
    closed-form dual value."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((D, D)) / np.sqrt(D)
    cov = jnp.asarray(0.5 * np.eye(D) + 0.5 * a @ a.T)
    mean = jnp.asarray(0.3 * rng.standard_normal(D))
    b = jnp.asarray(rng.standard_normal(D))
    b = b / jnp.sqrt(b @ cov @ b)  # bᵀΣb = 1: KL*(λ) = 1/(2λ²)
    base = ImageGaussian(G.GaussianVelocity(mean, cov))
    reward = lambda x, args: jnp.sum(b.reshape(IMAGE) * x)
    ts = fs.uniform_grid(25)
    batched = lambda f: lambda t, x, args: jax.vmap(lambda xi: f(t, xi, args))(x)
    for budget in (0.2, 1.0):
        dual = fs.DualDescent(kl_budget=budget, step_size=0.05, log_space=True)
        config = fs.FinetuneConfig(
            trust_region=dual, num_steps=500, num_flow_steps=25, learning_rate=1e-2, batch_size=64,
            steps_per_dispatch=250,
        )  # fmt: skip
        field, history, _ = fs.finetune(base, reward, IMAGE, config, progress=False)
        assert abs(history["kl"][-200:].mean() - budget) < 0.1 * budget
        key_x0, key_bm = jr.split(jr.key(7))
        xs = fs.sample_sde(batched(field), jr.normal(key_x0, (2048,) + IMAGE), ts, key_bm, final_field=batched(base))
        realised = jnp.mean(jax.vmap(lambda path: fs.path_kl(field, base, path, ts), in_axes=1)(xs))
        # The last field alone, on 2048 fresh paths: one snapshot of a field and a λ that still move (the
        # dual holds a clipped running average at the budget); measured 0.24 and 1.14 here: within 25%.
        print(f"budget {budget}: last 200 steps {history['kl'][-200:].mean():.4f}, final field {float(realised):.4f}")
        assert abs(float(realised) - budget) < 0.25 * budget, (budget, float(realised))
        lam_star = G.dual_lambda_linear(cov, b, budget)
        assert abs(history["lam"][-200:].mean() - lam_star) < 0.1 * lam_star


# ----------------------------------------------------------------------------------------- example


def test_example_smoke(tmp_path):
    """The whole example on tiny settings, in a fresh process (the example runs in float32 with JAX's
    default promotion rules, not the test suite's float64 and strict ones)."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    # One trust-region run and the naive baseline (the fixed-λ run is the same program as the trust region's).
    argv = ["--quick", "--budgets", "1.0", "--fixed-lam", "0", "--out", str(out), "--cache-dir", str(cache)]
    script = ROOT / "examples" / "image_reward_finetune.py"
    done = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "results.json").read_text())
    assert (out / "samples.png").stat().st_size > 0 and (out / "curves.png").stat().st_size > 0
    assert set(record["results"]) == {"data (train)", "base", "budget 1", "naive"}
    for row in record["results"].values():
        assert np.isfinite([row["reward"], row["fd_all"], row["fd_target"], row["diversity"]]).all()
        assert 0 <= row["target_share"] <= 1
    assert record["results"]["budget 1"]["kl_budget"] == 1.0
    assert record["cache"] == {"flow": False, "classifier": False}
    assert len(list(cache.glob("flow-*.eqx"))) == 1 and len(list(cache.glob("classifier-*.eqx"))) == 1
    assert "FD all" in done.stdout and "budget 1" in done.stdout


def test_example_cache_and_flag_errors(tmp_path, capsys):
    example = _example()
    built = []

    def build():
        built.append(1)
        return example.Classifier(jr.key(3))

    like = example.Classifier(jr.key(0))
    first, hit1 = example.cached(tmp_path, "classifier", {"steps": 5}, like, build)
    second, hit2 = example.cached(tmp_path, "classifier", {"steps": 5}, like, build)
    _, hit3 = example.cached(tmp_path, "classifier", {"steps": 6}, like, build)
    assert (hit1, hit2, hit3) == (False, True, False) and len(built) == 2
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)))
    for argv, flag in (
        (["--target", "12"], "--target"),
        (["--budgets", "1", "-2"], "--budgets"),
        (["--steps", "0"], "--steps"),
    ):
        assert example.main([*argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and flag in err[0]
