"""Arc2Face's config section (``generator.kind: arc2face``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from facefoundry.models import hub_repo
from facefoundry.sections import StrictModel


class Arc2FaceConfig(StrictModel):
    kind: Literal["arc2face"] = "arc2face"
    model: str = Field(hub_repo("arc2face"), description="Hub id or folder holding arc2face/ and encoder/.")
    base_model: str = Field(
        hub_repo("sd15"),
        description="Hub id or folder holding the SD-1.5 tokenizer/, vae/ and scheduler/.",
    )
    revision: str | None = Field(None, description="Hub revision (commit) of `model`, for reproducibility.")
    tiny: bool = Field(
        False, description="Build tiny random weights in the official layout under <out>/models and load them."
    )
    steps: int = Field(25, ge=1, le=1000, description="Denoising steps (dpm default 25; lcm default 4, 1-8).")
    guidance_scale: float = Field(3.0, ge=0.0, description="CFG scale (dpm default 3.0; lcm default 1.0 = no CFG).")
    sampler: Literal["dpm", "lcm"] = Field(
        "dpm", description="dpm: DPM-Solver multistep (Arc2Face default); lcm: LCM-LoRA fused + LCMScheduler (fast)."
    )
    lcm_lora: str = Field(
        hub_repo("lcm-lora"), description="sampler=lcm: Hub id or folder holding the LCM-LoRA file."
    )
    lcm_lora_weight_name: str = Field(
        "pytorch_lora_weights.safetensors", description="sampler=lcm: LoRA file name inside `lcm_lora`."
    )
    lcm_lora_revision: str | None = Field(None, description="Hub revision of `lcm_lora`, for reproducibility.")
    prompt: str = Field("photo of a id person", description="Prompt whose `id` token carries the identity.")
    output_size: int | None = Field(None, ge=16, description="Square size of stored images; null = native.")
    batch_size: int = Field(8, ge=1, description="Images per generator forward (micro-batch).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on CUDA (as the official demo), float32 on CPU.")
    controlnet: bool = Field(
        False, description="Arc2Face's pose ControlNet (<model>/controlnet): every image follows a condition image "
        "from `pose_images` (tiny: a built folder)."
    )
    pose_images: str | None = Field(
        None, description="controlnet: folder of condition images (the official ones are rendered 3D-face normal "
        "maps); image k of every identity takes file k mod N in natural name order."
    )
    controlnet_scale: float = Field(
        1.0, ge=0.0, description="controlnet: ControlNet conditioning scale (official demo: diffusers' default 1.0)."
    )



    @model_validator(mode="after")
    def _check_controlnet(self) -> Arc2FaceConfig:
        if self.controlnet and self.pose_images is None and not self.tiny:
            raise ValueError("generator.controlnet=true needs generator.pose_images: a folder of condition images "
                             "(image k of every identity takes file k mod N), e.g. normal maps rendered from a 3D "
                             "face model as Arc2Face's demo does")
        if not self.controlnet and self.pose_images is not None:
            raise ValueError(f"generator.pose_images={self.pose_images!r} without generator.controlnet=true: the "
                             "condition images are read only by the pose ControlNet; set generator.controlnet=true "
                             "or remove pose_images")
        if not self.controlnet and self.controlnet_scale != 1.0:
            raise ValueError(f"generator.controlnet_scale={self.controlnet_scale} without generator.controlnet=true; "
                             "set generator.controlnet=true or remove controlnet_scale")
        return self

    @model_validator(mode="before")
    @classmethod
    def _lcm_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("sampler") == "lcm":
            data = {"steps": 4, "guidance_scale": 1.0, **data}  # LCM-LoRA's defaults unless set explicitly
        return data

    @model_validator(mode="after")
    def _check_lcm(self) -> Arc2FaceConfig:
        if self.sampler == "lcm" and self.steps > 8:
            raise ValueError(f"generator.steps={self.steps} with generator.sampler=lcm: LCM-LoRA is distilled for "
                             "1-8 steps (2-4 recommended); set generator.steps=4 or use generator.sampler=dpm")
        if self.sampler == "lcm" and self.guidance_scale > 2.0:
            raise ValueError(f"generator.guidance_scale={self.guidance_scale} with generator.sampler=lcm: LCM-LoRA "
                             "takes 1.0 (no CFG, one UNet pass) up to 2.0; set generator.guidance_scale=1.0")
        return self
