"""AttrOP: gradient steps on Vec2Face's input vector toward target identity similarity, quality and yaw.

Per image, with the image's own (seeded) token mask held fixed, Adam (lr ``cfg.lr``) minimises

    100 * (1 - cos(ArcFace(img), target)) + relu(target_quality - MagFace(img))  [+ |target_yaw - |yaw(img)||]

where ``img`` is the Vec2Face output clipped to [-1, 1], ``target`` the identity's (unperturbed) vector in
ArcFace-R100 space, MagFace's quality is its feature norm and yaw comes from 6DRepNet (Vec2Face's
preprocessing). The quality term is present only when ``target_quality`` is set, the yaw term only when
``target_yaw`` is. An image stops (is frozen) once cos >= ``min_id_similarity``, its quality shortfall is
<= ``quality_tolerance`` and its yaw error <= ``yaw_tolerance``; the official loop has no cap and can spin
forever (Vec2Face issues #8, #18), here ``max_iterations`` ends it and the outcome says whether it converged.

Determinism: Adam runs element-wise with per-image step counts, every image's loss depends on its own vector
only (the models are in eval mode), and a frozen image's state never changes. Mathematically an image's result
does not depend on its batch; numerically it would (Adam's first steps are +-lr whatever the gradient's size,
so rounding differences of a batched backward flip near-zero components), which is why the Vec2Face generator
optimises one image at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch
import torch.nn.functional as F

ARCFACE_FILE = "weights/arcface-r100-glint360k.pth"
MAGFACE_FILE = "weights/magface-r100-glint360k.pth"
POSE_FILE = "weights/6DRepNet_300W_LP_AFLW2000.pth"

Images = torch.Tensor  # (N, 3, 112, 112) RGB in [-1, 1]


@dataclass
class Scorers:
    """Differentiable judges of generator output images: identity features, quality and yaw (degrees)."""

    identity: Callable[[Images], torch.Tensor]
    quality: Callable[[Images], torch.Tensor] | None = None
    yaw: Callable[[Images], torch.Tensor] | None = None


@dataclass
class Outcome:
    """What AttrOP did to one image (stored as ``attrop_*`` row columns)."""

    iterations: int
    converged: bool
    id_similarity: float
    quality: float | None
    yaw: float | None


# The row columns of an :class:`Outcome` (``attrop_<field>``), in the order of its fields.
OUTCOME_FIELDS = [
    pa.field("attrop_iterations", pa.int32()),
    pa.field("attrop_converged", pa.bool_()),
    pa.field("attrop_id_similarity", pa.float32()),
    pa.field("attrop_quality", pa.float32()),
    pa.field("attrop_yaw", pa.float32()),
]


def needed_files(cfg) -> tuple[str, ...]:
    """The files :func:`load_scorers` reads for ``cfg``: ArcFace always, MagFace and 6DRepNet with their targets."""
    return (ARCFACE_FILE, *((MAGFACE_FILE,) if cfg.target_quality is not None else ()),
            *((POSE_FILE,) if cfg.target_yaw is not None else ()))


def resolve_file(source: str, filename: str) -> Path:
    """``source/filename`` for a local folder, else the file from the Hub repo ``source`` (HF cache)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder / filename
    from facefoundry.models import require_file

    return Path(require_file(source, filename))


def load_scorers(cfg, source: str, device: torch.device) -> Scorers:
    """ArcFace-R100, MagFace-R100 and 6DRepNet from ``source`` (Hub id or folder in the official layout, e.g.
    ``cfg.models``); the quality and pose models are loaded only when their targets are set."""
    from facefoundry.filters.iresnet import load_arcface_r100, load_magface_r100, magface_quality
    from facefoundry.filters.sixdrepnet import head_pose, load_sixdrepnet

    arcface = load_arcface_r100(resolve_file(source, ARCFACE_FILE), device)
    scorers = Scorers(identity=arcface)
    if cfg.target_quality is not None:
        magface = load_magface_r100(resolve_file(source, MAGFACE_FILE), device)
        scorers.quality = lambda img: magface_quality(magface(img))
    if cfg.target_yaw is not None:
        pose = load_sixdrepnet(resolve_file(source, POSE_FILE), device)
        scorers.yaw = lambda img: head_pose(pose, img)[:, 1].clamp(-90.0, 90.0)  # as Vec2Face: clip, then |yaw|
    return scorers


