"""Streaming reads of reference galleries (real-face embeddings), which may not fit in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from facefoundry.identities.vectors_io import VectorFileError, load_vectors


def _check_block(block: np.ndarray, path: Path, offset: int) -> np.ndarray:
    block = np.asarray(block, dtype=np.float32)
    bad = np.where(~np.isfinite(block).all(axis=1) | (np.linalg.norm(block, axis=1) == 0))[0]
    if len(bad):
        raise VectorFileError(f"{path}: gallery rows {(bad[:5] + offset).tolist()} are NaN, inf or all zeros")
    return block


def iter_gallery(paths: list[str], dim: int, block_size: int) -> Iterator[np.ndarray]:
    """Yield validated float32 (<= block_size, dim) blocks of every gallery file in order."""
    if not paths:
        raise VectorFileError("leakage screening needs at least one gallery file (identities.leakage.galleries)")
    total = 0
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise VectorFileError(f"gallery file not found: {path}")
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 2 or arr.shape[1] != dim:
                raise VectorFileError(f"{path}: gallery must have shape (N, {dim}), got {tuple(arr.shape)}")
            for start in range(0, len(arr), block_size):
                yield _check_block(arr[start : start + block_size], path, start)
            total += len(arr)
        elif path.suffix == ".parquet":
            # Parquet galleries are read whole per file; split very large ones into several files.
            arr = load_vectors(path, dim, "gallery vectors")
            for start in range(0, len(arr), block_size):
                yield arr[start : start + block_size]
            total += len(arr)
        else:
            raise VectorFileError(f"{path}: unsupported gallery file type {path.suffix!r}; use .npy or .parquet")
    if total == 0:
        raise VectorFileError(f"galleries {paths} hold no vectors: leakage screening needs a non-empty gallery")


def gallery_size(paths: list[str]) -> int:
    total = 0
    for name in paths:
        path = Path(name)
        if path.suffix == ".npy":
            total += np.load(path, mmap_mode="r", allow_pickle=False).shape[0]
        else:
            total += pq.read_metadata(path).num_rows
    return total
