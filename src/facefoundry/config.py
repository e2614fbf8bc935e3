"""Typed run configuration: YAML presets, ``--set`` overrides, validation and the config hash.

A run is fully described by a :class:`RunConfig`. Its canonical JSON form (sorted keys, defaults
filled in) is hashed; the hash names the run and seeds every derived id, so two runs with the same
resolved config produce the same dataset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from facefoundry.attributes import (
    DEFAULT_AGE_EDGES,
    ESTIMATOR_ATTRIBUTES,
    FAIRFACE_AGES,
    fairface_age_lower,
    labels_of,
)
from facefoundry.identities.quotas import QuotaError, cell_targets

Cosine = Annotated[float, Field(ge=-1.0, le=1.0)]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key path and what is allowed."""


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class RunSection(StrictModel):
    name: str = Field("facefoundry", min_length=1, description="Human-readable run name.")
    seed: int = Field(0, ge=0, description="Run seed: every vector and image seed derives from it.")


class HyperFaceConfig(StrictModel):
    """Packing by gradient descent on the sphere (HyperFace, ICLR 2025)."""

    iterations: int = Field(100, ge=1, description="Iteration cap.")
    learning_rate: float = Field(0.02, gt=0, description="Step size of the projected gradient descent.")
    neighbours: int = Field(1, ge=1, description="Nearest neighbours of each point pushed away per step.")
    temperature: float = Field(0.01, gt=0, description="Softness of the max over neighbours (log-sum-exp).")
    alpha: float = Field(0.0, ge=0, description="Weight pulling points toward their nearest gallery vector.")
    batch_size: int | None = Field(
        None, ge=2, description="Points moved per step (stochastic variant for large N); null = all."
    )
    target_max_cosine: Cosine | None = Field(None, description="Stop once the max nearest-neighbour cosine <= this.")


class LeakageConfig(StrictModel):
    """Screening of sampled identities against galleries of real-face embeddings (same space)."""

    galleries: list[str] = Field(default_factory=list, description="Files (.npy or .parquet) of real embeddings.")
    max_cosine: Cosine = Field(0.3, description="Reject an identity whose cosine to any gallery vector exceeds this.")
    morph_cosine: Cosine = Field(
        0.25, description="Flag an identity whose top-2 gallery similarities both reach this (possible morph)."
    )
    reject_morphs: bool = Field(False, description="Also reject flagged possible morphs (else only record them).")
    backend: Literal["exact", "faiss"] = Field("exact", description="exact: blockwise; faiss: approximate (IVF).")
    nlist: int | None = Field(None, ge=1, description="faiss: IVF cells (default 4 x sqrt(gallery size)).")
    nprobe: int = Field(32, ge=1, description="faiss: cells searched per query (recall vs speed).")
    block_size: int = Field(65536, ge=1, description="Gallery vectors per block of the exact search.")


class IdentitiesConfig(StrictModel):
    sampler: Literal["gaussian_rejection", "uniform_sphere", "pca_gaussian", "hyperface", "from_file"] = (
        "gaussian_rejection"
    )
    count: int = Field(..., ge=1, description="Number of synthetic identities.")
    dim: int = Field(512, ge=2, description="Embedding dimension of the generator's identity space.")
    max_cosine: Cosine | None = Field(
        0.3, description="Separation rule: no pair of identities above this cosine; null = no rule (baseline)."
    )
    space: Literal["unit", "raw"] = Field(
        "unit", description="unit: L2-normalised vectors (Arc2Face); raw: scaled to `norm` (Vec2Face)."
    )
    norm: float = Field(1.0, gt=0, description="Vector norm in the `raw` space (Vec2Face: about 22).")
    max_candidates: int | None = Field(
        None, ge=1, description="Stop after this many candidates (default 1000 x count) and report."
    )
    gallery: str | None = Field(None, description="Embeddings (.npy/.parquet) for pca_gaussian and hyperface.")
    pca_components: int | None = Field(None, ge=1, description="PCA components kept by pca_gaussian (null = all).")
    file: str | None = Field(None, description="Vectors (.npy/.parquet) for the from_file sampler.")
    hyperface: HyperFaceConfig = HyperFaceConfig()
    leakage: LeakageConfig = LeakageConfig()

    @model_validator(mode="after")
    def _check_sampler_inputs(self) -> IdentitiesConfig:
        if self.sampler == "pca_gaussian" and not self.gallery:
            raise ValueError("identities.gallery is required by the pca_gaussian sampler (a .npy or .parquet file)")
        if self.sampler == "from_file" and not self.file:
            raise ValueError("identities.file is required by the from_file sampler (a .npy or .parquet file)")
        if self.sampler in ("gaussian_rejection", "pca_gaussian") and self.max_cosine is None:
            raise ValueError(f"identities.max_cosine must be set for the {self.sampler} sampler")
        self._check_separation()
        return self

    def _check_separation(self) -> None:
        """Separation rules no set of identities can meet (feasibility within the candidate budget is
        estimated when a run starts: facefoundry.identities.budget)."""
        t = self.max_cosine
        if t is None:
            return
        if t >= 1.0:
            raise ValueError(f"identities.max_cosine={t} allows every pair (a cosine is at most 1): use a value "
                             "in [0, 1) such as 0.3, or null for no separation rule")
        if t < 0.0:
            # n unit vectors with all pairwise cosines <= t < 0: |sum|^2 >= 0 gives n <= 1 - 1/t
            at_most = min(int(1 - 1 / t + 1e-9), self.dim + 1)
            raise ValueError(f"identities.max_cosine={t} is below 0: every identity would have to point away from "
                             f"all others, which at most {at_most} can (random directions in {self.dim} dimensions "
                             "have cosines near 0); use a value in [0, 1) such as 0.3")


