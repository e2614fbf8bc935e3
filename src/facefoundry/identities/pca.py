"""``pca_gaussian`` (Vec2Face paper): a Gaussian fitted in PCA space on a gallery of embeddings.

The proposal draws ``mean + z * sqrt(eigenvalues) @ components`` with z ~ N(0, I) in the top
``components`` principal directions, so samples follow the gallery's second-order statistics; the
usual rejection rule then enforces separation.
"""

from __future__ import annotations

import numpy as np

from facefoundry.identities.rejection import Proposal


def fit_pca_gaussian(gallery: np.ndarray, components: int | None = None) -> Proposal:
    """Fit on (N, d) gallery vectors (directions only: rows are L2-normalised first)."""
    x = gallery.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if len(x) < 2:
        raise ValueError(f"pca_gaussian needs at least 2 gallery vectors, got {len(x)}")
    mean = x.mean(axis=0)
    # SVD of the centred data: rows of vt are principal directions, s**2/(n-1) their variances.
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(components or len(s), len(s))
    scale = (s[:k] / np.sqrt(max(len(x) - 1, 1)))[:, None] * vt[:k]  # (k, d)
    mean32, scale32 = mean.astype(np.float32), scale.astype(np.float32)

    def propose(rng: np.random.Generator, n: int) -> np.ndarray:
        return mean32 + rng.standard_normal((n, k)).astype(np.float32) @ scale32

    return propose
