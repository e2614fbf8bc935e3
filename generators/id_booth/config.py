"""ID-Booth's config section (``generator.kind: id-booth``): the official defaults of ``configs/config_train_SD21.py``
(fine-tuning) and ``inference_ID-Booth.py`` (generation)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from facefoundry.models import hub_repo
from facefoundry.sections import StrictModel

BACKGROUNDS = ("forest", "city street", "beach", "office", "bus", "laboratory", "factory", "construction site",
               "hospital", "night club")  # inference_ID-Booth.py's backgrounds_list (besides "no background")
ARCFACE_DIR = "ArcFace_files"  # the official repository's folder for the ArcFace model
ARCFACE_FILE = "ArcFace_r100_ms1mv3_backbone.pth"  # the file name the official ArcFace_functions.py loads
NEGATIVE_PROMPT = ("cartoon, cgi, render, illustration, painting, drawing, black and white, bad body proportions, "
                   "landscape")


class IDBoothConfig(StrictModel):
    kind: Literal["id-booth"] = "id-booth"
    people: str | None = Field(
        None, description="Folder with one folder per consenting person: their photos and consent.yaml "
        "(tiny: built from photos that installed packages ship).")
    base_model: str = Field(hub_repo("sd21-base"),
                            description="Hub id or folder of the Stable Diffusion 2.1 base pipeline.")
    revision: str | None = Field(None, description="Hub revision (commit) of `base_model`, for reproducibility.")
    arcface: str | None = Field(
        None, description="ArcFace_r100_ms1mv3_backbone.pth (arcface_torch iresnet100, the file ID-Booth's "
        "ArcFace_files loads), or its folder.")
    mtcnn: str | None = Field(
        None, description="Folder holding MTCNN's pnet.pt, rnet.pt, onet.pt; null = facenet-pytorch's package data.")
    tiny: bool = Field(False, description="Build tiny random weights in the official layouts under <out>/models.")
    # fine-tuning (config_train_SD21.py)
    instance_prompt: str = "photo of sks person"
    class_prompt: str = "photo of a person"
    class_images: int = Field(200, ge=1, description="Prior-preservation images generated from class_prompt.")
    class_data: str | None = Field(
        None, description="Folder of class images used first (the official class_data_dir); the rest up to "
        "class_images are generated (tiny: built from a group photo).")
    class_steps: int = Field(50, ge=1, description="Sampling steps of a class image (the base pipeline's default).")
    prior_loss_weight: float = Field(1.0, ge=0.0)
    lora_rank: int = Field(4, ge=1, description="LoRA rank (alpha = rank) on the UNet attention projections.")
    learning_rate: float = Field(1e-4, gt=0.0)
    lr_scheduler: Literal["cosine", "constant", "linear", "cosine_with_restarts", "polynomial"] = "cosine"
    lr_warmup_steps: int = Field(0, ge=0)
    epochs: int = Field(32, ge=1, description="Epochs of max(photos, class_images) steps, batch 1.")
    checkpoint_epochs: int = Field(8, ge=1, description="A resumable checkpoint every this many epochs.")
    triplet_margin: float = Field(1.0, ge=0.0, description="Margin of the triplet identity loss (cosine distance).")
    timestep_weighting: bool = Field(True, description="Weight the triplet term by (1 - t/T)^2.")
    max_grad_norm: float = Field(1.0, gt=0.0)
    resolution: int = Field(512, ge=16, description="Training crops and generated images, pixels (square).")
    # generation (inference_ID-Booth.py)
    prompt: str = Field("face portrait photo of sks person",
                        description="The identity's prompt; the consent record's gender goes before 'sks person'.")
    negative_prompt: str = NEGATIVE_PROMPT
    backgrounds: list[str] = Field(list(BACKGROUNDS), description="', <b> background' appended (or none).")
    side_portrait: bool = Field(True, description="Half the images (by seed) say 'side-portrait' for 'portrait'.")
    steps: int = Field(30, ge=1, le=1000, description="DDPM steps.")
    guidance_scale: float = Field(5.0, ge=0.0)
    output_size: int | None = Field(None, ge=16, description="Square size of stored images; null = resolution.")
    batch_size: int = Field(4, ge=1, description="Images per generator forward (micro-batch).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on CUDA (the official mixed precision and inference), float32 on CPU.")