class PerturbationConfig(StrictModel):
    """Vec2Face intra-class variation: Gaussian noise on the identity vector, rescaled to its norm."""

    sigmas: list[Annotated[float, Field(ge=0)]] = Field([0.3, 0.5, 0.7], min_length=1)
    weights: list[Annotated[float, Field(ge=0)]] = Field([0.4, 0.4, 0.2], min_length=1)
    reference_norm: float = Field(
        22.0, gt=0, description="Noise is added at this vector norm (Vec2Face's feature scale, about 22)."
    )

    @model_validator(mode="after")
    def _check_mixture(self) -> PerturbationConfig:
        if len(self.sigmas) != len(self.weights):
            raise ValueError(f"sigmas ({len(self.sigmas)}) and weights ({len(self.weights)}) differ in length")
        if abs(sum(self.weights) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got {sum(self.weights)}")
        return self


class ImagesConfig(StrictModel):
    per_identity: int = Field(..., ge=1, description="Images generated per identity.")
    perturbation: PerturbationConfig | None = Field(
        None, description="Per-image identity-vector perturbation (Vec2Face); null = vary only the seed."
    )
    format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)


class Arc2FaceConfig(StrictModel):
    kind: Literal["arc2face"] = "arc2face"
    model: str = Field("FoivosPar/Arc2Face", description="Hub id or folder holding arc2face/ and encoder/.")
    base_model: str = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
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
        "latent-consistency/lcm-lora-sdv1-5", description="sampler=lcm: Hub id or folder holding the LCM-LoRA file."
    )
    lcm_lora_weight_name: str = Field(
        "pytorch_lora_weights.safetensors", description="sampler=lcm: LoRA file name inside `lcm_lora`."
    )
    lcm_lora_revision: str | None = Field(None, description="Hub revision of `lcm_lora`, for reproducibility.")
    prompt: str = Field("photo of a id person", description="Prompt whose `id` token carries the identity.")
    output_size: int | None = Field(None, ge=16, description="Square size of stored images; null = native.")
    batch_size: int = Field(8, ge=1, description="Images per generator forward (micro-batch).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
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
        "BooBooWu/Vec2Face", description="Hub id or folder holding weights/{arcface-r100,magface-r100}-glint360k.pth "
        "and weights/6DRepNet_300W_LP_AFLW2000.pth (tiny generator: built under <out>/models)."
    )


    @model_validator(mode="after")
    def _check_pose(self) -> AttrOpConfig:
        if self.pose_schedule is not None and self.target_yaw is not None:
            raise ValueError("generator.attrop: set either target_yaw (one |yaw| target for every image, the "
                             "official term) or pose_schedule (signed yaw/pitch per image index), not both")
        return self



