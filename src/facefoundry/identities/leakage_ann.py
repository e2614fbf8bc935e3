"""Approximate leakage search with faiss (IVF-Flat, inner product on unit vectors).

For galleries of tens of millions of embeddings. Its recall@1 is measured on every run against the
exact search for a sample of identities and reported, because an ANN miss is a missed leak.
"""

from __future__ import annotations

import numpy as np

from facefoundry.identities.gallery import gallery_size, iter_gallery
from facefoundry.sections import LeakageConfig

_TRAIN_SAMPLE = 100_000
_RECALL_SAMPLE = 500


def _unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def faiss_top2(vectors: np.ndarray, cfg: LeakageConfig) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Return (top1, top2, gallery size, measured recall@1) using a faiss IVF index."""
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "identities.leakage.backend=faiss needs faiss: pip install faiss-cpu (or faiss-gpu); "
            "or use backend=exact"
        ) from None
    dim = vectors.shape[1]
    size = gallery_size(cfg.galleries)
    nlist = cfg.nlist or max(1, min(int(4 * np.sqrt(size)), size // 39 or 1))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    train, rng = [], np.random.default_rng(0)
    for block in iter_gallery(cfg.galleries, dim, cfg.block_size):
        keep = max(1, int(len(block) * min(1.0, _TRAIN_SAMPLE / size)))
        train.append(block[rng.choice(len(block), keep, replace=False)])
    index.train(_unit(np.concatenate(train)))
    for block in iter_gallery(cfg.galleries, dim, cfg.block_size):
        index.add(_unit(block))
    index.nprobe = min(cfg.nprobe, nlist)
    queries = _unit(vectors)
    sims, _ = index.search(queries, 2)
    sims = np.where(np.isfinite(sims) & (sims > -1e30), sims, -1.0).astype(np.float64)

    from facefoundry.identities.leakage_exact import exact_top2

    sample = rng.choice(len(vectors), min(_RECALL_SAMPLE, len(vectors)), replace=False)
    exact1, _, _ = exact_top2(vectors[sample], cfg)
    recall = float(np.mean(np.abs(sims[sample, 0] - exact1) < 1e-5))
    return sims[:, 0], sims[:, 1], size, recall
