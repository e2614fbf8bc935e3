"""Exact top-2 cosine of identity vectors against a gallery of real-face embeddings, streamed block by block
(float32 on the GPU when there is one); the faiss backend measures its recall against it."""

from __future__ import annotations

import numpy as np
import torch

from facefoundry.identities.gallery import iter_gallery
from facefoundry.sections import LeakageConfig

_MAX_TILE = 1 << 25  # identities x gallery similarities held at once (128 MiB of float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top2(vectors: np.ndarray, cfg: LeakageConfig) -> tuple[np.ndarray, np.ndarray, int]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    queries = torch.from_numpy(_unit(vectors).astype(np.float32)).to(device)
    top = torch.full((len(queries), 2), -2.0, dtype=torch.float32, device=device)
    seen = 0
    for block in iter_gallery(cfg.galleries, vectors.shape[1], cfg.block_size):
        ref = torch.from_numpy(_unit(block).astype(np.float32)).to(device)
        step = max(1, _MAX_TILE // len(ref))
        for i in range(0, len(queries), step):
            sims = queries[i : i + step] @ ref.T
            k = min(2, sims.shape[1])
            merged = torch.cat([top[i : i + step], sims.topk(k, dim=1).values], dim=1)
            top[i : i + step] = merged.topk(2, dim=1).values
        seen += len(block)
    top = top.cpu().numpy().astype(np.float64)
    if seen == 1:
        top[:, 1] = -1.0
    return top[:, 0], top[:, 1], seen