class Vec2FaceConfig(StrictModel):
    kind: Literal["vec2face"] = "vec2face"
    checkpoint: str = Field("BooBooWu/Vec2Face", description="Hub id, local folder (holding `filename`) or file.")
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
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    revision: ClassVar[str | None] = None  # released on Google Drive, not on the Hub

    @model_validator(mode="after")
    def _check_sampler(self) -> IDiffFaceConfig:
        if self.sampler == "ddpm" and self.steps is not None:
            raise ValueError(f"generator.steps={self.steps} with generator.sampler=ddpm: the published DDPM "
                             "sampler runs all of the model's T steps; set generator.sampler=ddim to use fewer")
        if self.sampler == "ddpm" and self.eta != 0.0:
            raise ValueError("generator.eta applies to generator.sampler=ddim only")
        return self


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
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    revision: ClassVar[str | None] = None  # released on Google Drive, not on the Hub

    @model_validator(mode="after")
    def _check_inputs(self) -> DCFaceConfig:
        if not self.tiny and (self.id_set is None or self.style_bank is None):
            raise ValueError("generator.id_set and generator.style_bank are required for the dcface generator "
                             "(build the ID set with `facefoundry dcface-ids`; the style bank is a folder of aligned "
                             "112x112 faces)")
        return self


class NoopConfig(StrictModel):
    """A testing and benchmark tool, never a dataset: tiny deterministic noise images made instantly, so a run
    measures the pipeline's orchestration alone (``bench/scale.py``). Only ``generator.kind: noop`` selects it."""

    kind: Literal["noop"] = "noop"
    size: int = Field(16, ge=1, le=512, description="Square size of the noise images, pixels.")

    # What the rest of the pipeline asks of every generator section. The card treats a noop run like a tiny
    # random-weight build (noise images, no published weights: a run that tests tooling only).
    tiny: ClassVar[bool] = True
    revision: ClassVar[str | None] = None

    @property
    def output_size(self) -> int:
        return self.size


GeneratorConfig = Annotated[Arc2FaceConfig | Vec2FaceConfig | IDiffFaceConfig | DCFaceConfig | NoopConfig,
                            Field(discriminator="kind")]


class DlibFilterConfig(StrictModel):
    kind: Literal["dlib"] = "dlib"
    mode: Literal["drop", "annotate"] = Field(
        "drop", description="drop: remove rejected images; annotate: keep them and record the reason."
    )
    detector: Literal["hog", "cnn"] = "hog"
    upsample: int = Field(1, ge=0, le=3, description="dlib detector upsampling passes (finds smaller faces).")
    min_face_score: float = Field(0.0, description="Minimum dlib detector score.")
    max_judge_distance: float = Field(
        0.6, gt=0.0, description="Max Euclidean distance of a face's dlib descriptor to its identity centroid."
    )
    judge_confusion_margin: float = Field(
        0.1, description="Min (distance to nearest other identity's centroid - own centroid distance) in the unit."
    )


