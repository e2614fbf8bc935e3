"""Tiny random-weight ID-Booth models, saved in the official on-disk layouts.

Tests and the offline preset load these through the same calls as a real run against
``stabilityai/stable-diffusion-2-1-base`` and ID-Booth's ``ArcFace_files``::

    <root>/stable-diffusion-2-1-base/model_index.json                          StableDiffusionPipeline
    <root>/stable-diffusion-2-1-base/scheduler/scheduler_config.json           SD-2.1-base PNDM config (epsilon)
    <root>/stable-diffusion-2-1-base/tokenizer/{vocab.json, merges.txt, ...}  CLIPTokenizer (pad "!")
    <root>/stable-diffusion-2-1-base/text_encoder/{config.json, model.safetensors}           CLIPTextModel (gelu)
    <root>/stable-diffusion-2-1-base/unet/{config.json, diffusion_pytorch_model.safetensors} UNet2DConditionModel
    <root>/stable-diffusion-2-1-base/vae/{config.json, diffusion_pytorch_model.safetensors}  AutoencoderKL
    <root>/ArcFace_files/ArcFace_r100_ms1mv3_backbone.pth                      IResNet state dict (arcface_torch)

The UNet keeps SD-2.x's traits that the LoRA sees (linear projections in the transformer blocks, per-block head
dimensions, cross-attention on the text encoder's width); everything is shrunk (64 x 64 images, 2 blocks).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from facefoundry.generators.id_booth.config import ARCFACE_DIR, ARCFACE_FILE
from facefoundry.generators.tiny_weights import build_is_complete, write_clip_tokenizer, write_json

BASE_DIR = "stable-diffusion-2-1-base"
MARKER = ".facefoundry-tiny-id-booth.json"
FORMAT_VERSION = 1
WORDS = ("photo", "of", "a", "sks", "person", "face", "portrait", "side-portrait", "female", "male", "background")
SIZE = 64  # pixels of a tiny image
HIDDEN = 32

# stabilityai/stable-diffusion-2-1-base scheduler/scheduler_config.json (a PNDM config; 2.1-base predicts noise).
SD21_BASE_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def make_tiny_sd21(vocab_size: int, seed: int = 0) -> dict[str, Any]:
    """Tiny random UNet, CLIP text encoder and VAE with SD-2.1's traits, deterministic in ``seed``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=HIDDEN,
            attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32,
        )
        encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", projection_dim=HIDDEN,
            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=1,
        ))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=32, sample_size=SIZE, scaling_factor=0.18215,
        )
    return {"unet": unet.eval(), "text_encoder": encoder.eval(), "vae": vae.eval()}


