"""ID-Booth's fine-tuning step: DreamBooth with prior preservation plus the triplet identity loss, on a UNet LoRA.

Restates one optimisation step of the official ``train_ID-Booth.py`` (``which_loss: triplet_prior``) with the
defaults of its ``configs/config_train_SD21.py``. A batch is one instance photo of the person and one class image
(prior preservation), stacked in that order:

1. ``latents = vae.encode(pixels).latent_dist.sample() * scaling_factor``; ``noise ~ N(0, I)``;
   ``t ~ U{0..T-1}`` per image; ``noisy = scheduler.add_noise(latents, noise, t)``.
2. The UNet (frozen, with a LoRA on the attention projections :data:`LORA_TARGETS`, rank r, alpha r, gaussian
   init) predicts the noise for both under their prompt embeddings ("photo of sks person", "photo of a person").
3. ``instance = mse(pred[0], target[0])``, ``prior = mse(pred[1], target[1])`` (target: the noise, or the
   velocity for a v-prediction scheduler); ``loss = instance + prior_loss_weight * prior``.
4. Triplet identity term: one scheduler step of the instance prediction gives ``pred_original_sample``; the VAE
   decodes it to a 0..255 image; the face detector's first box crops it (the box detached, the crop
   differentiable); the crop is resized to 112 x 112 (bilinear, no antialiasing) and scaled to [-1, 1]; ArcFace
   embeds it. Anchor: that embedding; positive: the instance photo's ArcFace embedding; negative: the class
   image's. ``TripletMarginWithDistanceLoss`` with cosine distance ``1 - cos`` and margin m, weighted by
   ``(1 - t[0] / T) ** 2``, is added to the loss. No face detected: no triplet term for that step.
5. Backward, clip the LoRA gradients to norm 1.0, AdamW step, learning-rate scheduler step, zero the gradients.

Randomness: the official script draws the VAE sample, the noise, the timesteps and the scheduler step's variance
noise from the global RNG. Here they come, in that order, from the step's own ``torch.Generator`` (seeded from the
run seed, the identity and the step index by the caller), so a step redone after a resume draws the same values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj")
LORA_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes and load_lora_weights reads
ARCFACE_SIZE = 112

# A face detector for the triplet term: an H x W x 3 float image in 0..255 (a detached tensor) -> the first face's
# box (x1, y1, x2, y2) in pixels, or None. The official script uses facenet-pytorch's MTCNN (margin 0).
FaceBox = Callable[[torch.Tensor], "np.ndarray | None"]


def mtcnn_face_box(weights_dir: str | None = None, device: str | torch.device = "cpu") -> FaceBox:
    """The official detector: MTCNN (facenet-pytorch's weights and defaults, :mod:`facefoundry.faces.mtcnn`), its
    first (largest) box."""
    from facefoundry.faces.mtcnn import MTCNN

    detector = MTCNN(weights_dir, device=device)

    def first_box(image: torch.Tensor) -> np.ndarray | None:
        boxes, _ = detector.detect(image)
        return None if boxes[0] is None else boxes[0][0]

    return first_box


class LoraError(ValueError):
    """A LoRA file that does not fit the base model; the message names the file and what differs."""


@dataclass(frozen=True)
class StepSettings:
    """The loss and optimiser settings one step reads (the official defaults)."""

    prior_loss_weight: float = 1.0
    triplet_margin: float = 1.0  # TripletMarginWithDistanceLoss's default, which the official script keeps
    timestep_weighting: bool = True  # weight the triplet term by (1 - t/T)^2
    max_grad_norm: float = 1.0


@dataclass
class Batch:
    """One step's inputs: instance photo then class image, each ``(3, R, R)`` in [-1, 1], with their prompt
    embeddings ``(L, D)`` and their ArcFace embeddings ``(512,)``."""

    pixels: torch.Tensor  # (2, 3, R, R)
    prompt_embeds: torch.Tensor  # (2, L, D)
    face_embeds: torch.Tensor  # (2, 512): positive (the person), negative (the class image)


@dataclass
class LossTerms:
    """The step's loss and its parts (``triplet``/``weight`` None when no face was found in the prediction)."""

    total: torch.Tensor
    instance: torch.Tensor
    prior: torch.Tensor
    triplet: torch.Tensor | None
    weight: torch.Tensor | None


def add_lora(unet: torch.nn.Module, rank: int, seed: int) -> None:
    """Add the official UNet LoRA (rank ``rank``, alpha ``rank``, gaussian init: A ~ N(0, 1/rank), B = 0) to
    ``unet`` and make it the only trainable part; the init draws from ``seed`` (global RNG untouched)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config)


def lora_parameters(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable (LoRA) parameters of ``unet``, in module order."""
    return [p for p in unet.parameters() if p.requires_grad]


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The UNet LoRA in diffusers' key format (``...to_q.lora.down.weight``), as the official save hook takes it."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def save_lora(folder: str | Path, unet: torch.nn.Module) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` the way the official script does (diffusers'
    ``save_lora_weights`` with the UNet layers only), so the official inference script and diffusers'
    ``load_lora_weights`` read it."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    state = {k: v.detach().to(torch.float32).contiguous() for k, v in lora_state_dict(unet).items()}
    StableDiffusionLoraLoaderMixin.save_lora_weights(str(folder), unet_lora_layers=state, weight_name=LORA_FILE)
    return Path(folder) / LORA_FILE