class IdentityFilterConfig(StrictModel):
    """Thresholds of the identity/quality filter. Defaults marked "calibrate" have no published number for this
    use; they are reasoned starting points to be calibrated per generator and encoder (docs/filters.md)."""

    kind: Literal["identity"] = "identity"
    mode: Literal["drop", "annotate"] = Field(
        "drop", description="drop: remove rejected images; annotate: keep them and record the reason."
    )
    detector_model: str = Field(
        "models/antelopev2", description="SCRFD ONNX file or InsightFace pack folder (antelopev2, buffalo_l)."
    )
    encoder_model: str = Field(
        "models/arc2face/arcface.onnx",
        description="Conditioning encoder: ArcFace .onnx/pack folder (Arc2Face), or Vec2Face's R100 .pth (PyTorch).",
    )
    input_size: tuple[int, int] = Field(
        (256, 256), description="SCRFD input (width, height): 256 for generated/tight crops (Arc2Face #17, #31)."
    )
    det_thresh: float = Field(0.5, ge=0.0, le=1.0, description="SCRFD candidate threshold (insightface default).")
    min_face_score: float = Field(
        0.5, ge=0.0, le=1.0, description="Accept threshold on the face score (= det_thresh: off unless raised)."
    )
    min_face_size: float = Field(
        40.0, ge=0.0, description="Min shorter box side, px (calibrate; Vec2Face images are 112 px, faces ~70-100)."
    )
    min_blur: float = Field(
        10.0, ge=0.0, description="Min variance of Laplacian of the aligned 112 crop (calibrate; measured, see docs)."
    )
    max_yaw: float = Field(60.0, gt=0.0, le=90.0, description="Max |yaw|, degrees (approximate; calibrate).")
    max_pitch: float = Field(45.0, gt=0.0, le=90.0, description="Max |pitch|, degrees (approximate; calibrate).")
    max_roll: float = Field(45.0, gt=0.0, le=180.0, description="Max |roll|, degrees (calibrate).")
    min_feature_norm: float = Field(
        0.0, ge=0.0, description="Min raw embedding norm; 0 = off (norms are encoder-specific; calibrate)."
    )
    min_id_similarity: float = Field(
        0.4, ge=-1.0, le=1.0, description="Min cosine to the conditioning vector (ArcFace verification ~0.3-0.4)."
    )
    confusion_margin: float = Field(
        0.1, ge=-2.0, le=2.0, description="Min id_similarity - nearest_other_similarity (calibrate)."
    )
    duplicate_cosine: float = Field(
        0.95, ge=-1.0, le=1.0, description="Same-identity pairs above this cosine are near-duplicates (calibrate)."
    )
    min_images_per_identity: int = Field(
        2, ge=0, description="Identities keeping fewer accepted images are dropped (2: positive pairs exist)."
    )
    batch_size: int = Field(64, ge=1, description="Images per detector micro-batch and crops per encoder call.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when onnxruntime has it.")
    block_size: int = Field(65536, ge=1, description="Identity vectors per block of the nearest-other search.")


class AttributesConfig(StrictModel):
    """Per-image attribute estimates (gender, age group and, with FairFace, race): columns of every row, and what
    ``balance`` steers by. Estimates of a model, labelled as such on the card; never ground truth."""

    estimator: Literal["genderage", "fairface"] = Field(
        "genderage", description="genderage: InsightFace genderage.onnx; fairface: the FairFace ResNet-34 (race too)."
    )
    model: str = Field(
        "models/buffalo_l", description="genderage.onnx or an InsightFace pack folder holding it; FairFace: its .pt."
    )
    detector_model: str | None = Field(
        "models/antelopev2", description="genderage: SCRFD file or pack for the face box; null: the whole image is "
        "the face box (aligned crops). FairFace finds faces with dlib."
    )
    age_edges: list[Annotated[int, Field(gt=0)]] = Field(
        list(DEFAULT_AGE_EDGES), min_length=1, description="age_group boundaries in years: [20, 40, 60] gives "
        "0-19, 20-39, 40-59, 60+."
    )
    pose_model: str | None = Field(
        None, description="6DRepNet weights (Vec2Face's weights/6DRepNet_300W_LP_AFLW2000.pth, or a folder holding "
        "it): measured head pose per row (head_yaw, head_pitch, head_roll); null = not measured."
    )
    batch_size: int = Field(64, ge=1, description="Faces per estimator call.")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _check_edges(self) -> AttributesConfig:
        if list(self.age_edges) != sorted(set(self.age_edges)):
            raise ValueError(f"attributes.age_edges must increase strictly, got {self.age_edges}")
        if self.estimator == "fairface":
            starts = {fairface_age_lower(b) for b in FAIRFACE_AGES}
            if not set(self.age_edges) <= starts:
                raise ValueError(f"attributes.age_edges {self.age_edges}: FairFace estimates age in bins starting at "
                                 f"{sorted(starts)}; the edges must be among them")
        return self


class BalanceConfig(StrictModel):
    """Identities accepted by quota so that the estimated attributes meet target proportions (docs/balance.md)."""

    attributes: list[str] = Field(..., min_length=1, description="Attributes whose values form the cells.")
    targets: dict[str, dict[str, Annotated[float, Field(ge=0, le=1)]]] = Field(
        default_factory=dict, description="attribute -> value -> proportion (each sums to 1); cells are products."
    )
    cells: dict[str, Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, description='Joint targets instead: "female|20-39" -> proportion (values in `attributes` order).'
    )
    tolerance: float = Field(0.02, ge=0, le=1, description="Max |achieved - target| share of any cell.")
    oversample: float = Field(4.0, ge=1, description="Candidates sampled per identity kept, at most.")


FilterConfig = DlibFilterConfig


