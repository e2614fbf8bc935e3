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

import numpy as np
import torch

from facefoundry.generators.base import resolve_device, resolve_dtype
from facefoundry.generators.id_booth.config import ARCFACE_DIR, ARCFACE_FILE, IDBoothConfig
from facefoundry.generators.id_booth.finetune import (
    class_images_with_faces,
    finished_steps,
    open_rgb,
    person_data,
    plan_for,
    train_person,
)
from facefoundry.generators.id_booth.generator import PERSON_FILE, lora_folder
from facefoundry.generators.id_booth.people import PHOTO_SUFFIXES, Person, natural_key
from facefoundry.generators.id_booth.training import LORA_FILE, FaceBox, Models, StepSettings, add_lora, mtcnn_face_box
from facefoundry.seeds import derive_seed

CLASS_DIR = "class-images"
LORA_DIR = "loras"


def class_image_paths(given: str | Path | None, folder: str | Path, count: int) -> list[Path]:
    """The run's class images: those of ``given`` (natural name order) first, then the generated ones in
    ``folder`` (``<index>.png``, numbered after them), ``count`` at most."""
    supplied = supplied_class_images(given, count)
    made = [Path(folder) / f"{i:05d}.png" for i in range(len(supplied), count)]
    return supplied + [p for p in made if p.is_file()]


def supplied_class_images(given: str | Path | None, count: int) -> list[Path]:
    """The first ``count`` images of the user's class-image folder (natural name order); none without one."""
    if given is None:
        return []
    folder = Path(given).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"generator.class_data folder {folder} does not exist: point it at a folder of class "
                                "images or remove it (the class images are then generated)")
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES),
                  key=lambda p: (natural_key(p.name), p.name))[:count]


def make_class_images(cfg: IDBoothConfig, base: str, folder: str | Path, run_seed: int, given: str | None = None,
                      device: str | torch.device | None = None,
                      progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """The class images: ``given``'s, then up to ``cfg.class_images`` generated from ``cfg.class_prompt`` by the
    base pipeline with its own scheduler (as the official script makes its class images), image ``i`` from its own
    seed; images already made are kept, each new one is written atomically."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    supplied = len(supplied_class_images(given, cfg.class_images))
    todo = [i for i in range(supplied, cfg.class_images) if not (folder / f"{i:05d}.png").is_file()]
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
    return class_image_paths(given, folder, cfg.class_images)


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


def arcface_file(path: str | Path | None) -> Path:
    """ID-Booth's ArcFace file: ``path`` itself, or ``ArcFace_files/<file>`` / ``<file>`` in a folder; a missing one
    is a FileNotFoundError saying where the file comes from."""
    from facefoundry.models import REGISTRY

    if path is None:
        raise FileNotFoundError(f"generator.arcface is not set: {REGISTRY['arcface-ms1mv3'].manual}")
    given = Path(path).expanduser()
    for candidate in (given, given / ARCFACE_DIR / ARCFACE_FILE, given / ARCFACE_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"ID-Booth's ArcFace {given} does not exist: {REGISTRY['arcface-ms1mv3'].manual}")


def load_models(cfg: IDBoothConfig, base: str, arcface: str, face_box: FaceBox, device: torch.device,
                dtype: torch.dtype) -> Models:
    """The frozen UNet (LoRA added later), VAE, DDPM scheduler and ArcFace of a fine-tuning job."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from facefoundry.faces.iresnet import load_arcface_r100

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet").to(device, dtype)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae").to(device, dtype).requires_grad_(False)
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    face_model = load_arcface_r100(arcface_file(arcface), device, fp16=True)
    return Models(unet, vae, scheduler, face_model, face_box)