def load_lora(unet: torch.nn.Module, source: str | Path) -> None:
    """Load a saved UNet LoRA (a folder holding :data:`LORA_FILE`, or the file) into ``unet``, which already has
    the adapter (:func:`add_lora`), strictly: a key or shape the UNet lacks is a :class:`LoraError` (a LoRA
    trained for another base model)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    path = Path(source)
    folder, name = (path.parent, path.name) if path.is_file() else (path, LORA_FILE)
    if not (folder / name).is_file():
        raise LoraError(f"no LoRA file {folder / name}: train the identity first or point at its folder")
    state, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(str(folder), weight_name=name)
    if not state or any(not k.startswith("unet.") for k in state):
        other = sorted({k.split(".")[0] for k in state if not k.startswith("unet.")})
        raise LoraError(f"{folder / name} is not a UNet-only LoRA (parts {other or 'none'}); ID-Booth trains the "
                        "UNet's attention projections only")
    peft_state = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in state.items()})
    expected = get_peft_model_state_dict(unet)  # adapter name already left out of the keys
    wrong = [k for k in peft_state if k not in expected or peft_state[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in peft_state]
    if wrong or missing:
        example = (wrong or missing)[0]
        raise LoraError(f"{folder / name} does not fit this base model's UNet ({len(wrong)} keys or shapes it lacks, "
                        f"{len(missing)} of its LoRA keys missing, e.g. {example}): it was trained for another base "
                        "model or another LoRA rank")
    set_peft_model_state_dict(unet, peft_state, adapter_name="default")


def check_lora_fits(unet: torch.nn.Module, file: str | Path) -> None:
    """:class:`LoraError` naming the file unless every layer of the UNet LoRA ``file`` (diffusers' key format, as
    saved by :func:`save_lora` and the official script) has a linear layer of matching width in ``unet``: a LoRA
    trained on another base model is refused before diffusers loads it."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as handle:
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    except Exception as exc:
        raise LoraError(f"cannot read the LoRA file {file}: {exc}") from exc
    for key, shape in shapes.items():
        if not key.endswith(".lora.down.weight"):
            continue
        name = key.removeprefix("unet.").removesuffix(".lora.down.weight")
        try:
            layer = unet.get_submodule(name)
        except AttributeError:
            layer = None
        layer = getattr(layer, "base_layer", layer)
        up = shapes.get(key.replace(".lora.down.", ".lora.up."))
        if not isinstance(layer, torch.nn.Linear) or shape[1] != layer.in_features or up is None \
                or up[0] != layer.out_features:
            raise LoraError(f"{file} does not fit this base model's UNet (its layer {name} has no linear layer of "
                            "that width here): it was trained for another base model; fine-tune it again on "
                            "generator.base_model")


def decode_for_detector(latents: torch.Tensor, vae: Any, scaling_factor: float) -> torch.Tensor:
    """The first latent decoded to an H x W x 3 image in 0..255 (differentiable), as the official
    ``latents_to_image_for_mtcnn``."""
    image = vae.decode(latents / scaling_factor).sample
    image = (image / 2 + 0.5).clamp(0, 1)
    return (image * 255)[0].permute(1, 2, 0)


