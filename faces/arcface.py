"""ArcFace-family recognition embedders on ONNX Runtime (arcface.onnx of Arc2Face, glintr100, w600k_r50).

Preprocessing equals ``insightface.model_zoo.arcface_onnx.ArcFaceONNX.get_feat`` (2.1): the network sees
RGB, NCHW float32, ``(pixel - mean) / std`` with mean = std = 127.5, except for graphs converted from MXNet
that normalise inside the network (one of the first 8 nodes named ``Sub*``/``_minus*`` and one ``Mul*``/``_mul*``):
those get mean 0, std 1. InsightFace takes BGR crops and swaps them to RGB; here crops are already RGB
(``alignment.align`` on an RGB image), so nothing is swapped. Outputs are the raw (un-normalised) features;
:func:`l2_normalize` gives unit vectors (Arc2Face conditions on L2-normalised arcface.onnx features).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facefoundry.faces.batching import embed_in_batches, run_onnx_padded
from facefoundry.faces.scrfd import OnnxModelError, is_recognizer, open_session, resolve_model

CROP_SIZE = 112
EMBEDDING_DIM = 512
MEAN = STD = 127.5
OOM_MARKERS = ("out of memory", "failed to allocate", "cudnn_status_alloc_failed")


def l2_normalize(features: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``features`` scaled to unit L2 norm (float32; all-zero rows stay zero)."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, np.float32(eps))


def normalisation_of(path: Path) -> tuple[float, float]:
    """InsightFace's rule for the input mean/std of a recognition graph (see the module docstring)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node[:8]
    has_sub = any(n.name.startswith(("Sub", "_minus")) for n in nodes)
    has_mul = any(n.name.startswith(("Mul", "_mul")) for n in nodes)
    return (0.0, 1.0) if has_sub and has_mul else (MEAN, STD)


def stack_crops(crops) -> np.ndarray:
    """``(N, 112, 112, 3)`` array of aligned RGB crops given as an array, a list, or one crop."""
    batch = np.stack([np.asarray(c) for c in crops]) if isinstance(crops, (list, tuple)) else np.asarray(crops)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(f"crops must be aligned {CROP_SIZE}x{CROP_SIZE}x3 RGB arrays, got shape {batch.shape}")
    return batch


class ArcFaceEmbedder:
    """``embed(crops) -> (N, 512)`` float32 raw features of aligned 112x112 RGB crops, ``batch_size`` per call.

    ``model_path``: an ``.onnx`` file or a pack folder holding one 112x112 recognition model. The model's
    batch axis may be dynamic (batches of ``batch_size``), fixed at 1 (one crop per call) or fixed at N
    (batches of N, the last one zero-padded). On a CUDA out-of-memory error the batch is halved and retried.
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: list | None = None,
        batch_size: int = 64,
        threads: int | None = None,
        embedding_dim: int = EMBEDDING_DIM,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = resolve_model(model_path, "recognition", is_recognizer)
        self.embedding_dim = int(embedding_dim)
        self.session = open_session(self.model_path, providers, threads)
        self.fixed_batch = self._validate()
        self.batch_size = self.fixed_batch or int(batch_size)
        self.input_mean, self.input_std = normalisation_of(self.model_path)

    def _validate(self) -> int | None:
        want = f"{self.model_path}: expected an ArcFace recognition model, input [N, 3, 112, 112] -> output [N, 512]"
        if self.embedding_dim != EMBEDDING_DIM:
            want = want.replace("512]", f"{self.embedding_dim}]")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if inputs else []
        if len(inputs) != 1 or len(shape) != 4 or shape[1:] != [3, CROP_SIZE, CROP_SIZE]:
            raise OnnxModelError(f"{want}; got input(s) {[i.shape for i in inputs]}")
        if inputs[0].type != "tensor(float)":
            raise OnnxModelError(f"{want} taking float32; got {inputs[0].type}")
        out = list(outputs[0].shape) if len(outputs) == 1 else None
        if out is None or len(out) != 2 or (isinstance(out[1], int) and out[1] != self.embedding_dim):
            raise OnnxModelError(f"{want}; got output(s) {[o.shape for o in outputs]}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        return shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    def info(self) -> dict:
        """Model id and settings, for file metadata and manifests."""
        return {
            "embedder": self.model_path.name,
            "input_mean": self.input_mean,
            "input_std": self.input_std,
            "providers": self.session.get_providers(),
        }

    def preprocess(self, crops) -> np.ndarray:
        """``(N, 3, 112, 112)`` float32 network input of RGB crops ``(N, 112, 112, 3)`` (array or list)."""
        batch = stack_crops(crops)
        blob = (batch.astype(np.float32) - np.float32(self.input_mean)) * np.float32(1.0 / self.input_std)
        return np.ascontiguousarray(blob.transpose(0, 3, 1, 2))

    def _run(self, blob: np.ndarray) -> np.ndarray:
        out = run_onnx_padded(self.session, self.input_name, self.output_name, blob, self.fixed_batch)
        if out.shape != (len(blob), self.embedding_dim):
            raise OnnxModelError(
                f"{self.model_path}: expected output [{len(blob)}, {self.embedding_dim}], got {list(out.shape)}"
            )
        return out

    def embed(self, crops) -> np.ndarray:
        """Raw float32 ``(N, 512)`` features of aligned RGB crops, ``batch_size`` crops per session call."""
        blob = self.preprocess(crops) if len(crops) else np.zeros((0, 3, CROP_SIZE, CROP_SIZE), np.float32)
        # A model with a fixed batch axis cannot take smaller batches: its errors propagate as they are.
        out, self.batch_size = embed_in_batches(  # the batch that fit is kept for later calls
            blob, self.embedding_dim, self.batch_size, self._run,
            lambda exc: not self.fixed_batch and any(m in str(exc).lower() for m in OOM_MARKERS))
        return out

    __call__ = embed
