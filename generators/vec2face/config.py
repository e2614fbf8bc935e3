"""Vec2Face's config section (``generator.kind: vec2face``), with AttrOP's."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from facefoundry.models import hub_repo
from facefoundry.sections import StrictModel


class PoseTarget(StrictModel):
    """One entry of :attr:`AttrOpConfig.pose_schedule`: signed 6DRepNet yaw and, optionally, pitch (degrees)."""

    yaw: float = Field(..., ge=-90, le=90, description="Signed target yaw in degrees (6DRepNet's sign).")
    pitch: float | None = Field(None, ge=-90, le=90, description="Signed target pitch in degrees; null = no term.")


class AttrOpConfig(StrictModel):
    """Vec2Face AttrOP: Adam on each image's input vector toward identity similarity, quality and pose."""

    enabled: bool = Field(False, description="Run AttrOP on every image (costs up to max_iterations x 3 forwards).")
    max_iterations: int = Field(20, ge=0, le=1000, description="Cap on Adam steps per image (official: no cap).")
    lr: float = Field(0.1, gt=0, description="Adam learning rate on the input vector (official 0.1).")
    min_id_similarity: float = Field(
        0.7, ge=-1.0, le=1.0, description="Stop once cos(ArcFace(image), identity vector) reaches this (official)."
    )
    target_quality: float | None = Field(
        27.0, ge=0, description="MagFace feature-norm target (Vec2Face's AttrOP: 27); null = no quality term."
    )
    quality_tolerance: float = Field(1.0, ge=0, description="Accepted quality shortfall (official 1).")
    target_yaw: float | None = Field(None, ge=0, le=90, description="Target |yaw| in degrees; null = no pose term.")
    yaw_tolerance: float = Field(5.0, gt=0, description="Accepted |yaw| error, degrees (official 5).")
    pose_schedule: list[PoseTarget] | None = Field(
        None, min_length=1, description="Per-image signed pose targets: image k of every identity takes entry "
        "k mod len (e.g. [{yaw: 0}, {yaw: 30}, {yaw: -30}]); excludes target_yaw; null = none."
    )
    pitch_tolerance: float = Field(5.0, gt=0, description="Accepted pitch error, degrees (pose_schedule only).")
    models: str = Field(
        hub_repo("vec2face-face-models"), description="Hub id or folder holding "
        "weights/{arcface-r100,magface-r100}-glint360k.pth and weights/6DRepNet_300W_LP_AFLW2000.pth (tiny generator: "
        "built under <out>/models)."
    )


    @model_validator(mode="after")
    def _check_pose(self) -> AttrOpConfig:
        if self.pose_schedule is not None and self.target_yaw is not None:
            raise ValueError("generator.attrop: set either target_yaw (one |yaw| target for every image, the "
                             "official term) or pose_schedule (signed yaw/pitch per image index), not both")
        return self



class Vec2FaceConfig(StrictModel):
    kind: Literal["vec2face"] = "vec2face"
    checkpoint: str = Field(hub_repo("vec2face"), description="Hub id, local folder (holding `filename`) or file.")
    filename: str = Field("weights/vec2face_generator.pth", description="Checkpoint path inside the repo/folder.")
    revision: str | None = Field(None, description="Hub revision of `checkpoint`, for reproducibility.")
    state_dict_key: str = Field("model_vec2face", description="Entry of the checkpoint holding the state dict.")
    tiny: bool = Field(False, description="Build a tiny random checkpoint in the official format under <out>/models.")
    batch_size: int = Field(32, ge=1, description="Images per forward (micro-batch).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32"] = Field("auto", description="Vec2Face runs in float32 only.")
    mask_ratio_min: float = Field(0.1, gt=0, le=1, description="Truncated-normal mask ratio: minimum (official 0.1).")
    mask_ratio_max: float = Field(1.0, gt=0, le=1, description="Maximum (image_generation.py 1.0; demo 0.5).")
    mask_ratio_mu: float = Field(0.15, description="Mean of the truncated normal (official 0.15).")
    mask_ratio_std: float = Field(0.25, gt=0, description="Standard deviation (official 0.25).")
    output_size: int | None = Field(None, ge=16, description="Square size of stored images; null = native 112.")
    attrop: AttrOpConfig = Field(default_factory=AttrOpConfig)

    @model_validator(mode="after")
    def _check_ratios(self) -> Vec2FaceConfig:
        if self.mask_ratio_min > self.mask_ratio_max:
            raise ValueError("generator.mask_ratio_min must not exceed generator.mask_ratio_max")
        return self
