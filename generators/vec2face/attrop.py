"""AttrOP: gradient steps on Vec2Face's input vector toward target identity similarity, quality and pose.

Per image, with the image's own (seeded) token mask held fixed, Adam (lr ``cfg.lr``) minimises

    100 * (1 - cos(ArcFace(img), target)) + relu(target_quality - MagFace(img))  [+ |target_yaw - |yaw(img)||]

where ``img`` is the Vec2Face output clipped to [-1, 1], ``target`` the identity's (unperturbed) vector in
ArcFace-R100 space, MagFace's quality is its feature norm and yaw comes from 6DRepNet (Vec2Face's
preprocessing). The quality term is present only when ``target_quality`` is set, the yaw term only when
``target_yaw`` is. An image stops (is frozen) once cos >= ``min_id_similarity``, its quality shortfall is
<= ``quality_tolerance`` and its yaw error <= ``yaw_tolerance``; the official loop has no cap and can spin
forever (Vec2Face issues #8, #18), here ``max_iterations`` ends it and the outcome says whether it converged.

A ``pose_schedule`` (ours) replaces the official ``|target_yaw - |yaw||`` by per-image signed terms
``|target_yaw_i - yaw| [+ |target_pitch_i - pitch|]``: :func:`pose_targets` gives image k of an identity the
entry ``k mod len(schedule)``, a NaN pitch target meaning no pitch term, and an image also needs its pitch error
<= ``pitch_tolerance`` to stop. Yaw and pitch keep 6DRepNet's signs (:func:`head_pose`, columns 1 and 0).

Determinism: Adam runs element-wise with per-image step counts, every image's loss depends on its own vector
only (the models are in eval mode), and a frozen image's state never changes. Mathematically an image's result
does not depend on its batch; numerically it would (Adam's first steps are +-lr whatever the gradient's size,
so rounding differences of a batched backward flip near-zero components), which is why the Vec2Face generator
optimises one image at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
    """Differentiable judges of generator output images: identity features, quality, yaw (degrees; the official
    term) and ``pose``: ``(N, 2)`` signed (yaw, pitch) degrees from one pass (a pose schedule)."""

    identity: Callable[[Images], torch.Tensor]
    quality: Callable[[Images], torch.Tensor] | None = None
    yaw: Callable[[Images], torch.Tensor] | None = None
    pose: Callable[[Images], torch.Tensor] | None = None


@dataclass
class Outcome:
    """What AttrOP did to one image (stored as ``attrop_*`` row columns)."""

    iterations: int
    converged: bool
    id_similarity: float
    quality: float | None
    yaw: float | None
    pitch: float | None = None  # measured only with a pose schedule
    target_yaw: float | None = None  # the official |yaw| target, or the image's signed schedule entry
    target_pitch: float | None = None


# The row columns of an :class:`Outcome` (``attrop_<field>``), in the order of its fields.
OUTCOME_FIELDS = [
    pa.field("attrop_iterations", pa.int32()),
    pa.field("attrop_converged", pa.bool_()),
    pa.field("attrop_id_similarity", pa.float32()),
    pa.field("attrop_quality", pa.float32()),
    pa.field("attrop_yaw", pa.float32()),
    pa.field("attrop_pitch", pa.float32()),
    pa.field("attrop_target_yaw", pa.float32()),
    pa.field("attrop_target_pitch", pa.float32()),
]


def needed_files(cfg) -> tuple[str, ...]:
    """The files :func:`load_scorers` reads for ``cfg``: ArcFace always, MagFace and 6DRepNet with their targets."""
    return (ARCFACE_FILE, *((MAGFACE_FILE,) if cfg.target_quality is not None else ()),
            *((POSE_FILE,) if needs_pose(cfg) else ()))


def needs_pose(cfg) -> bool:
    """Whether ``cfg`` has a pose term (``target_yaw`` or ``pose_schedule``)."""
    return cfg.target_yaw is not None or getattr(cfg, "pose_schedule", None) is not None


def pose_targets(cfg, image_indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (target yaw, target pitch) float32 tensors from ``cfg.pose_schedule``: image ``k`` of its identity
    takes entry ``k mod len(schedule)``; a NaN target pitch means no pitch term."""
    schedule = cfg.pose_schedule
    if not schedule:
        raise ValueError("attrop.pose_schedule is not set")
    entries = [schedule[int(k) % len(schedule)] for k in image_indices]
    yaw = torch.tensor([float(e.yaw) for e in entries], dtype=torch.float32)
    pitch = torch.tensor([math.nan if e.pitch is None else float(e.pitch) for e in entries], dtype=torch.float32)
    return yaw, pitch


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
    from facefoundry.faces.iresnet import load_arcface_r100, load_magface_r100, magface_quality
    from facefoundry.faces.sixdrepnet import head_pose, load_sixdrepnet

    arcface = load_arcface_r100(resolve_file(source, ARCFACE_FILE), device)
    scorers = Scorers(identity=arcface)
    if cfg.target_quality is not None:
        magface = load_magface_r100(resolve_file(source, MAGFACE_FILE), device)
        scorers.quality = lambda img: magface_quality(magface(img))
    if needs_pose(cfg):
        pose = load_sixdrepnet(resolve_file(source, POSE_FILE), device)
        if cfg.target_yaw is not None:
            scorers.yaw = lambda img: head_pose(pose, img)[:, 1].clamp(-90.0, 90.0)  # as Vec2Face: clip, then |yaw|
        else:  # head_pose's columns are (pitch, yaw, roll)
            scorers.pose = lambda img: head_pose(pose, img)[:, [1, 0]]
    return scorers


