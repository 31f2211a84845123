r"""Sample-quality metrics: the Fréchet distance between two feature clouds (FID's formula in any
feature space).

For Gaussians $\mathcal N(m_1, S_1)$ and $\mathcal N(m_2, S_2)$ the squared 2-Wasserstein distance is

$$d^2 = \lVert m_1 - m_2\rVert^2 + \operatorname{tr}\big(S_1 + S_2 - 2\,(S_1^{1/2} S_2 S_1^{1/2})^{1/2}\big).$$

The square roots are taken by eigendecomposition of symmetric positive semi-definite matrices (no
general matrix square root, no complex round-off), in float64 on the host: these are evaluation metrics,
not part of a jitted training step.
"""

import numpy as np
from jaxtyping import ArrayLike, Float


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    matrix = 0.5 * (matrix + matrix.T)
    evals, evecs = np.linalg.eigh(matrix)
    return (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T


def gaussian_frechet_distance(
    mean1: Float[ArrayLike, " d"],
    cov1: Float[ArrayLike, "d d"],
    mean2: Float[ArrayLike, " d"],
    cov2: Float[ArrayLike, "d d"],
) -> float:
    r"""The Fréchet (2-Wasserstein) distance squared between $\mathcal N(m_1, S_1)$ and $\mathcal N(m_2, S_2)$:
    $\lVert m_1 - m_2\rVert^2 + \operatorname{tr}(S_1 + S_2 - 2(S_1^{1/2} S_2 S_1^{1/2})^{1/2})$.

    **Arguments:**

    - `mean1`, `cov1`: the first Gaussian's mean `(d,)` and covariance `(d, d)` (symmetric PSD).
    - `mean2`, `cov2`: the second's.

    **Returns:**

    $d^2 \ge 0$ as a Python float (FID reports this squared distance).
    """
    m1, m2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    s1, s2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = m1.shape[0] if m1.ndim == 1 else -1
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"gaussian_frechet_distance: need means (d,) and covariances (d, d) of one d, got {m1.shape}, "
            f"{s1.shape}, {m2.shape}, {s2.shape}."
        )
    root1 = _psd_sqrt(s1)
    cross = _psd_sqrt(root1 @ s2 @ root1)
    value = float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))
    return max(value, 0.0)


def frechet_distance(features1: Float[ArrayLike, "n1 d"], features2: Float[ArrayLike, "n2 d"]) -> float:
    r"""The Fréchet distance squared between two sets of feature vectors (FID's formula in any feature
    space): the Gaussian formula ([`flowsoc.gaussian_frechet_distance`][]) at their sample means and
    covariances (unbiased, divisor $n - 1$).

    **Arguments:**

    - `features1`: features of the first set, shape `(n1, d)` (e.g. a classifier's penultimate layer on
      generated samples), `n1 >= 2`.
    - `features2`: features of the second set, shape `(n2, d)` (e.g. on held-out data), `n2 >= 2`.

    **Returns:**

    The squared distance as a Python float; 0 for identical sets.
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(f1.shape[0], f2.shape[0]) < 2:
        raise ValueError(
            f"frechet_distance: need two arrays (n, d) with the same d and n >= 2, got {f1.shape} and {f2.shape}."
        )
    if not (np.all(np.isfinite(f1)) and np.all(np.isfinite(f2))):
        raise ValueError("frechet_distance: the features contain NaN or infinite values.")
    return gaussian_frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
