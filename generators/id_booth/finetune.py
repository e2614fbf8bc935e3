"""One person's ID-Booth fine-tuning: the data the official ``DreamBoothDataset`` feeds, the epochs, checkpoints
and resume.

Data (as ``train_ID-Booth.py``): an epoch has ``max(instance photos, class images)`` steps; step ``k`` of an epoch
takes dataset index ``order[k]`` (the official DataLoader shuffles), i.e. instance photo ``index % photos`` and
class image ``index % class images``. Each image is resized so its shorter side is ``resolution`` (bilinear),
randomly cropped to ``resolution`` x ``resolution`` and scaled to [-1, 1]. Each carries the ArcFace embedding
of its face (:func:`embed_face`), computed once.

Determinism and resume: the epoch's order and every draw of step ``s`` (the two crops, then the step's own draws,
:mod:`.training`) come from seeds derived from (run seed, identity, epoch or step), never from what ran before in
the process, so a run resumed from a checkpoint redoes the remaining steps exactly. A checkpoint is
``<folder>/checkpoint-<epoch>-<step>/`` (the official naming) holding ``pytorch_lora_weights.safetensors`` (the
official format), the optimiser's and learning-rate scheduler's states and ``state.json``, written last; the
finished LoRA is ``<folder>/pytorch_lora_weights.safetensors``, written atomically after the last step.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from facefoundry.generators.id_booth.training import (
    LORA_FILE,
    Batch,
    FaceBox,
    LossTerms,
    Models,
    StepSettings,
    crop_for_arcface,
    load_lora,
    lora_parameters,
    make_lr_scheduler,
    make_optimizer,
    save_lora,
    train_step,
)
from facefoundry.seeds import derive_seed

STATE_FILE = "state.json"  # a checkpoint is complete once this exists (written last)
TRAINING_STATE = "training_state.pt"


class NoFaceError(ValueError):
    """A person none of whose photos shows a face the detector finds; the message names the folder."""


@dataclass(frozen=True)
class Plan:
    """How long one person trains: ``epochs`` of ``steps_per_epoch`` steps, a checkpoint every
    ``checkpoint_epochs`` epochs (and after the last)."""

    epochs: int
    steps_per_epoch: int
    checkpoint_epochs: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class TrainingData:
    """A person's instance photos and the shared class images, decoded, each with its face embedding."""

    photos: list[Image.Image]
    photo_embeds: torch.Tensor  # (photos, 512)
    class_images: list[Image.Image]
    class_embeds: torch.Tensor  # (class images, 512)
    prompt_embeds: torch.Tensor  # (2, L, D): instance prompt, class prompt

    @property
    def length(self) -> int:
        """Steps per epoch: the official dataset's length with prior preservation."""
        return max(len(self.photos), len(self.class_images))


def open_rgb(path: str | Path) -> Image.Image:
    """A photo as RGB, turned upright by its EXIF orientation (as the official dataset reads it)."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def embed_face(image: Image.Image, arcface: torch.nn.Module, face_box: FaceBox) -> torch.Tensor | None:
    """The ArcFace embedding ``(512,)`` of the first face the detector finds in ``image`` (its box crop resized to
    112 x 112, as ``extract_ArcFace_embeds.py``), or None when it finds none."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    box = face_box(pixels)
    if box is None:
        return None
    with torch.no_grad():
        return arcface(crop_for_arcface(pixels, box))[0].float()


def embed_all(images: list[Image.Image], arcface: torch.nn.Module, face_box: FaceBox
              ) -> tuple[list[int], torch.Tensor]:
    """(indices of the images with a face, their embeddings ``(k, 512)``)."""
    kept, embeds = [], []
    for i, image in enumerate(images):
        embed = embed_face(image, arcface, face_box)
        if embed is not None:
            kept.append(i)
            embeds.append(embed)
    return kept, (torch.stack(embeds) if embeds else torch.empty(0, 512))


def train_image(image: Image.Image, size: int, generator: torch.Generator) -> torch.Tensor:
    """The official transform: shorter side to ``size`` (bilinear; the longer ``int(size * long / short)``), a
    random ``size`` crop (top, then left offset drawn from ``generator``), ``(3, size, size)`` in [-1, 1]."""
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    resized = image if new == (w, h) else image.resize(new, Image.BILINEAR)
    top = int(torch.randint(0, new[1] - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, new[0] - size + 1, (1,), generator=generator))
    arr = np.asarray(resized, dtype=np.float32)[top:top + size, left:left + size] / 255.0
    return torch.from_numpy((arr - 0.5) / 0.5).permute(2, 0, 1).contiguous()


def epoch_order(run_seed: int, identity: int, epoch: int, length: int) -> np.ndarray:
    """The dataset indices of ``epoch``'s steps (a permutation, as the official shuffling DataLoader)."""
    return np.random.default_rng(derive_seed(run_seed, "id-booth-epoch", identity, epoch)).permutation(length)


