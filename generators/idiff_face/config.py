"""IDiff-Face's config section (``generator.kind: idiff_face``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from facefoundry.sections import StrictModel

DDIM_DEFAULT_STEPS = 50  # IDiff-Face sampler=ddim without generator.steps


class IDiffFaceConfig(StrictModel):
    """IDiff-Face (ICCV 2023): a latent DDPM conditioned on 512-d L2-normalised ElasticFace embeddings."""

    kind: Literal["idiff_face"] = "idiff_face"
    model: str = Field(
        "models/idiff-face/unet-cond-ca-bs512-150K-cpd25",
        description="Released model folder holding .hydra/config.yaml and checkpoints/ (manual download: "
        "`facefoundry models list`).",
    )
    checkpoint_file: str = Field(
        "checkpoints/ema_averaged_model.ckpt",
        description="State dict inside `model` (official sampling uses the EMA weights; checkpoints/model.ckpt "
        "is the non-EMA one).",
    )
    autoencoder: str = Field(
        "models/idiff-face/autoencoder",
        description="Folder holding first_stage_decoder_state_dict.pt (and optionally first_stage_config.yaml) of "
        "the CompVis ffhq256 VQ-f4 autoencoder.",
    )
    tiny: bool = Field(False, description="Build tiny random weights in the official layout under <out>/models.")
    sampler: Literal["ddpm", "ddim"] = Field(
        "ddpm", description="ddpm: the published ancestral sampler over all T steps; ddim: faster, `steps` steps."
    )
    steps: int | None = Field(
        None, ge=1,
        description=f"ddim: denoising steps (default {DDIM_DEFAULT_STEPS}); ddpm always runs the model's T "
        "(1000) steps.",
    )
    eta: float = Field(0.0, ge=0.0, le=1.0, description="ddim: noise scale (0 = deterministic DDIM).")
    guidance_scale: float | None = Field(
        None, description="Classifier-free guidance (the official CFG sampler); null = none, as the paper samples."
    )
    output_size: int | None = Field(None, ge=16, description="Square size of stored images; null = native 128.")
    batch_size: int = Field(16, ge=1, description="Images per denoising batch (micro-batch).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float32, the official sampling precision; float16/bfloat16 are faster on a GPU, "
        "and their images are not the official model's (rounding changes every denoising step).")
    revision: ClassVar[str | None] = None  # released on Google Drive, not on the Hub

    @model_validator(mode="after")
    def _check_sampler(self) -> IDiffFaceConfig:
        if self.sampler == "ddpm" and self.steps is not None:
            raise ValueError(f"generator.steps={self.steps} with generator.sampler=ddpm: the published DDPM "
                             "sampler runs all of the model's T steps; set generator.sampler=ddim to use fewer")
        if self.sampler == "ddpm" and self.eta != 0.0:
            raise ValueError("generator.eta applies to generator.sampler=ddim only")
        return self
