"""Embedding in batches that shrink on out-of-memory errors (shared by the ONNX and PyTorch embedders)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def embed_in_batches(
    blob, dim: int, batch_size: int, run: Callable, is_oom: Callable[[BaseException], bool],
    after_oom: Callable[[], None] | None = None,
) -> tuple[np.ndarray, int]:
    """``(out, batch_size)``: ``out[i:j] = run(blob[i:j])`` for consecutive batches of ``batch_size`` rows.

    An error for which ``is_oom`` is true halves the batch and retries it (down to one row, then the
    error propagates); ``after_oom`` runs first (e.g. to empty a CUDA cache). The returned batch size is
    the one that fit, for the caller to keep for later calls. Safe only because a row's embedding never
    depends on the batch it is computed in."""
    out = np.zeros((len(blob), dim), dtype=np.float32)
    start = 0
    while start < len(blob):
        size = batch_size
        try:
            out[start : start + size] = run(blob[start : start + size])
        except Exception as exc:
            if not is_oom(exc) or size == 1:
                raise
            if after_oom is not None:
                after_oom()
            batch_size = max(1, size // 2)
            continue
        start += size
    return out, batch_size


def run_onnx_padded(session, input_name: str, output_name: str, blob: np.ndarray, fixed_batch: int | None,
                    ) -> np.ndarray:
    """One ONNX Runtime call on ``blob``; a model whose batch axis is fixed at ``fixed_batch`` gets the blob padded
    with zero rows to that size, and only the real rows' outputs come back (float32)."""
    n = len(blob)
    if fixed_batch and n < fixed_batch:
        blob = np.concatenate([blob, np.zeros((fixed_batch - n, *blob.shape[1:]), blob.dtype)])
    out = np.asarray(session.run([output_name], {input_name: blob})[0], dtype=np.float32)
    return out[:n] if len(out) == len(blob) else out  # a wrong row count is left for the caller to report