def step_batch(data: TrainingData, index: int, size: int, generator: torch.Generator) -> Batch:
    """Dataset item ``index``: instance photo ``index % photos`` and class image ``index % class images``."""
    photo, klass = index % len(data.photos), index % len(data.class_images)
    pixels = torch.stack([train_image(data.photos[photo], size, generator),
                          train_image(data.class_images[klass], size, generator)])
    faces = torch.stack([data.photo_embeds[photo], data.class_embeds[klass]])
    return Batch(pixels, data.prompt_embeds, faces)


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, folder), by step."""
    found = []
    for path in folder.glob("checkpoint-*-*"):
        parts = path.name.split("-")
        if len(parts) == 3 and parts[2].isdigit() and (path / STATE_FILE).is_file():
            found.append((int(parts[2]), path))
    return sorted(found)


def _save_checkpoint(folder: Path, epoch: int, step: int, unet: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     lr_scheduler: object, scaler: torch.amp.GradScaler | None) -> Path:
    final = folder / f"checkpoint-{epoch}-{step}"
    tmp = folder / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_lora(tmp, unet)
    torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {}}, tmp / TRAINING_STATE)
    (tmp / STATE_FILE).write_text(json.dumps({"epoch": epoch, "step": step}) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def finished_steps(folder: str | Path) -> int | None:
    """Steps a person's training already has: None when its LoRA is finished, else the latest checkpoint's (0
    without one)."""
    folder = Path(folder)
    if (folder / LORA_FILE).is_file():
        return None
    found = _checkpoints(folder)
    return found[-1][0] if found else 0


def train_person(models: Models, data: TrainingData, folder: str | Path, run_seed: int, identity: int,
                 plan: Plan, settings: StepSettings, resolution: int, lr: float = 1e-4,
                 lr_scheduler_name: str = "cosine", warmup_steps: int = 0, dtype: torch.dtype = torch.float32,
                 progress: Callable[[int, int, LossTerms], None] | None = None) -> Path:
    """Fine-tune ``models.unet``'s LoRA (already added, :func:`~.training.add_lora`) on one person, resuming from
    the latest complete checkpoint in ``folder``; return the finished LoRA file (reused when it exists).

    ``dtype`` float16 on CUDA trains as the official mixed precision does: frozen parts in float16, the LoRA in
    float32, the loss scaled (the scaler's state is part of a checkpoint)."""
    folder = Path(folder)
    done = folder / LORA_FILE
    if done.is_file():
        load_lora(models.unet, done)
        return done
    folder.mkdir(parents=True, exist_ok=True)
    optimizer = make_optimizer(lora_parameters(models.unet), lr=lr)
    lr_scheduler = make_lr_scheduler(optimizer, plan.total_steps, lr_scheduler_name, warmup_steps)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and models.vae.device.type == "cuda" else None
    start = 0
    if (found := _checkpoints(folder)):
        start, latest = found[-1]
        load_lora(models.unet, latest)
        state = torch.load(latest / TRAINING_STATE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    for step in range(start, plan.total_steps):
        epoch, k = divmod(step, plan.steps_per_epoch)
        index = int(epoch_order(run_seed, identity, epoch, data.length)[k])
        generator = torch.Generator().manual_seed(derive_seed(run_seed, "id-booth-step", identity, step))
        batch = step_batch(data, index, resolution, generator)
        terms = train_step(models, batch, generator, settings, optimizer, lr_scheduler, dtype, scaler)
        if progress is not None:
            progress(step + 1, plan.total_steps, terms)
        last_of_epoch = k == plan.steps_per_epoch - 1
        if last_of_epoch and ((epoch + 1) % plan.checkpoint_epochs == 0 or step + 1 == plan.total_steps):
            _save_checkpoint(folder, epoch, step + 1, models.unet, optimizer, lr_scheduler, scaler)
    tmp = folder / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_lora(tmp, models.unet)
    os.replace(tmp / LORA_FILE, done)
    shutil.rmtree(tmp, ignore_errors=True)
    return done


def plan_for(data: TrainingData, epochs: int, checkpoint_epochs: int) -> Plan:
    """The plan for ``data`` (``checkpoint_epochs`` capped at ``epochs``)."""
    return Plan(epochs, data.length, max(1, min(checkpoint_epochs, epochs)))


@dataclass
class ClassImages:
    """The prior-preservation images (generated once per run from the class prompt) that show a face, with
    their embeddings."""

    images: list[Image.Image]
    embeds: torch.Tensor


def class_images_with_faces(images: list[Image.Image], arcface: torch.nn.Module, face_box: FaceBox) -> ClassImages:
    """The class images the detector finds a face in (the official script pairs every class image with an
    embedding; one without a face has none, so it is left out here)."""
    kept, embeds = embed_all(images, arcface, face_box)
    if not kept:
        raise NoFaceError(f"none of the {len(images)} class images shows a face the detector finds: check the base "
                          "model and generator.class_prompt")
    return ClassImages([images[i] for i in kept], embeds)


def person_faces(name: str, photos: list[Image.Image], arcface: torch.nn.Module, face_box: FaceBox
                 ) -> tuple[list[int], torch.Tensor]:
    """:func:`embed_all` of a person's photos; :class:`NoFaceError` when none shows a face."""
    kept, embeds = embed_all(photos, arcface, face_box)
    if not kept:
        raise NoFaceError(f"person {name}: the face detector finds no face in any of their {len(photos)} photos; "
                          "add photos where the face is clearly visible, or remove the folder")
    return kept, embeds


def person_data(name: str, photos: list[Image.Image], classes: ClassImages, arcface: torch.nn.Module,
                face_box: FaceBox, prompt_embeds: torch.Tensor) -> TrainingData:
    """One person's training data: the photos the detector finds a face in, with their embeddings."""
    kept, embeds = person_faces(name, photos, arcface, face_box)
    return TrainingData([photos[i] for i in kept], embeds, classes.images, classes.embeds, prompt_embeds)
