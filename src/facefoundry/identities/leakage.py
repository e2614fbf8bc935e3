"""Leakage screening: how close is each synthetic identity to real people's embeddings?

For every identity we record the top-2 cosine similarities to the reference galleries. An identity
whose top-1 exceeds ``max_cosine`` is rejected (a near-copy of a real person); one whose top-2 both
reach ``morph_cosine`` is flagged as a possible morph of two real people (rejected too with
``reject_morphs``). The exact backend is blockwise in both identities and gallery, in float32 with
an exact float64 re-check of every decision that falls within a margin of a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facefoundry.identities.gallery import iter_gallery
from facefoundry.identities.leakage_exact import exact_top2
from facefoundry.sections import LeakageConfig

_MARGIN = 1e-4


@dataclass
class LeakageResult:
    top1: np.ndarray  # (N,) float64 best gallery cosine
    top2: np.ndarray  # (N,) float64 second-best gallery cosine
    leaked: np.ndarray  # (N,) bool, top1 > max_cosine
    morph: np.ndarray  # (N,) bool, top2 >= morph_cosine
    gallery_size: int
    backend: str
    recall: float | None = None  # ANN only: measured recall@1 against the exact search on a sample

    def rejected(self, reject_morphs: bool) -> np.ndarray:
        """Identities to drop: leaked ones, and possible morphs when ``reject_morphs``."""
        return self.leaked | self.morph if reject_morphs else self.leaked.copy()

    def summary(self) -> dict:
        return {
            "gallery_size": self.gallery_size,
            "backend": self.backend,
            "recall_at_1": self.recall,
            "leaked": int(self.leaked.sum()),
            "possible_morphs": int(self.morph.sum()),
            "top1_max": float(self.top1.max()) if len(self.top1) else None,
            "top1_p99": float(np.quantile(self.top1, 0.99)) if len(self.top1) else None,
        }


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _recheck(vectors: np.ndarray, rows: np.ndarray, cfg: LeakageConfig) -> tuple[np.ndarray, np.ndarray]:
    """Float64 top-2 of ``rows`` (the rare identities whose float32 result sits within the margin)."""
    q = _unit(vectors[rows].astype(np.float64))
    top = np.full((len(rows), 2), -2.0)
    for block in iter_gallery(cfg.galleries, vectors.shape[1], cfg.block_size):
        sims = q @ _unit(block.astype(np.float64)).T
        top = -np.sort(-np.concatenate([top, sims], axis=1), axis=1)[:, :2]
    return top[:, 0], top[:, 1]


def screen(vectors: np.ndarray, cfg: LeakageConfig) -> LeakageResult:
    """Top-2 gallery similarities of every identity and the leak / morph decisions."""
    if cfg.backend == "faiss":
        from facefoundry.identities.leakage_ann import faiss_top2

        top1, top2, size, recall = faiss_top2(vectors, cfg)
    else:
        top1, top2, size = exact_top2(vectors, cfg)
        recall = None
        near = (np.abs(top1 - cfg.max_cosine) < _MARGIN) | (np.abs(top2 - cfg.morph_cosine) < _MARGIN)
        rows = np.where(near)[0]
        if len(rows):
            top1[rows], top2[rows] = _recheck(vectors, rows, cfg)
    return LeakageResult(
        top1=top1,
        top2=top2,
        leaked=top1 > cfg.max_cosine,
        morph=top2 >= cfg.morph_cosine,
        gallery_size=size,
        backend=cfg.backend,
        recall=recall,
    )
