"""Additive-margin softmax heads for face recognition: ArcFace (angular margin) and CosFace (cosine margin).

Both hold one learnable centre per class, compare L2-normalised embeddings with L2-normalised centres
(cosine logits) and penalise the target class before scaling by ``s``:

- ArcFace (Deng et al., CVPR 2019): target logit ``cos(theta + m)``. Where ``theta + m`` would pass pi the
  function is no longer decreasing in theta; there the logit continues as ``cos(theta) - m * sin(m)``, the
  linear extension ArcFace's reference code uses, so the penalty stays monotone.
- CosFace (Wang et al., CVPR 2018): target logit ``cos(theta) - m``.

The loss is the softmax cross-entropy of ``s * logits``. Logits are computed in float32 even under autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facefoundry.evaluate.config import HeadConfig


class MarginHead(nn.Module):
    """Class centres ``(num_classes, embedding_size)`` and the margin rule; ``forward`` returns scaled logits."""

    def __init__(self, embedding_size: int, num_classes: int, margin: float, scale: float):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a margin head needs at least 2 classes, got {num_classes}")
        self.margin, self.scale = float(margin), float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of every embedding with every class centre, ``(N, C)``, float32, clamped to [-1, 1]."""
        emb = F.normalize(embeddings.float(), dim=1)
        centres = F.normalize(self.weight.float(), dim=1)
        return (emb @ centres.t()).clamp(-1.0, 1.0)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the margin applied to each row's own class."""
        cos = self.cosines(embeddings)
        rows = torch.arange(cos.shape[0], device=cos.device)
        target = cos[rows, labels]
        logits = cos.clone()
        logits[rows, labels] = self.target_logit(target)
        return logits * self.scale

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the margin logits."""
        return F.cross_entropy(self(embeddings, labels), labels)


class ArcFaceHead(MarginHead):
    """ArcFace: ``s * cos(theta + m)`` for the target class."""

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        m = self.margin
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
        shifted = cos * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
        threshold = math.cos(math.pi - m)  # theta + m == pi
        return torch.where(cos > threshold, shifted, cos - m * math.sin(m))


class CosFaceHead(MarginHead):
    """CosFace: ``s * (cos(theta) - m)`` for the target class."""

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.margin


def build_head(cfg: HeadConfig, embedding_size: int, num_classes: int) -> MarginHead:
    """The head ``cfg.kind`` names, with its margin and scale."""
    cls = {"arcface": ArcFaceHead, "cosface": CosFaceHead}[cfg.kind]
    return cls(embedding_size, num_classes, cfg.margin, cfg.scale)
