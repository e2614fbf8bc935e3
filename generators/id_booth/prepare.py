"""What an ID-Booth run does before it generates, as jobs a worker runs on its own: the class images (once per run),
then one fine-tuning per person (in parallel, one per GPU worker). Every job is resumable: a rerun keeps what a
killed one finished (class images one file at a time, fine-tuning from its last checkpoint).

Folder layout under the run's ``id-booth/`` folder::

    class-images/00000.png ...            prior-preservation images of generator.class_prompt
    loras/<identity>/person.json          the person's label and prompt gender word
    loras/<identity>/checkpoint-<e>-<s>/  resumable checkpoints (official naming and LoRA format)
    loras/<identity>/pytorch_lora_weights.safetensors   the finished LoRA (official format)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from facefoundry.generators.base import resolve_device, resolve_dtype
from facefoundry.generators.id_booth.config import IDBoothConfig
from facefoundry.generators.id_booth.finetune import (
    class_images_with_faces,
    open_rgb,
    person_data,
    plan_for,
    train_person,
)
from facefoundry.generators.id_booth.generator import PERSON_FILE, lora_folder
from facefoundry.generators.id_booth.people import Person
from facefoundry.generators.id_booth.tiny import ARCFACE_FILE
from facefoundry.generators.id_booth.training import FaceBox, Models, StepSettings, add_lora, mtcnn_face_box
from facefoundry.seeds import derive_seed

CLASS_DIR = "class-images"
LORA_DIR = "loras"


def class_image_paths(folder: Path) -> list[Path]:
    """The finished class images in ``folder``, by index."""
    return sorted(Path(folder).glob("[0-9][0-9][0-9][0-9][0-9].png"))


def make_class_images(cfg: IDBoothConfig, base: str, folder: str | Path, run_seed: int,
                      device: str | torch.device | None = None,
                      progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """``cfg.class_images`` images of ``cfg.class_prompt`` from the base pipeline with its own scheduler and
    defaults (as the official script makes its class images), image ``i`` from its own seed; files already there
    are kept, each new one is written atomically."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(cfg.class_images) if not (folder / f"{i:05d}.png").is_file()]
    if todo:
        device = resolve_device(device if device is not None else cfg.device)
        dtype = resolve_dtype(cfg.dtype, device, "float16")
        pipe = StableDiffusionPipeline.from_pretrained(base, dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False).to(device)
        pipe.set_progress_bar_config(disable=True)
        for done, i in enumerate(todo, start=1):
            gen = torch.Generator(device).manual_seed(derive_seed(run_seed, "id-booth-class", i))
            image = pipe(cfg.class_prompt, generator=gen, num_inference_steps=cfg.class_steps).images[0]
            tmp = folder / f".{i:05d}.png.tmp"
            image.save(tmp, format="PNG")
            os.replace(tmp, folder / f"{i:05d}.png")
            if progress is not None:
                progress(done, len(todo))
    return class_image_paths(folder)[: cfg.class_images]


def prompt_embeds(base: str, prompts: tuple[str, str], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The frozen text encoder's embeddings of the instance and class prompts, tokenised as the official script
    (padded to the tokenizer's maximum length, no attention mask)."""
    from transformers import AutoTokenizer, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(base, subfolder="tokenizer", use_fast=False)
    encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder").to(device, dtype)
    ids = tokenizer(list(prompts), truncation=True, padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        return encoder(ids)[0]


def load_models(cfg: IDBoothConfig, base: str, arcface: str, face_box: FaceBox, device: torch.device,
                dtype: torch.dtype) -> Models:
    """The frozen UNet (LoRA added later), VAE, DDPM scheduler and ArcFace of a fine-tuning job."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from facefoundry.faces.iresnet import load_arcface_r100

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet").to(device, dtype)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae").to(device, dtype).requires_grad_(False)
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    face_model = load_arcface_r100(arcface, device, filename=ARCFACE_FILE, fp16=True)
    return Models(unet, vae, scheduler, face_model, face_box)


def finetune_identity(cfg: IDBoothConfig, base: str, arcface: str, person: Person, identity: int, work: str | Path,
                      run_seed: int, face_box: FaceBox | None = None, device: str | torch.device | None = None,
                      progress: Callable[[int, int, Any], None] | None = None) -> Path:
    """Fine-tune identity ``identity`` (``person``) on the class images under ``work``; return its LoRA file.
    ``face_box``: the detector (default: MTCNN from ``cfg.mtcnn``, as the official code)."""
    work = Path(work)
    folder = lora_folder(work / LORA_DIR, identity)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PERSON_FILE).write_text(json.dumps({"name": person.name, "gender": person.consent.gender}) + "\n")
    device = resolve_device(device if device is not None else cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, "float16")
    face_box = face_box or mtcnn_face_box(cfg.mtcnn, device)
    models = load_models(cfg, base, arcface, face_box, device, dtype)
    add_lora(models.unet, cfg.lora_rank, derive_seed(run_seed, "id-booth-lora", identity))
    for p in models.unet.parameters():  # the official script keeps the trainable LoRA in float32
        if p.requires_grad:
            p.data = p.data.float()
    classes = class_images_with_faces([open_rgb(p) for p in class_image_paths(work / CLASS_DIR)], models.arcface,
                                      face_box)
    data = person_data(person.name, [open_rgb(p) for p in person.photos], classes, models.arcface, face_box,
                       prompt_embeds(base, (cfg.instance_prompt, cfg.class_prompt), device, dtype))
    settings = StepSettings(cfg.prior_loss_weight, cfg.triplet_margin, cfg.timestep_weighting, cfg.max_grad_norm)
    return train_person(models, data, folder, run_seed, identity, plan_for(data, cfg.epochs, cfg.checkpoint_epochs),
                        settings, cfg.resolution, lr=cfg.learning_rate, lr_scheduler_name=cfg.lr_scheduler,
                        warmup_steps=cfg.lr_warmup_steps, dtype=dtype, progress=progress)
