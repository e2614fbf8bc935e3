"""The generator protocol: identity vectors + per-image seeds (+ variations) -> RGB images.

Not diffusion-specific: Arc2Face (diffusion) and Vec2Face (masked autoencoder) both implement it.
A batch may mix identities; image ``i`` depends only on ``vectors[i]``, ``seeds[i]`` and
``variations[i]``, never on its position in the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage asks the scheduler for."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


@runtime_checkable
class Generator(Protocol):
    name: str
    resources: Resources

    def setup(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Load weights onto ``device`` once per worker."""

    def generate(
        self, vectors: np.ndarray, seeds: np.ndarray, variations: list[dict[str, Any]] | None = None
    ) -> list[np.ndarray]:
        """Return one HxWx3 uint8 RGB array per row of ``vectors`` (float32, N x dim)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp16 on CUDA and fp32 on CPU unless the config names one."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Reject NaN/inf or wrong-dimension identity vectors with a clear message."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"identity vectors must have shape (N, {dim}), got {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        bad = np.where(~np.isfinite(arr).all(axis=1))[0][:5].tolist()
        raise ValueError(f"identity vectors contain NaN or inf (rows {bad})")
    return arr


def check_batch(
    vectors: np.ndarray, seeds: np.ndarray, variations: list | None, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one ``generate`` call's inputs: vectors (see :func:`check_vectors`), one seed and at most
    one variation per vector."""
    arr = check_vectors(vectors, dim)
    seeds = np.asarray(seeds).reshape(-1)
    if len(seeds) != len(arr):
        raise ValueError(f"got {len(arr)} vectors but {len(seeds)} seeds")
    if variations is not None and len(variations) != len(arr):
        raise ValueError(f"got {len(arr)} vectors but {len(variations)} variations")
    return arr, seeds


def in_microbatches(
    n: int, batch_size: int, run: Callable[[int, int], list[np.ndarray]], device: torch.device | None
) -> list[np.ndarray]:
    """``run(start, stop)`` over ``[0, n)`` in micro-batches; a CUDA out-of-memory error halves the
    micro-batch and retries (down to one image) before it propagates. Safe only because an image never
    depends on the batch it is computed in."""
    images: list[np.ndarray] = []
    step, start = max(1, int(batch_size)), 0
    while start < n:
        try:
            images += run(start, min(start + step, n))
        except torch.OutOfMemoryError:
            if step == 1:
                raise
            step = max(1, step // 2)
            if device is not None and device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        start += step
    return images