class OutputConfig(StrictModel):
    identities_per_unit: int = Field(8, ge=1, description="Identities per work unit (= per shard).")
    row_group_size: int = Field(100, ge=1, description="Rows per Parquet row group (Hub viewer: ~100).")
    compression: Literal["none", "zstd", "snappy"] = "zstd"


class RayConfig(StrictModel):
    address: str | None = Field(None, description="Ray cluster address; null = embedded local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded Ray (default: all).")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the embedded Ray (default: detected).")
    generator_actors: int = Field(1, ge=1, description="Generator actor pool size.")
    generator_gpus: float = Field(0.0, ge=0.0, description="GPUs per generator actor (0 on CPU).")
    generator_threads: int | None = Field(
        None, ge=1, description="torch CPU threads per generator actor; null = node CPUs / generator_actors."
    )
    filter_actors: int = Field(1, ge=1, description="Filter actor pool size.")
    writer_actors: int = Field(1, ge=1, description="Shard writer actor pool size (0.25 CPU each).")
    unit_retries: int = Field(2, ge=0, description="Retries of a failing unit per stage before it is recorded failed.")
    units_per_task: int | None = Field(
        None, ge=1, description="Work units per Ray task (one call of a stage's actor); null = auto "
        "(pipelines.stage.units_per_task: about 256 images' worth, at most 32, at least 4 tasks per actor)."
    )


# Keys added after runs existed, with the value that means "as before": at that value they are left out of the
# config hash, so a run made before the key existed resumes under the same id (dotted paths into the dump).
LATER_KEYS: dict[str, Any] = {
    "attributes": None,
    "balance": None,
    "generator.attrop.pose_schedule": None,
    "generator.attrop.pitch_tolerance": 5.0,
    "generator.controlnet": False,
    "generator.pose_images": None,
    "generator.controlnet_scale": 1.0,
}


class RunConfig(StrictModel):
    run: RunSection = RunSection()
    identities: IdentitiesConfig
    images: ImagesConfig
    generator: GeneratorConfig = Field(default_factory=Arc2FaceConfig)  # type: ignore[assignment]
    filter: FilterConfig = Field(default_factory=DlibFilterConfig)
    id_filter: IdentityFilterConfig | None = Field(
        None, description="Conditioning-encoder identity and quality filter (SCRFD + ArcFace ONNX); null = off."
    )
    attributes: AttributesConfig | None = Field(
        None, description="Attribute estimates per image (gender, age group, race); null = none."
    )
    balance: BalanceConfig | None = Field(None, description="Accept identities by attribute quota; null = off.")
    output: OutputConfig = OutputConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_generator_kind(cls, data: Any) -> Any:
        generator = data.get("generator") if isinstance(data, dict) else None
        if isinstance(generator, dict) and "kind" not in generator:
            data = {**data, "generator": {"kind": "arc2face", **generator}}
        return data

    @model_validator(mode="after")
    def _check_space(self) -> RunConfig:
        if self.generator.kind == "arc2face" and self.identities.space != "unit":
            raise ValueError("identities.space must be 'unit' for the arc2face generator (L2-normalised ArcFace)")
        if self.generator.kind == "idiff_face" and (self.identities.space != "unit" or self.identities.dim != 512):
            raise ValueError("identities.space must be 'unit' and identities.dim 512 for the idiff_face generator "
                             "(L2-normalised 512-d ElasticFace embeddings)")
        gen = self.generator
        if gen.kind == "dcface" and not gen.tiny:
            ident = self.identities
            if ident.sampler != "from_file" or ident.file is None or Path(ident.file) != Path(gen.id_set):
                raise ValueError("the dcface generator's identities are its ID set: set identities.sampler: from_file "
                                 f"and identities.file: {gen.id_set} (generator.id_set)")
            if ident.space != "unit":
                raise ValueError("identities.space must be 'unit' for the dcface generator (the ID set's unit vectors)")
        self._check_balance()
        if self.generator.kind == "vec2face" and self.identities.space != "raw":
            raise ValueError("identities.space must be 'raw' (identities.norm about 22) for the vec2face generator")
        return self

    def _check_balance(self) -> None:
        balance, attrs = self.balance, self.attributes
        if balance is None:
            return
        if attrs is None:
            raise ValueError("balance needs the attributes section (the estimator that measures the probes)")
        given = ESTIMATOR_ATTRIBUTES[attrs.estimator]
        for name in balance.attributes:
            if name not in given:
                raise ValueError(f"balance.attributes: {name!r} is not estimated by attributes.estimator "
                                 f"{attrs.estimator} (it gives {', '.join(given)})")
        if self.identities.sampler == "from_file":
            raise ValueError("balance chooses among sampled candidates; identities.sampler from_file gives none")
        try:
            targets = cell_targets(balance.attributes, balance.targets, balance.cells)
        except QuotaError as exc:
            raise ValueError(f"balance: {exc}") from None
        for cell in targets:
            for name, value in zip(balance.attributes, cell, strict=True):
                labels = labels_of(attrs.estimator, name, attrs.age_edges)
                if value not in labels:
                    raise ValueError(f"balance: {name} value {value!r} is not one the estimator gives "
                                     f"({', '.join(labels)})")

    def config_hash(self) -> str:
        """Hash of everything that decides the dataset's content. The ``ray`` section only decides where
        and how fast it runs, so a run can resume on another cluster (or laptop) under the same id."""
        content = self.model_dump(mode="json", exclude={"ray"})
        for path, default in LATER_KEYS.items():  # at its default, a later key hashes as before it existed
            *parents, key = path.split(".")
            node = content
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and key in node and node[key] == default:
                del node[key]
        return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _section_keys(loc: tuple) -> list[str]:
    """The keys allowed in the section at ``loc`` (for 'unknown key' messages)."""
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _strip_tag(loc: tuple) -> tuple[tuple, str]:
    """Pydantic puts a tagged union's tag in the path (generator.vec2face.steps): take it out."""
    if len(loc) >= 2 and loc[0] == "generator" and loc[1] in _GENERATORS:
        return ("generator", *loc[2:]), f" (generator.kind={loc[1]})"
    return loc, ""