def finetune_identity(cfg: IDBoothConfig, base: str, arcface: str, person: Person, identity: int, work: str | Path,
                      run_seed: int, class_data: str | None = None, face_box: FaceBox | None = None,
                      device: str | torch.device | None = None,
                      progress: Callable[[int, int, Any], None] | None = None) -> Path:
    """Fine-tune identity ``identity`` (``person``) on the class images under ``work``; return its LoRA file.
    ``face_box``: the detector (default: MTCNN from ``cfg.mtcnn``, as the official code)."""
    work = Path(work)
    folder = lora_folder(work / LORA_DIR, identity)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PERSON_FILE).write_text(json.dumps({"name": person.name, "gender": person.consent.gender}) + "\n")
    if finished_steps(folder) is None:  # finished before: nothing to load
        return folder / LORA_FILE
    device = resolve_device(device if device is not None else cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, "float16")
    face_box = face_box or mtcnn_face_box(cfg.mtcnn, device)
    models = load_models(cfg, base, arcface, face_box, device, dtype)
    add_lora(models.unet, cfg.lora_rank, derive_seed(run_seed, "id-booth-lora", identity))
    for p in models.unet.parameters():  # the official script keeps the trainable LoRA in float32
        if p.requires_grad:
            p.data = p.data.float()
    class_paths = class_image_paths(class_data, work / CLASS_DIR, cfg.class_images)
    classes = class_images_with_faces([open_rgb(p) for p in class_paths], models.arcface, face_box)
    data = person_data(person.name, [open_rgb(p) for p in person.photos], classes, models.arcface, face_box,
                       prompt_embeds(base, (cfg.instance_prompt, cfg.class_prompt), device, dtype))
    settings = StepSettings(cfg.prior_loss_weight, cfg.triplet_margin, cfg.timestep_weighting, cfg.max_grad_norm)
    return train_person(models, data, folder, run_seed, identity, plan_for(data, cfg.epochs, cfg.checkpoint_epochs),
                        settings, cfg.resolution, lr=cfg.learning_rate, lr_scheduler_name=cfg.lr_scheduler,
                        warmup_steps=cfg.lr_warmup_steps, dtype=dtype, progress=progress)


def class_images_job(config: dict, base: str, work: str, seed: int, class_data: str | None) -> str:
    """The run's class images (:func:`make_class_images`), as a pipeline preparation job; says how many."""
    cfg = IDBoothConfig.model_validate(config)
    return f"{len(make_class_images(cfg, base, Path(work) / CLASS_DIR, seed, class_data))} images"


def finetune_job(config: dict, base: str, work: str, seed: int, class_data: str | None, arcface: str, person: str,
                 identity: int) -> str:
    """One person's fine-tuning (:func:`finetune_identity`), as a pipeline preparation job; says whether it
    trained, resumed from a checkpoint or found the LoRA finished."""
    from facefoundry.generators.id_booth.people import Person, list_photos, read_consent

    cfg = IDBoothConfig.model_validate(config)
    folder = Path(person)
    who = Person(folder.name, folder, list_photos(folder), read_consent(folder))
    before = finished_steps(lora_folder(Path(work) / LORA_DIR, identity))
    steps: list[int] = []
    finetune_identity(cfg, base, arcface, who, identity, work, seed, class_data,
                      progress=lambda step, total, terms: steps.append(total))
    if before is None:
        return "finished before, kept"
    total = steps[-1] if steps else before
    return f"resumed at step {before} of {total}" if before else f"{total} steps"


def people_vectors(people: str | Path, arcface: str, mtcnn: str | None = None,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """Each person's identity vector, in ``read_people`` order: the L2-normalised mean of their photos'
    L2-normalised ArcFace embeddings (each the MTCNN box crop, as the official ``extract_ArcFace_embeds.py``); a
    person none of whose photos shows a face is refused."""
    from facefoundry.faces.iresnet import load_arcface_r100
    from facefoundry.generators.id_booth.finetune import person_faces
    from facefoundry.generators.id_booth.people import read_people

    everyone = read_people(people)  # consent records first: nothing is embedded for a folder without one
    model = load_arcface_r100(arcface_file(arcface), device, fp16=True)
    box = mtcnn_face_box(mtcnn, device)
    vectors = []
    for person in everyone:
        _, embeds = person_faces(person.name, [open_rgb(p) for p in person.photos], model, box)
        mean = torch.nn.functional.normalize(embeds, dim=1).mean(0)
        vectors.append(torch.nn.functional.normalize(mean, dim=0).cpu().numpy())
    return np.stack(vectors).astype(np.float32)
