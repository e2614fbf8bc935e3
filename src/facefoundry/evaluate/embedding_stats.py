"""Native judge scores and their summaries: pair scores, label groups, statistics and histograms (numpy only).

A judge's *native score* is a Euclidean distance (``euclidean``: lower = more alike) or a cosine similarity
(``cosine``: higher = more alike); :func:`similarity` turns either into higher-is-more-alike.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Metric = Literal["euclidean", "cosine"]
PLOT_BINS = 50


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pair_scores(a: np.ndarray, b: np.ndarray, metric: Metric) -> np.ndarray:
    """Native score of row pairs ``(a[i], b[i])``."""
    if metric == "euclidean":
        return np.linalg.norm(a - b, axis=1)
    return (normalize(a) * normalize(b)).sum(axis=1)


def cross_scores(a: np.ndarray, b: np.ndarray, metric: Metric) -> np.ndarray:
    """Native score matrix between the rows of ``a`` and of ``b``."""
    if metric == "euclidean":
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.sqrt(np.clip(sq, 0.0, None))
    return normalize(a) @ normalize(b).T


def similarity(scores: np.ndarray, metric: Metric) -> np.ndarray:
    """Higher-is-more-alike version of native scores."""
    return -np.asarray(scores) if metric == "euclidean" else np.asarray(scores)


def same_person(scores: np.ndarray, metric: Metric, threshold: float) -> np.ndarray:
    """The judge's same-person rule on native scores."""
    return scores < threshold if metric == "euclidean" else scores > threshold


def groups(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted distinct labels and the row indices of each."""
    labels = np.asarray(labels)
    if not labels.size:
        return labels, []
    ids, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=ids.size))[:-1]
    return ids, np.split(order, bounds)


def describe(values: np.ndarray) -> dict:
    """Count, mean, std and quantiles of the finite values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return {"count": 0}
    q = np.quantile(values, [0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 1.0])
    return {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
            **{k: float(v) for k, v in zip(("min", "p01", "p05", "p50", "p95", "p99", "max"), q, strict=True)}}


def histogram(edges: np.ndarray, **series: np.ndarray) -> dict:
    """``{"edges": [...], name: counts, ...}`` on shared bin edges."""
    out: dict = {"edges": [round(float(e), 6) for e in edges]}
    for name, values in series.items():
        values = np.asarray(values, dtype=np.float64)
        out[name] = np.histogram(values[np.isfinite(values)], bins=edges)[0].astype(int).tolist()
    return out


def plot_edges(*arrays: np.ndarray, extra: tuple[float, ...] = (), bins: int = PLOT_BINS) -> np.ndarray:
    """``bins + 1`` equal bin edges spanning the finite values of ``arrays`` and the ``extra`` points."""
    values = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays] + [np.asarray(extra, np.float64)])
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    return np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)