_GENERATORS: dict[str, type[BaseModel]] = {"arc2face": Arc2FaceConfig, "vec2face": Vec2FaceConfig,
                                           "idiff_face": IDiffFaceConfig, "dcface": DCFaceConfig, "noop": NoopConfig}


def _format_error(err: ValidationError, source: str, overrides: dict[str, str] | None = None) -> str:
    """One line for all errors; an error at (or naming) a key given with ``--set`` is blamed on that --set."""
    parts, blamed = [], []
    for e in err.errors():
        loc, tag = _strip_tag(tuple(e["loc"]))
        path = ".".join(str(p) for p in loc) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = list(_GENERATORS[tag.split("=")[1][:-1]].model_fields) if tag and len(loc) == 2 else []
            allowed = allowed or _section_keys(loc[:-1])
            msg = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"must be one of {e['ctx']['expected']}"
        text = f"{path}{tag}: {msg} (got {e.get('input')!r})" if e["type"] != "missing" else f"{path}: {msg}"
        if e["type"] == "value_error":  # a model validator's own sentence names the keys and values
            text = msg.removeprefix("Value error, ")
        unknown = e["type"] == "extra_forbidden"
        culprit = next((t for k, t in (overrides or {}).items() if path == k or path.startswith(k + ".")
                        or (unknown and k.startswith(path + ".")) or f"{k}=" in msg or f"{k} " in msg), None)
        if culprit:
            blamed.append(f"--set {culprit!r}: {text}")
        else:
            parts.append(text)
    return "; ".join(([f"{source}: " + "; ".join(parts)] if parts else []) + blamed)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value``; the value is read as YAML (so 3, 0.5, true, null, [1,2] work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set {text!r}: empty key in path {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML: {exc}") from exc
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw config mapping (validation happens afterwards)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def validate_config(data: Any, source: str = "config", overrides: list[str] | None = None) -> RunConfig:
    """Validate a raw config mapping; errors name ``source``, or the ``--set`` override that caused them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        keys = {text.split("=", 1)[0].strip(): text for text in overrides or []}
        raise ConfigError(_format_error(err, source, keys)) from None


def read_yaml(path: str | Path, overrides: list[str] | None = None, what: str = "config file") -> Any:
    """A YAML file's content with ``--set`` overrides applied; one-line errors for a missing or bad file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return apply_overrides(data if data is not None else {}, overrides or [])


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML preset, apply ``--set`` overrides and validate."""
    return validate_config(read_yaml(path, overrides), str(path), overrides)
