"""Batched ArcFace-R100 (Vec2Face's ``arcface-r100-glint360k.pth``) embedder in PyTorch.

Same public surface as :class:`facefoundry.faces.arcface.ArcFaceEmbedder`: ``embed(crops)`` /
``__call__`` -> ``(N, 512)`` float32 raw features of aligned 112x112 RGB uint8 crops, ``info()``,
``preprocess()``. Preprocessing is Vec2Face's for this model: RGB, ``(pixel / 255 - 0.5) / 0.5`` (the
gradio demo's ``div_(255).sub_(0.5).div_(0.5)``), i.e. mean = std = 127.5 up to rounding. Vec2Face's
generator is conditioned on these raw (un-normalised) features. A CUDA out-of-memory error halves the
batch (remembered for later calls) and retries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from facefoundry.faces.arcface import stack_crops
from facefoundry.faces.batching import embed_in_batches
from facefoundry.faces.iresnet import load_arcface_r100

CROP_SIZE = 112
EMBEDDING_DIM = 512


def resolve_torch_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA out-of-memory error."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class TorchArcFaceEmbedder:
    """``embed(crops) -> (N, 512)`` raw ArcFace-R100 features of aligned RGB crops, ``batch_size`` per forward.

    ``path``: ``arcface-r100-glint360k.pth`` (or a folder holding ``weights/<file>``); ``device``: ``"auto"``,
    ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    """

    def __init__(self, path: str | Path, device: str | torch.device = "auto", batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_torch_device(device)
        self.model = load_arcface_r100(path, self.device)
        self.model_path = Path(self.model.source)
        self.batch_size = int(batch_size)
        self.embedding_dim = int(self.model.fc.out_features)

    def info(self) -> dict:
        """Model id and settings, for file metadata and manifests."""
        return {
            "embedder": self.model_path.name,
            "backend": f"torch {torch.__version__}",
            "architecture": f"iresnet blocks {list(self.model.layers)} widths {list(self.model.widths)}",
            "input_mean": 127.5,
            "input_std": 127.5,
            "device": str(self.device),
        }

    def preprocess(self, crops) -> torch.Tensor:
        """``(N, 3, 112, 112)`` float32 tensor in [-1, 1] of RGB uint8 crops ``(N, 112, 112, 3)`` (array or list)."""
        batch = stack_crops(crops)
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().contiguous()
        return x.div_(255).sub_(0.5).div_(0.5)

    @torch.inference_mode()
    def _run(self, blob: torch.Tensor) -> np.ndarray:
        out = self.model(blob.to(self.device, non_blocking=True))
        return out.float().cpu().numpy()

    def embed(self, crops) -> np.ndarray:
        """Raw float32 ``(N, 512)`` features of aligned RGB crops, ``batch_size`` crops per forward pass."""
        if len(crops) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        blob = self.preprocess(crops)
        empty_cache = torch.cuda.empty_cache if self.device.type == "cuda" else None
        out, self.batch_size = embed_in_batches(blob, self.embedding_dim, self.batch_size, self._run, is_oom,
                                                empty_cache)
        return out

    __call__ = embed