def _model_index() -> dict[str, Any]:
    return {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.8.0",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def build_tiny_id_booth(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Build (once) the tiny SD-2.1-base and ArcFace under ``root``; return ``(base_model, arcface_file)``.

    Idempotent: a complete build with the same seed (its marker is written last) is reused; otherwise it is built
    in a temporary folder inside ``root`` and moved into place. The same seed gives byte-identical files.
    """
    from transformers.utils import logging as hf_logging

    from facefoundry.faces.tiny_face_models import tiny_iresnet

    root = Path(root)
    base, arcface = root / BASE_DIR, root / ARCFACE_DIR / ARCFACE_FILE
    if build_is_complete(root, MARKER, seed, FORMAT_VERSION):
        return base, arcface
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root))
    try:
        vocab = write_clip_tokenizer(tmp / BASE_DIR / "tokenizer", WORDS, pad_token="!")
        parts = make_tiny_sd21(len(vocab), seed)
        hf_logging.disable_progress_bar()
        for name, part in parts.items():
            part.save_pretrained(tmp / BASE_DIR / name)
        write_json(tmp / BASE_DIR / "scheduler" / "scheduler_config.json", SD21_BASE_SCHEDULER)
        write_json(tmp / BASE_DIR / "model_index.json", _model_index())
        (tmp / ARCFACE_DIR).mkdir()
        torch.save(tiny_iresnet(seed + 1).state_dict(), tmp / ARCFACE_DIR / ARCFACE_FILE)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        (root / MARKER).unlink(missing_ok=True)
        for name in (BASE_DIR, ARCFACE_DIR):
            if (root / name).exists():
                shutil.rmtree(root / name)
            os.replace(tmp / name, root / name)
        write_json(tmp / MARKER, {"format": FORMAT_VERSION, "seed": seed, "files": files})
        os.replace(tmp / MARKER, root / MARKER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base, arcface


PEOPLE_DIR = "id-booth-people"
CLASS_DIR = "id-booth-class-images"
PEOPLE_MARKER = ".facefoundry-tiny-id-booth-people.json"
# Real photos that installed packages ship (no face image is committed here): (package, path parts).
FIXTURE_PEOPLE = {
    "person-1": ("matplotlib", ("mpl-data", "sample_data", "grace_hopper.jpg")),
    "person-2": ("insightface", ("data", "images", "Tom_Hanks_54745.png")),
}
FIXTURE_CLASS_PHOTO = ("insightface", ("data", "images", "t1.jpg"))  # a group photo: its faces are the class images
T1_FACE_CENTRES = ((109, 330), (321, 211), (517, 333), (793, 409), (960, 131), (1181, 335))  # its six people
FIXTURE_CONSENT = ("subject: test fixture ({source}, a public photo shipped with the {package} package)\n"
                   "consented_to: none; a tooling rehearsal on tiny random weights whose images are noise and never a "
                   "dataset\ndate: 2026-12-07\n")


def package_file(package: str, parts: tuple[str, ...]) -> Path | None:
    """A data file of an installed package, found without importing it; None when absent."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location).joinpath(*parts)
        if path.is_file():
            return path
    return None


def _fixture_photo(package: str, parts: tuple[str, ...]) -> Path:
    path = package_file(package, parts)
    if path is None:
        raise FileNotFoundError(f"the tiny id-booth build takes its photos from installed packages and {package} "
                                f"does not ship {'/'.join(parts)}: pip install {package}")
    return path


def build_tiny_people(root: Path) -> tuple[Path, Path]:
    """Build (once) the tiny build's people and class images from photos that installed packages ship; return
    ``(people_folder, class_images_folder)``.

    Two people (:data:`FIXTURE_PEOPLE`), each with the photo and its mirror image and a consent record saying what
    they are (public photos used for a tooling rehearsal, not consent), and six class images: 192 x 192 crops around
    the faces of insightface's group photo. The same inputs give byte-identical files.
    """
    from PIL import Image, ImageOps

    root = Path(root)
    people, classes = root / PEOPLE_DIR, root / CLASS_DIR
    try:
        if json.loads((root / PEOPLE_MARKER).read_text()).get("format") == FORMAT_VERSION:
            return people, classes
    except (OSError, ValueError):
        pass
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-people-", dir=root))
    try:
        for name, (package, parts) in FIXTURE_PEOPLE.items():
            folder = tmp / PEOPLE_DIR / name
            folder.mkdir(parents=True)
            with Image.open(_fixture_photo(package, parts)) as photo:
                photo = photo.convert("RGB")
                photo.save(folder / "1.png")
                ImageOps.mirror(photo).save(folder / "2.png")
            (folder / "consent.yaml").write_text(FIXTURE_CONSENT.format(source=parts[-1], package=package))
        (tmp / CLASS_DIR).mkdir()
        with Image.open(_fixture_photo(*FIXTURE_CLASS_PHOTO)) as group:
            group = group.convert("RGB")
            for k, (x, y) in enumerate(T1_FACE_CENTRES):
                group.crop((x - 96, y - 96, x + 96, y + 96)).save(tmp / CLASS_DIR / f"{k:05d}.png")
        for name in (PEOPLE_DIR, CLASS_DIR):
            if (root / name).exists():
                shutil.rmtree(root / name)
            os.replace(tmp / name, root / name)
        write_json(root / PEOPLE_MARKER, {"format": FORMAT_VERSION})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return people, classes


def write_tiny_loras(base: Path, loras: Path, count: int, seed: int = 0) -> None:
    """What the fine-tuning stage leaves for identities ``0..count-1``, with random LoRA weights in the official
    format (and a ``person.json`` each): for tests and benches of generation alone."""
    from diffusers import UNet2DConditionModel

    from facefoundry.generators.id_booth.generator import PERSON_FILE, lora_folder
    from facefoundry.generators.id_booth.training import add_lora, lora_parameters, save_lora

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    add_lora(unet, rank=4, seed=seed)
    for identity in range(count):
        gen = torch.Generator().manual_seed(seed + identity)
        with torch.no_grad():
            for p in lora_parameters(unet):
                p.normal_(0, 0.3, generator=gen)
        folder = lora_folder(loras, identity)
        save_lora(folder, unet)
        write_json(folder / PERSON_FILE, {"name": f"person-{identity + 1}", "gender": None})
