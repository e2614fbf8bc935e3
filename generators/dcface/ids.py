"""DCFace's identity stage: ID images, kept only when unique, written as an ID set (:mod:`.dcface_inputs`).

Candidates come either from a folder of aligned 112 px faces (what the release's ``synthesis.py`` takes as
``--id_images_root``) or from G_id: the unconditional ADM DDPM trained on FFHQ at 256 px (``ffhq_10m.pt``), sampled
as stage 1 of the release (guided-diffusion's ``p_sample_loop`` over 100 respaced steps, learned-range variance,
x0 clipped), then aligned to 112 px on the ArcFace 5-point template from SCRFD's landmarks (the release used
RetinaFace with the same template) and kept only when roughly frontal (the release's README: drop ID images that
are occluded or not front-facing).

Each candidate is embedded by the identity encoder (an ArcFace ONNX or a ``.pth`` IResNet, as ``id_filter``) and
kept, in candidate order, only when its cosine to every identity kept so far is at most ``max_cosine`` (DCFace's
uniqueness threshold 0.3; the project's exact rejection rule, :mod:`facefoundry.identities.rejection`) and, with
galleries, when it is not close to a real identity (:mod:`facefoundry.identities.leakage`). Candidate ``k``'s
image depends only on (seed, k), so a rerun gives the same ID set.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from facefoundry.generators.base import load_plain_state_dict, resolve_device, resolve_dtype, state_dict_mismatch
from facefoundry.generators.dcface.inputs import ALIGNED_SIZE, ImageBank, write_id_set
from facefoundry.generators.dcface.spec import DCFaceSpec
from facefoundry.generators.dcface.unet import GID_ARCH, ADMUNet, adm_arch_from_state
from facefoundry.seeds import derive_seed

TRAIN_TIMESTEPS = 1000


class IdStageError(ValueError):
    """The identity stage cannot run or cannot reach its count; the message says why and what to change."""


# ----------------------------------------------------------------------------- G_id
@dataclass(frozen=True)
class RespacedSchedule:
    """guided-diffusion's ``SpacedDiffusion`` of the linear 1000-step schedule at ``steps`` evenly spaced steps."""

    timestep_map: list[int]
    betas: np.ndarray  # float64, as guided-diffusion computes every constant
    log_betas: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray


def respaced_schedule(steps: int) -> RespacedSchedule:
    """``space_timesteps(1000, [steps])`` (``round(i * 999 / (steps - 1))``) and the re-derived betas."""
    base = np.cumprod(1.0 - np.linspace(1e-4, 0.02, TRAIN_TIMESTEPS, dtype=np.float64))
    stride = (TRAIN_TIMESTEPS - 1) / (steps - 1) if steps > 1 else 0.0
    used = sorted({round(i * stride) for i in range(steps)})
    betas, last = [], 1.0
    for t in used:
        betas.append(1.0 - base[t] / last)
        last = base[t]
    b = np.asarray(betas, dtype=np.float64)
    ac = np.cumprod(1.0 - b)
    ac_prev = np.append(1.0, ac[:-1])
    posterior_variance = b * (1.0 - ac_prev) / (1.0 - ac)
    clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:])) if len(b) > 1 else np.log(b)
    return RespacedSchedule(used, b, np.log(b), clipped, b * np.sqrt(ac_prev) / (1.0 - ac),
                            (1.0 - ac_prev) * np.sqrt(1.0 - b) / (1.0 - ac), np.sqrt(1.0 / ac), np.sqrt(1.0 / ac - 1))


