"""Intra-class variation: Vec2Face-style perturbation of an identity vector per image.

Image ``j`` of a class gets a noise level from the sigma mixture by its index (the first 40 % of a
class's images take the first sigma, and so on, for weights 0.4/0.4/0.2), and noise drawn from its
own image seed, so any image can be regenerated alone. Noise is added with the vector scaled to
``reference_norm`` and the result is rescaled to the vector's own norm, so the rule means the same
in the unit (Arc2Face) and raw (Vec2Face) spaces.
"""

from __future__ import annotations

import numpy as np

from facefoundry.sections import PerturbationConfig
from facefoundry.seeds import derive_seed


def sigma_schedule(cfg: PerturbationConfig, per_identity: int) -> np.ndarray:
    """The sigma of each image index 0..per_identity-1 (counts follow the weights, largest remainder)."""
    exact = np.asarray(cfg.weights) * per_identity
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: per_identity - counts.sum()]:
        counts[i] += 1
    return np.repeat(np.asarray(cfg.sigmas, dtype=np.float64), counts)


def perturb(vectors: np.ndarray, sigmas: np.ndarray, seeds: np.ndarray, cfg: PerturbationConfig) -> np.ndarray:
    """Perturb each row of ``vectors`` with its sigma; the noise derives from its image seed only."""
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    scaled = vectors.astype(np.float64) / norms * cfg.reference_norm
    noise = np.stack(
        [np.random.default_rng(derive_seed(int(s), "perturbation")).standard_normal(vectors.shape[1]) for s in seeds]
    )
    moved = scaled + noise * np.asarray(sigmas, dtype=np.float64)[:, None]
    return (moved / np.linalg.norm(moved, axis=1, keepdims=True) * norms).astype(np.float32)
