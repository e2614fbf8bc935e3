"""Identity sampling on the hypersphere.

``gaussian_rejection`` (Vec2Face's rule): draw Gaussian candidates in order and keep one only if its
cosine to every vector kept so far is <= ``max_cosine``. The decision is exact: a float32 screen
decides clear cases and every candidate whose similarity falls within a margin of the threshold
is re-checked in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facefoundry.config import IdentitiesConfig
from facefoundry.seeds import derive_seed

_BLOCK = 1024
_MARGIN = 1e-4  # float32 dot products of unit vectors in d <= 4096 are accurate far inside this


class SamplingError(RuntimeError):
    """Sampling could not reach the requested number of identities."""


@dataclass
class SampledIdentities:
    vectors: np.ndarray  # (N, dim) float32 in the configured space
    candidates: int  # candidates drawn to reach N


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _exceeds(cands: np.ndarray, kept: np.ndarray, tau: float) -> np.ndarray:
    """For each candidate (unit rows), whether its cosine to any kept unit row exceeds ``tau``, exactly."""
    if len(kept) == 0:
        return np.zeros(len(cands), dtype=bool)
    sims = cands @ kept.T
    worst = sims.max(axis=1)
    out = worst > tau + _MARGIN
    unsure = np.where((worst > tau - _MARGIN) & ~out)[0]
    for i in unsure:
        exact = kept.astype(np.float64) @ cands[i].astype(np.float64)
        out[i] = bool((exact > tau).any())
    return out


def gaussian_rejection(cfg: IdentitiesConfig, run_seed: int) -> SampledIdentities:
    """Sample ``cfg.count`` identities, deterministic in ``run_seed``."""
    rng = np.random.default_rng(derive_seed(run_seed, "identities"))
    limit = cfg.max_candidates or 1000 * cfg.count
    kept = np.empty((cfg.count, cfg.dim), dtype=np.float32)
    n_kept = drawn = 0
    while n_kept < cfg.count and drawn < limit:
        block = _normalise(rng.standard_normal((min(_BLOCK, limit - drawn), cfg.dim)).astype(np.float32))
        drawn += len(block)
        alive = ~_exceeds(block, kept[:n_kept], cfg.max_cosine)
        block_start = n_kept
        for row in block[alive]:
            if n_kept == cfg.count:
                break
            # The screen above saw only vectors kept before this block: check those kept within it.
            if _exceeds(row[None], kept[block_start:n_kept], cfg.max_cosine)[0]:
                continue
            kept[n_kept] = row
            n_kept += 1
    if n_kept < cfg.count:
        raise SamplingError(
            f"identities: kept only {n_kept} of {cfg.count} identities after {drawn} candidates at "
            f"max_cosine={cfg.max_cosine} in {cfg.dim} dimensions; raise identities.max_cosine, lower "
            f"identities.count, or raise identities.max_candidates"
        )
    vectors = kept if cfg.space == "unit" else kept * np.float32(cfg.norm)
    return SampledIdentities(vectors=vectors, candidates=drawn)


def sample_identities(cfg: IdentitiesConfig, run_seed: int) -> SampledIdentities:
    """Run the configured sampler."""
    samplers = {"gaussian_rejection": gaussian_rejection}
    return samplers[cfg.sampler](cfg, run_seed)
