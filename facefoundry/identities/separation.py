"""Exact nearest-neighbour cosine of every identity, computed blockwise (memory O(N*d + block^2))."""

from __future__ import annotations

import numpy as np

_BLOCK = 2048


def nearest_neighbours(vectors: np.ndarray, block: int = _BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Return (cosine, index) of each row's nearest other row; cosine is computed in float64."""
    n = len(vectors)
    unit = vectors.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    best = np.full(n, -np.inf)
    arg = np.full(n, -1, dtype=np.int64)
    for i in range(0, n, block):
        sims = unit[i : i + block] @ unit.T
        rows = np.arange(len(sims))
        sims[rows, i + rows] = -np.inf  # never one's own neighbour
        arg[i : i + block] = sims.argmax(axis=1)
        best[i : i + block] = sims[rows, arg[i : i + block]]
    if n == 1:
        arg[:] = -1
    return best, arg


def separation_summary(nn_cosine: np.ndarray) -> dict[str, float]:
    """Min / median / p99 / max of the nearest-neighbour cosines (finite values only)."""
    finite = nn_cosine[np.isfinite(nn_cosine)]
    if finite.size == 0:
        return {"min": float("nan"), "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    q = np.quantile(finite, [0.0, 0.5, 0.99, 1.0])
    return {"min": float(q[0]), "p50": float(q[1]), "p99": float(q[2]), "max": float(q[3])}
