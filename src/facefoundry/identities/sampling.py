"""Identity samplers: dispatch on ``identities.sampler``, screen for leakage, bring vectors into the
generator's space. Every sampler is deterministic in the run seed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from facefoundry.identities.budget import SamplingProgress, candidate_budget, check_feasible
from facefoundry.identities.leakage import LeakageResult, screen
from facefoundry.identities.pca import fit_pca_gaussian
from facefoundry.identities.rejection import SamplingError, gaussian_proposal, rejection_sample
from facefoundry.identities.vectors_io import load_vectors
from facefoundry.sections import IdentitiesConfig
from facefoundry.seeds import derive_seed

__all__ = ["SampledIdentities", "SamplingError", "sample_identities"]


@dataclass
class SampledIdentities:
    vectors: np.ndarray  # (N, dim) float32 in the configured space
    candidates: int  # candidates drawn (or vectors optimised) to reach N
    leakage: LeakageResult | None = None
    details: dict = field(default_factory=dict)  # sampler-specific facts for the summary


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


OnBatch = Callable[[int, int], None] | None


def _gaussian_rejection(cfg: IdentitiesConfig, count: int, rng: np.random.Generator, seed: int,
                        on_batch: OnBatch = None) -> SampledIdentities:
    propose = gaussian_proposal(cfg.dim)
    vectors, drawn = rejection_sample(propose, count, cfg.dim, cfg.max_cosine, candidate_budget(cfg, count), rng,
                                      on_batch)
    return SampledIdentities(vectors, drawn)


def _uniform_sphere(cfg: IdentitiesConfig, count: int, rng: np.random.Generator, seed: int,
                    on_batch: OnBatch = None) -> SampledIdentities:
    return SampledIdentities(_unit(rng.standard_normal((count, cfg.dim)).astype(np.float32)), count)


def _pca_gaussian(cfg: IdentitiesConfig, count: int, rng: np.random.Generator, seed: int,
                  on_batch: OnBatch = None) -> SampledIdentities:
    gallery = load_vectors(cfg.gallery, cfg.dim, "gallery vectors")
    propose = fit_pca_gaussian(gallery, cfg.pca_components)
    vectors, drawn = rejection_sample(propose, count, cfg.dim, cfg.max_cosine, candidate_budget(cfg, count), rng,
                                      on_batch)
    return SampledIdentities(vectors, drawn)


def _hyperface(cfg: IdentitiesConfig, count: int, rng: np.random.Generator, seed: int,
               on_batch: OnBatch = None) -> SampledIdentities:
    from facefoundry.identities.hyperface import hyperface_pack

    gallery = load_vectors(cfg.gallery, cfg.dim, "gallery vectors") if cfg.gallery else None
    start = _uniform_sphere(cfg, count, rng, seed).vectors
    result = hyperface_pack(start, cfg.hyperface, gallery, seed=derive_seed(seed, "hyperface"))
    details = {
        "iterations": result.iterations,
        "stop_reason": result.stop_reason,
        "max_nn_before": result.max_nn_before,
        "max_nn_after": result.max_nn_after,
        "seconds": result.seconds,
    }
    return SampledIdentities(_unit(result.vectors), count, details=details)


def _from_file(cfg: IdentitiesConfig, count: int, rng: np.random.Generator, seed: int,
               on_batch: OnBatch = None) -> SampledIdentities:
    vectors = _file_vectors(cfg, count)[:count]
    return SampledIdentities(vectors if cfg.space == "raw" else _unit(vectors), count, details={"file": cfg.file})


def _file_vectors(cfg: IdentitiesConfig, count: int) -> np.ndarray:
    """``identities.file``'s vectors, checked, holding at least ``count``."""
    vectors = load_vectors(cfg.file, cfg.dim, "identity vectors")
    if len(vectors) < count:
        raise SamplingError(f"identities.file {cfg.file} holds {len(vectors)} vectors; identities.count is {count}")
    return vectors


def check_input_files(cfg: IdentitiesConfig) -> None:
    """Read every vector file the sampler will read (``identities.file``, ``identities.gallery``), with the checks
    sampling makes: a bad file is found before anything is deleted or built (``run --fresh``, ``sample --fresh``)."""
    if cfg.sampler == "from_file":
        _file_vectors(cfg, cfg.count)
    if cfg.gallery and cfg.sampler in ("pca_gaussian", "hyperface"):
        load_vectors(cfg.gallery, cfg.dim, "gallery vectors")


_SAMPLERS = {
    "gaussian_rejection": _gaussian_rejection,
    "uniform_sphere": _uniform_sphere,
    "pca_gaussian": _pca_gaussian,
    "hyperface": _hyperface,
    "from_file": _from_file,
}


def _sample(cfg: IdentitiesConfig, run_seed: int, count: int, stream: TextIO | None = None) -> SampledIdentities:
    check_feasible(cfg, count)  # refuse, with the numbers, what cannot finish within the candidate budget
    on_batch = None
    if stream is not None and cfg.max_cosine is not None:
        on_batch = SamplingProgress(count, cfg.max_cosine, cfg.dim, stream)
    rng = np.random.default_rng(derive_seed(run_seed, "identities"))
    sampled = _SAMPLERS[cfg.sampler](cfg, count, rng, run_seed, on_batch)
    if cfg.space == "raw" and cfg.sampler != "from_file":
        sampled.vectors = sampled.vectors * np.float32(cfg.norm)
    return sampled


def sample_identities(cfg: IdentitiesConfig, run_seed: int, progress: TextIO | None = None) -> SampledIdentities:
    """Sample ``cfg.count`` identities; with galleries configured, replace those that leak.

    A rejection sampler expected to exceed its candidate budget is refused before it starts
    (:class:`~facefoundry.identities.budget.InfeasibleSamplingError`); with a ``progress`` stream, a
    sampling that takes more than a few seconds reports candidates, accepted identities and ETA there.

    Rejected identities are replaced by sampling more: rejection samplers produce the same first k
    vectors whatever the total, so the survivors keep their order and the run stays deterministic.
    """
    started = time.monotonic()
    if not cfg.leakage.galleries:
        sampled = _sample(cfg, run_seed, cfg.count, progress)
        sampled.details["seconds_total"] = time.monotonic() - started
        return sampled
    extra = 0
    while True:
        sampled = _sample(cfg, run_seed, cfg.count + extra, progress)
        result = screen(sampled.vectors, cfg.leakage)
        keep = np.where(~result.rejected(cfg.leakage.reject_morphs))[0]
        if len(keep) >= cfg.count:
            break
        if cfg.sampler == "from_file" or extra > 10 * cfg.count:
            raise SamplingError(
                f"leakage screening rejected {len(sampled.vectors) - len(keep)} of {len(sampled.vectors)} "
                f"identities (cosine to a gallery vector > {cfg.leakage.max_cosine}); "
                + ("remove them from identities.file" if cfg.sampler == "from_file"
                   else "check that the gallery is in the same embedding space as the generator")
            )
        extra = max(2 * extra, 2 * (len(sampled.vectors) - len(keep)), 16)
    keep = keep[: cfg.count]
    sampled.vectors = sampled.vectors[keep]
    sampled.leakage = LeakageResult(
        top1=result.top1[keep], top2=result.top2[keep], leaked=result.leaked[keep], morph=result.morph[keep],
        gallery_size=result.gallery_size, backend=result.backend, recall=result.recall,
    )
    sampled.details["leakage_rejected"] = int(len(result.top1) - (~result.rejected(cfg.leakage.reject_morphs)).sum())
    sampled.details["seconds_total"] = time.monotonic() - started
    return sampled