class AttrOp:
    """``optimise(render, vectors, targets[, target_yaw, target_pitch]) -> (vectors, outcomes)``; ``render(vectors,
    rows)`` must be the generator's differentiable forward of images ``rows`` of the batch (their token masks
    fixed). With a pose schedule, ``target_yaw``/``target_pitch`` are the images' entries (:func:`pose_targets`)."""

    def __init__(self, cfg, scorers: Scorers):
        if cfg.target_quality is not None and scorers.quality is None:
            raise ValueError("attrop.target_quality is set but no quality model (MagFace) was loaded")
        if cfg.target_yaw is not None and scorers.yaw is None:
            raise ValueError("attrop.target_yaw is set but no pose model (6DRepNet) was loaded")
        if getattr(cfg, "pose_schedule", None) is not None and scorers.pose is None:
            raise ValueError("attrop.pose_schedule is set but no pose model (6DRepNet yaw and pitch) was loaded")
        self.cfg, self.scorers = cfg, scorers

    def _evaluate(self, images: Images, targets: torch.Tensor, target_yaw: torch.Tensor | None,
                  target_pitch: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Per-image loss, whether each image meets every target, and the scores."""
        cfg = self.cfg
        cos = F.cosine_similarity(self.scorers.identity(images), targets, dim=1)
        loss = 100.0 * (1.0 - cos)
        done = cos >= cfg.min_id_similarity
        scores = {"id_similarity": cos, "quality": None, "yaw": None, "pitch": None}
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
        if target_yaw is not None:
            pose = self.scorers.pose(images)
            yaw, pitch = pose[:, 0], pose[:, 1]
            yaw_error = (target_yaw - yaw).abs()
            # NaN = no pitch term: masked by multiplication (a NaN in an unused torch.where branch would turn the
            # gradient into NaN), so those images get exactly zero pitch loss and gradient.
            has_pitch = ~torch.isnan(target_pitch)
            pitch_error = (target_pitch.nan_to_num(0.0) - pitch).abs()
            loss = loss + yaw_error + has_pitch.to(loss.dtype) * pitch_error
            done = done & (yaw_error <= cfg.yaw_tolerance) & (~has_pitch | (pitch_error <= cfg.pitch_tolerance))
            scores["yaw"], scores["pitch"] = yaw, pitch
        return loss, done, scores

    def optimise(self, render: Callable[[torch.Tensor, torch.Tensor], Images], vectors: torch.Tensor,
                 targets: torch.Tensor, target_yaw: torch.Tensor | None = None,
                 target_pitch: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Outcome]]:
        """Adam on ``vectors`` (N, 512) toward identity ``targets`` (N, 512) and, with a pose schedule, each image's
        signed ``target_yaw`` (N,) and ``target_pitch`` (N,; NaN = none); returns the vectors and outcomes."""
        cfg = self.cfg
        if (getattr(cfg, "pose_schedule", None) is not None) != (target_yaw is not None):
            raise ValueError("per-image target_yaw must be given exactly when attrop.pose_schedule is set "
                             "(see generators.attrop.pose_targets)")
        if target_yaw is not None:
            target_yaw = target_yaw.to(vectors.device, torch.float32).reshape(-1)
            target_pitch = (torch.full_like(target_yaw, math.nan) if target_pitch is None
                            else target_pitch.to(vectors.device, torch.float32).reshape(-1))
            if len(target_yaw) != len(vectors) or len(target_pitch) != len(vectors):
                raise ValueError(f"need one target yaw and pitch per vector ({len(vectors)}), got "
                                 f"{len(target_yaw)} and {len(target_pitch)}")
        beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, applied per image
        x = vectors.detach().clone().float()
        m, v = torch.zeros_like(x), torch.zeros_like(x)
        steps = torch.zeros(len(x), dtype=torch.long, device=x.device)
        active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        final: dict[str, list] = {"id_similarity": [0.0] * len(x), "quality": [None] * len(x), "yaw": [None] * len(x),
                                  "pitch": [None] * len(x)}
        for iteration in range(cfg.max_iterations + 1):
            idx = active.nonzero().flatten()
            if len(idx) == 0:
                break
            x_active = x[idx].requires_grad_(True)
            loss, done, scores = self._evaluate(render(x_active, idx).clamp(-1.0, 1.0), targets[idx],
                                                *((target_yaw[idx], target_pitch[idx]) if target_yaw is not None
                                                  else (None, None)))
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
        if target_yaw is not None:
            goals = [(float(target_yaw[i]), None if math.isnan(p := float(target_pitch[i])) else p)
                     for i in range(len(x))]
        else:
            goals = [(None if cfg.target_yaw is None else float(cfg.target_yaw), None)] * len(x)
        outcomes = [
            Outcome(int(steps[i]), not bool(active[i]), final["id_similarity"][i], final["quality"][i], final["yaw"][i],
                    final["pitch"][i], *goals[i])
            for i in range(len(x))
        ]
        return x.detach(), outcomes
