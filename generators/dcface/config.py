"""DCFace's config section (``generator.kind: dcface``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from facefoundry.sections import StrictModel


class DCFaceConfig(StrictModel):
    """DCFace (CVPR 2023) mixing stage: an ID image and a style image per generated image, DDIM as released."""

    kind: Literal["dcface"] = "dcface"
    checkpoint: str = Field(
        "models/dcface/dcface_3x3.ckpt",
        description="The released PyTorch-Lightning checkpoint (dcface_3x3.ckpt or dcface_5x5.ckpt; manual download).",
    )
    use_ema: bool = Field(True, description="Sample with the EMA UNet (ema_model.averaged_model), as the release does.")
    id_set: str | None = Field(
        None, description="ID set Parquet from `facefoundry dcface-ids` (ID images + their vectors); the run's "
        "identities must be its vectors (identities.sampler: from_file, identities.file: the same file).",
    )
    style_bank: str | None = Field(
        None, description="Aligned 112x112 style images: a folder, or Parquet with an `image` column.",
    )
    style_provenance: Literal["real", "synthetic"] = Field(
        "real", description="What the style images are: real photos (the paper used CASIA-WebFace) or synthetic; "
        "stated on the card and per row.",
    )
    style_sampling: Literal["random", "list"] = Field(
        "random", description="random: the image seed picks a style; list: image index k takes style k (mod the "
        "bank size), the official `list` method.",
    )
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps (released: 50).")
    eta: float = Field(1.0, ge=0.0, le=1.0, description="DDIM noise (released: 1.0, stochastic).")
    tiny: bool = Field(False, description="Build tiny random weights, ID set and style bank under <out>/models.")
    output_size: int | None = Field(None, ge=16, description="Square size of stored images; null = native 112.")
    batch_size: int = Field(32, ge=1, description="Images per denoising batch (the official script: 256).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float32, the release's precision (use_fp16: False); float16/bfloat16 are faster on "
        "a GPU, and their images are not the official model's (rounding changes every DDIM step).")
    revision: ClassVar[str | None] = None  # released on Google Drive, not on the Hub

    @model_validator(mode="after")
    def _check_inputs(self) -> DCFaceConfig:
        if not self.tiny and (self.id_set is None or self.style_bank is None):
            raise ValueError("generator.id_set and generator.style_bank are required for the dcface generator "
                             "(build the ID set with `facefoundry dcface-ids`; the style bank is a folder of aligned "
                             "112x112 faces)")
        return self