class AttrOp:
    """``optimise(render, vectors, targets) -> (vectors, outcomes)``; ``render(vectors, rows)`` must be the
    generator's differentiable forward of images ``rows`` of the batch (their token masks fixed)."""

    def __init__(self, cfg, scorers: Scorers):
        if cfg.target_quality is not None and scorers.quality is None:
            raise ValueError("attrop.target_quality is set but no quality model (MagFace) was loaded")
        if cfg.target_yaw is not None and scorers.yaw is None:
            raise ValueError("attrop.target_yaw is set but no pose model (6DRepNet) was loaded")
        self.cfg, self.scorers = cfg, scorers

    def _evaluate(self, images: Images, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Per-image loss, whether each image meets every target, and the scores."""
        cfg = self.cfg
        cos = F.cosine_similarity(self.scorers.identity(images), targets, dim=1)
        loss = 100.0 * (1.0 - cos)
        done = cos >= cfg.min_id_similarity
        scores = {"id_similarity": cos, "quality": None, "yaw": None}
        if cfg.target_quality is not None:
            quality = self.scorers.quality(images)
            shortfall = cfg.target_quality - quality
            loss = loss + F.relu(shortfall)
            done = done & (shortfall <= cfg.quality_tolerance)
            scores["quality"] = quality
        if cfg.target_yaw is not None:
            yaw = self.scorers.yaw(images)
            error = (cfg.target_yaw - yaw.abs()).abs()
            loss = loss + error
            done = done & (error <= cfg.yaw_tolerance)
            scores["yaw"] = yaw
        return loss, done, scores

    def optimise(self, render: Callable[[torch.Tensor, torch.Tensor], Images], vectors: torch.Tensor,
                 targets: torch.Tensor
                 ) -> tuple[torch.Tensor, list[Outcome]]:
        cfg = self.cfg
        beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, applied per image
        x = vectors.detach().clone().float()
        m, v = torch.zeros_like(x), torch.zeros_like(x)
        steps = torch.zeros(len(x), dtype=torch.long, device=x.device)
        active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        final: dict[str, list] = {"id_similarity": [0.0] * len(x), "quality": [None] * len(x), "yaw": [None] * len(x)}
        for iteration in range(cfg.max_iterations + 1):
            idx = active.nonzero().flatten()
            if len(idx) == 0:
                break
            x_active = x[idx].requires_grad_(True)
            loss, done, scores = self._evaluate(render(x_active, idx).clamp(-1.0, 1.0), targets[idx])
            for key, values in scores.items():
                if values is not None:
                    for k, i in enumerate(idx.tolist()):
                        final[key][i] = float(values[k].detach())
            active[idx[done]] = False
            if iteration == cfg.max_iterations:
                break  # the cap: report the last scores, take no further step
            (grad,) = torch.autograd.grad(loss.sum(), x_active)
            step = ~done
            i, g = idx[step], grad[step]
            steps[i] += 1
            t = steps[i].unsqueeze(1).float()
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat, v_hat = m[i] / (1 - beta1**t), v[i] / (1 - beta2**t)
            x[i] = x[i] - cfg.lr * m_hat / (v_hat.sqrt() + eps)
        outcomes = [
            Outcome(int(steps[i]), not bool(active[i]), final["id_similarity"][i], final["quality"][i], final["yaw"][i])
            for i in range(len(x))
        ]
        return x.detach(), outcomes