def load_gid(path: str | Path, image_size: int = GID_ARCH.image_size) -> ADMUNet:
    """``ffhq_10m.pt`` (a plain guided-diffusion state dict) with ``torch.load(weights_only=True)``, strictly."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise IdStageError(f"G_id checkpoint {path} does not exist — download ffhq_10m.pt from the Google Drive "
                           "folder linked in the mk-minchul/dcface README")
    state = load_plain_state_dict(path, IdStageError)
    try:
        unet = ADMUNet(adm_arch_from_state(state, image_size=image_size)).to("meta")
    except KeyError as exc:
        raise IdStageError(f"{path} is not the G_id ADM UNet (ffhq_10m.pt): no {exc.args[0]!r}") from None
    problem = state_dict_mismatch(state, unet.state_dict())
    if problem is not None:
        raise IdStageError(f"{path} is not the G_id ADM UNet (ffhq_10m.pt): {problem}")
    unet.load_state_dict(state, strict=True, assign=True)
    return unet


class GidSampler:
    """Unconditional ID images from G_id: respaced ancestral DDPM with the learned-range variance."""

    def __init__(self, unet: ADMUNet, steps: int = 100, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device, DCFaceSpec.precision_on_cuda)
        self.unet = unet.to(self.device, self.dtype).eval().requires_grad_(False)
        self.schedule = respaced_schedule(steps)

    @torch.inference_mode()
    def sample(self, seeds: np.ndarray) -> list[np.ndarray]:
        """One uint8 RGB image (``image_size`` px) per seed; the seed's generator draws x_T, then one noise per
        step (drawn at the last step too and multiplied by zero there, as guided-diffusion does)."""
        s, size = self.schedule, self.unet.arch.image_size
        gens = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

        def noise() -> torch.Tensor:
            return torch.stack([torch.randn((3, size, size), generator=g) for g in gens]).to(self.device)

        def at(arr: np.ndarray, i: int) -> torch.Tensor:
            return torch.tensor(arr[i], dtype=torch.float32)

        x = noise()
        for i in reversed(range(len(s.timestep_map))):
            out = self.unet(x.to(self.dtype), torch.tensor([s.timestep_map[i]], device=self.device)).float()
            eps, v = out[:, :3], out[:, 3:]
            frac = (v + 1) / 2
            log_var = frac * at(s.log_betas, i) + (1 - frac) * at(s.posterior_log_variance_clipped, i)
            x0 = (at(s.sqrt_recip_alphas_cumprod, i) * x - at(s.sqrt_recipm1_alphas_cumprod, i) * eps).clamp(-1, 1)
            mean = at(s.posterior_mean_coef1, i) * x0 + at(s.posterior_mean_coef2, i) * x
            z = noise()
            x = mean + (float(i != 0) * torch.exp(0.5 * log_var)) * z
        # torchvision save_image(normalize=True, range=(-1, 1)): clamp, (x + 1) / 2, * 255 + 0.5 truncated
        pixels = ((x.clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8)
        return list(pixels.permute(0, 2, 3, 1).cpu().numpy())


# ----------------------------------------------------------------------------- the stage
@dataclass
class IdStageSettings:
    """What ``facefoundry dcface-ids`` takes (see its ``--help``)."""

    count: int
    encoder: str
    detector: str | None = None
    max_cosine: float = 0.3
    max_yaw: float | None = 30.0
    galleries: list[str] = field(default_factory=list)
    gallery_max_cosine: float = 0.3
    seed: int = 0
    gid_steps: int = 100
    gid_size: int = GID_ARCH.image_size
    batch_size: int = 8
    device: str = "auto"
    max_candidates: int | None = None


Candidates = Callable[[int, int], tuple[np.ndarray, list[np.ndarray | None], list[str]]]


def _encoder(settings: IdStageSettings):
    from facefoundry.faces.encoder import load_encoder
    from facefoundry.sections import IdentityFilterConfig

    providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider"]}.get(settings.device)
    return load_encoder(settings.encoder, settings.device, IdentityFilterConfig().batch_size, providers, 512)


def folder_candidates(folder: str | Path, embed: Callable) -> tuple[Candidates, int]:
    """Candidates from a folder (or Parquet) of aligned 112 px faces, in natural name order."""
    bank = ImageBank(folder, "ID image folder")

    def take(start: int, n: int) -> tuple[np.ndarray, list[np.ndarray | None], list[str]]:
        idx = range(start, min(start + n, len(bank)))
        images = [bank.array(i) for i in idx]
        vectors = np.full((n, 512), np.nan, np.float32)
        if images:
            vectors[: len(images)] = embed(np.stack(images))
        return vectors, images + [None] * (n - len(images)), [f"folder:{bank.name(i)}" for i in idx] + [""] * (
            n - len(images))

    return take, len(bank)


def gid_candidates(sampler: GidSampler, detector, embed: Callable, settings: IdStageSettings,
                   stream: TextIO | None) -> Candidates:
    """Candidates from G_id: candidate k is drawn with seed ``derive_seed(seed, "dcface-id", k)``, aligned from its
    largest SCRFD face, dropped (NaN) when no face is found or |yaw| exceeds ``max_yaw``."""
    from facefoundry.faces.alignment import AlignmentError, align
    from facefoundry.faces.quality import pose_from_landmarks

    def take(start: int, n: int) -> tuple[np.ndarray, list[np.ndarray | None], list[str]]:
        vectors = np.full((n, 512), np.nan, np.float32)
        crops: list[np.ndarray | None] = [None] * n
        seeds = np.asarray([derive_seed(settings.seed, "dcface-id", start + k) for k in range(n)])
        for b in range(0, n, settings.batch_size):
            images = sampler.sample(seeds[b:b + settings.batch_size])
            for k, (image, (boxes, kps)) in enumerate(zip(images, detector.detect_batch(images), strict=True), b):
                if len(boxes) == 0:
                    continue
                best = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
                yaw = pose_from_landmarks(kps[best])[0]
                if settings.max_yaw is not None and not abs(yaw) <= settings.max_yaw:
                    continue
                try:
                    crops[k] = align(image, kps[best], ALIGNED_SIZE)
                except AlignmentError:
                    continue
            if stream is not None:
                stream.write(f"G_id: {start + min(b + settings.batch_size, n)} candidates drawn\n")
                stream.flush()
        good = [k for k, c in enumerate(crops) if c is not None]
        if good:
            vectors[good] = embed(np.stack([crops[k] for k in good]))
        return vectors, crops, [f"G_id:seed={int(s)}" for s in seeds]

    return take


def select_unique(candidates: Candidates, settings: IdStageSettings, available: int | None
                  ) -> tuple[np.ndarray, list[np.ndarray], list[str], int]:
    """The first ``count`` candidates, in order, that pass the gallery screen and the uniqueness rule."""
    from facefoundry.identities.leakage import screen
    from facefoundry.identities.rejection import SamplingError, rejection_sample
    from facefoundry.sections import LeakageConfig

    leak_cfg = LeakageConfig(galleries=settings.galleries, max_cosine=settings.gallery_max_cosine)
    drawn: dict[bytes, tuple[np.ndarray, str]] = {}
    cursor = 0

    def propose(_rng: np.random.Generator, n: int) -> np.ndarray:
        nonlocal cursor
        vectors, images, sources = candidates(cursor, n)
        cursor += n
        unit = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        if settings.galleries and np.isfinite(unit).all(axis=1).any():
            ok = np.flatnonzero(np.isfinite(unit).all(axis=1))
            leaked = screen(unit[ok], leak_cfg).rejected(False)
            unit[ok[leaked]] = np.nan
        # rejection_sample normalises what it is given once more: key each candidate by that very vector
        again = (unit / np.linalg.norm(unit, axis=1, keepdims=True)).astype(np.float32)
        for row, image, source in zip(again, images, sources, strict=True):
            if image is not None and np.isfinite(row).all():  # an identical later candidate is never the kept one
                drawn.setdefault(row.tobytes(), (image, source))
        return unit

    budget = settings.max_candidates or (available if available is not None else 1000 * settings.count)
    try:
        kept, tried = rejection_sample(propose, settings.count, 512, settings.max_cosine, budget,
                                       np.random.default_rng(0))
    except SamplingError as exc:
        raise IdStageError(f"kept fewer than {settings.count} unique ID images from {budget} candidates "
                           f"(max_cosine {settings.max_cosine}); {exc}") from None
    images, sources = zip(*(drawn[row.tobytes()] for row in kept), strict=True)
    return kept, list(images), list(sources), tried


def build_id_set(out: str | Path, settings: IdStageSettings, folder: str | Path | None = None,
                 gid_model: str | Path | None = None, stream: TextIO | None = sys.stderr) -> Path:
    """Build an ID set from ``folder`` or from G_id (``gid_model`` + ``settings.detector``) and write it to ``out``."""
    if (folder is None) == (gid_model is None):
        raise IdStageError("give exactly one source: a folder of aligned ID images, or the G_id model")
    embedder = _encoder(settings)
    if folder is not None:
        candidates, available = folder_candidates(folder, embedder.embed)
        if available < settings.count:
            raise IdStageError(f"{folder} holds {available} images; --count is {settings.count}")
    else:
        if settings.detector is None:
            raise IdStageError("G_id images must be aligned: give --detector (an SCRFD ONNX file or pack folder)")
        from facefoundry.faces.scrfd import ScrfdDetector

        sampler = GidSampler(load_gid(gid_model, settings.gid_size), settings.gid_steps, settings.device)
        providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider"]}.get(settings.device)
        from facefoundry.sections import IdentityFilterConfig

        detector = ScrfdDetector(Path(settings.detector), IdentityFilterConfig().input_size, providers=providers)
        candidates, available = gid_candidates(sampler, detector, embedder.embed, settings, stream), None
    kept, images, sources, tried = select_unique(candidates, settings, available)
    nearest = kept @ kept.T - 2 * np.eye(len(kept), dtype=np.float32)
    metadata = {"source": "folder" if folder is not None else "G_id", "encoder": Path(settings.encoder).name,
                "max_cosine": settings.max_cosine, "max_yaw": settings.max_yaw if folder is None else None,
                "galleries": [Path(g).name for g in settings.galleries], "seed": settings.seed,
                "gid_steps": settings.gid_steps if folder is None else None, "candidates": tried,
                "max_nearest_cosine": float(nearest.max()) if len(kept) > 1 else None}
    path = write_id_set(out, images, kept, sources, metadata)
    if stream is not None:
        stream.write(f"ID set: {len(kept)} identities from {tried} candidates (nearest-neighbour cosine max "
                     f"{metadata['max_nearest_cosine'] if len(kept) > 1 else math.nan:.3f}) -> {path}\n")
    return path
