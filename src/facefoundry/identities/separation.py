"""Exact nearest-neighbour cosine of every identity, computed blockwise (memory O(N*d + block^2)) by
:mod:`facefoundry.identities.kernels`."""

from __future__ import annotations

import numpy as np

from facefoundry.identities import kernels

_BLOCK: int | None = None  # None: the kernels' default for the device


def nearest_neighbours(vectors: np.ndarray, block: int | None = _BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Return (cosine, index) of each row's nearest other row, exactly as a float64 computation would
    (ties: lowest index); a single row gets (-inf, -1). See :func:`kernels.nearest_neighbours`."""
    return kernels.nearest_neighbours(vectors, block=block)


def separation_summary(nn_cosine: np.ndarray) -> dict[str, float]:
    """Min / median / p99 / max of the nearest-neighbour cosines (finite values only)."""
    finite = nn_cosine[np.isfinite(nn_cosine)]
    if finite.size == 0:
        return {"min": float("nan"), "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    q = np.quantile(finite, [0.0, 0.5, 0.99, 1.0])
    return {"min": float(q[0]), "p50": float(q[1]), "p99": float(q[2]), "max": float(q[3])}