def crop_for_arcface(image: torch.Tensor, box: np.ndarray) -> torch.Tensor:
    """``image`` (H x W x 3, 0..255) cropped to ``box`` (x1, y1, x2, y2; truncated to int and clamped to the image
    as the official script does), resized to 112 x 112 (bilinear, no antialiasing) and scaled to [-1, 1]:
    ``(1, 3, 112, 112)``."""
    x1, y1, x2, y2 = (int(v) for v in np.asarray(box, dtype=np.float64)[:4])
    size = image.shape[0]
    crop = image[max(0, y1):min(y2, size), max(0, x1):min(x2, size)].permute(2, 0, 1)
    crop = F.interpolate(crop[None], size=(ARCFACE_SIZE, ARCFACE_SIZE), mode="bilinear", align_corners=False,
                         antialias=False)
    return (crop / 255 - 0.5) / 0.5


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x, y)`` per row."""
    return 1 - F.cosine_similarity(x, y)


@dataclass
class Models:
    """The frozen parts a step runs (the UNet carries the trainable LoRA)."""

    unet: Any
    vae: Any
    scheduler: Any  # a DDPMScheduler from the base model's scheduler config
    arcface: torch.nn.Module
    face_box: FaceBox


def loss_terms(models: Models, batch: Batch, generator: torch.Generator, settings: StepSettings,
               dtype: torch.dtype = torch.float32) -> LossTerms:
    """The step's loss (see the module docstring), every random draw taken from ``generator``."""
    vae, unet, scheduler = models.vae, models.unet, models.scheduler
    pixels = batch.pixels.to(device=vae.device, dtype=dtype)
    scaling = vae.config.scaling_factor
    latents = vae.encode(pixels).latent_dist.sample(generator=generator) * scaling
    # torch.randn_like(latents) with the step's generator: filled in the latents' memory order, as randn_like does
    noise = torch.empty_like(latents).normal_(generator=generator)
    steps = scheduler.config.num_train_timesteps
    t = torch.randint(0, steps, (latents.shape[0],), generator=generator, device=generator.device).long()
    t = t.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, batch.prompt_embeds.to(device=noisy.device, dtype=dtype), return_dict=False)[0]
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    elif scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    else:
        raise ValueError(f"unknown prediction type {scheduler.config.prediction_type!r} in the base model's scheduler")
    pred_instance, pred_prior = torch.chunk(pred, 2, dim=0)
    target_instance, target_prior = torch.chunk(target, 2, dim=0)
    instance = F.mse_loss(pred_instance.float(), target_instance.float(), reduction="mean")
    prior = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
    total = instance + settings.prior_loss_weight * prior

    x0 = scheduler.step(pred_instance, t[0], noisy[0], generator=generator).pred_original_sample
    image = decode_for_detector(x0.to(dtype), vae, scaling)
    box = models.face_box(image.detach())
    if box is None:
        return LossTerms(total, instance, prior, None, None)
    anchor = models.arcface(crop_for_arcface(image, box))
    faces = batch.face_embeds.to(device=anchor.device, dtype=dtype)
    triplet = F.triplet_margin_with_distance_loss(anchor, faces[0][None], faces[1][None],
                                                  distance_function=cosine_distance, margin=settings.triplet_margin)
    weight = (1 - t[0] / steps) ** 2 if settings.timestep_weighting else torch.ones((), device=t.device)
    return LossTerms(total + weight * triplet, instance, prior, triplet, weight)


def make_optimizer(params: list[torch.nn.Parameter], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                   weight_decay: float = 1e-2, eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over the LoRA parameters with the official settings."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)


def make_lr_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, name: str = "cosine",
                      warmup_steps: int = 0) -> Any:
    """diffusers' ``get_scheduler`` as the official script calls it (one process, one cycle)."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                         num_cycles=1, power=1.0)


def train_step(models: Models, batch: Batch, generator: torch.Generator, settings: StepSettings,
               optimizer: torch.optim.Optimizer, lr_scheduler: Any, dtype: torch.dtype = torch.float32,
               scaler: torch.amp.GradScaler | None = None) -> LossTerms:
    """One optimisation step: the loss, backward, clip to ``max_grad_norm``, optimiser and scheduler step.

    ``scaler``: float16 training on CUDA scales the loss as the official script's accelerator does (the LoRA
    parameters stay float32)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with torch.autocast(models.vae.device.type, dtype=dtype, enabled=dtype != torch.float32):
        terms = loss_terms(models, batch, generator, settings, dtype)
    if scaler is not None:
        scaler.scale(terms.total).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad()
    return terms
