"""Typed config sections (every one but the generator's) and the YAML reading they share.

Each generator's own section lives in its folder (``generators/<name>/config.py``); :mod:`facefoundry.config`
assembles them all into the :class:`~facefoundry.config.RunConfig` of a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from facefoundry.attributes import (
    DEFAULT_AGE_EDGES,
    FAIRFACE_AGES,
    fairface_age_lower,
)

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
        "the face box (aligned crops). FairFace: a .dat file is dlib's CNN (MMOD) detector, as its predict.py; "
        "anything else: dlib's HOG detector."
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
    tiny: bool = Field(False, description="Build a tiny random genderage.onnx and 6DRepNet under <out>/models "
                       "(model, detector_model and pose_model are then not read; the image is the face box).")

    @model_validator(mode="after")
    def _check_edges(self) -> AttributesConfig:
        if list(self.age_edges) != sorted(set(self.age_edges)):
            raise ValueError(f"attributes.age_edges must increase strictly, got {self.age_edges}")
        if self.tiny and self.estimator != "genderage":
            raise ValueError("attributes.tiny builds a tiny genderage estimator: set attributes.estimator=genderage")
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
        raise ConfigError(f"--set {text!r}: value is not valid YAML: {yaml_problem(exc)}") from None
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


def read_yaml(path: str | Path, overrides: list[str] | None = None, what: str = "config file") -> Any:
    """A YAML file's content with ``--set`` overrides applied; one-line errors for a missing or bad file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a {what} (give a YAML file)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); give a YAML {what}") from None
    except OSError as exc:  # unreadable: permissions, a device, ...
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    return apply_overrides(data if data is not None else {}, overrides or [])


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A parser error on one line: where (1-based line and column), what, and what was open there."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return " ".join(str(exc).split())
    where = f"line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
    opened = ""
    if exc.context and exc.context_mark is not None:
        opened = f" ({exc.context} at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
    return f"{where}: {exc.problem}{opened}"
