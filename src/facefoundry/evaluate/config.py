"""The ``evaluate:`` section of a training config: the recipe of ``facefoundry evaluate RUN --train CONFIG``.

Defaults are the Vec2Face/HSFace recipe (IResNet-50, ArcFace m 0.5 s 64, SGD lr 0.1 momentum 0.9 wd 5e-4,
global batch 128, 26 epochs, LR / 10 at epochs 12, 20 and 24, fp16, horizontal flip + RandomErasing).
``configs/evaluate.yaml`` spells them out; ``configs/evaluate-tiny.yaml`` is the CPU test size.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from facefoundry.sections import ConfigError, StrictModel, read_yaml

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class HeadConfig(StrictModel):
    """Additive-margin softmax head over L2-normalised embeddings and class centres."""

    kind: Literal["arcface", "cosface"] = Field("arcface", description="arcface: cos(t + m); cosface: cos(t) - m.")
    margin: float = Field(0.5, ge=0.0, le=1.5, description="Margin m (ArcFace 0.5 rad; CosFace usually 0.35).")
    scale: float = Field(64.0, gt=0.0, description="Logit scale s (64 in both papers).")


class OptimizerConfig(StrictModel):
    """SGD with momentum; the learning rate is for the global batch."""

    lr: float = Field(0.1, gt=0.0, description="Base learning rate (after warmup).")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)


class ScheduleConfig(StrictModel):
    """Step schedule by epoch: the LR is multiplied by ``gamma`` at each milestone, after an optional linear warmup."""

    milestones: list[Annotated[int, Field(ge=1)]] = Field([12, 20, 24], description="Epochs where the LR drops.")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="LR factor at each milestone.")
    warmup_epochs: int = Field(0, ge=0, description="Linear warmup from ~0 to lr over this many epochs (by step).")

    @model_validator(mode="after")
    def _sorted(self) -> ScheduleConfig:
        if self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"schedule.milestones must be strictly increasing, got {self.milestones}")
        return self


class ErasingConfig(StrictModel):
    """RandomErasing as torchvision defines it (defaults = torchvision's): one rectangle set to ``value``."""

    p: Probability = Field(0.5, description="Probability of erasing a rectangle in an image.")
    scale: tuple[float, float] = Field((0.02, 0.33), description="Range of the erased area / image area.")
    ratio: tuple[float, float] = Field((0.3, 3.3), description="Range of the rectangle's aspect ratio h / w.")
    value: float = Field(0.0, description="Fill value in the normalised [-1, 1] space (0 = mid grey).")

    @model_validator(mode="after")
    def _ranges(self) -> ErasingConfig:
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment.erasing.scale must satisfy 0 < min <= max <= 1, got {list(self.scale)}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"augment.erasing.ratio must satisfy 0 < min <= max, got {list(self.ratio)}")
        return self


class AugmentConfig(StrictModel):
    flip_p: Probability = Field(0.5, description="Probability of a horizontal flip.")
    erasing: ErasingConfig | None = Field(
        default_factory=ErasingConfig, description="RandomErasing after normalisation; null = off."
    )


class EvaluateConfig(StrictModel):
    """Train-then-verify recipe: backbone, head, optimiser, schedule, augmentation, precision and scaling."""

    name: str = Field("iresnet50-arcface", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Training name: results go to <run>/eval/train/<name>/.")
    backbone: Literal["iresnet18", "iresnet50", "iresnet100"] = "iresnet50"
    widths: tuple[int, int, int, int] | None = Field(
        None, description="Channels per stage; null = standard (64, 128, 256, 512). Narrow = tiny test models."
    )
    embedding_size: int = Field(512, ge=2, description="Embedding (feature) dimension.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the embedding layer.")
    head: HeadConfig = Field(default_factory=HeadConfig)
    epochs: int = Field(26, ge=1)
    batch_size: int = Field(128, ge=1, description="Global batch: split evenly over the workers.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp16", description="Mixed precision on GPU (fp16 with a GradScaler); CPU runs always train in fp32."
    )
    workers: int = Field(1, ge=1, description="Ray Train workers (one GPU each when use_gpu).")
    use_gpu: bool = Field(False, description="One GPU per worker; DDP over NCCL (gloo on CPU).")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs Ray reserves for each training worker.")
    seed: int = Field(0, ge=0, description="Seeds weights, shuffling and augmentation.")
    image_size: Literal[112] = Field(112, description="Input size; IResNet's embedding layer expects 112 x 112.")
    kept_only: bool = Field(True, description="Train on rows whose filter_reason is null (or absent) only.")
    shuffle_buffer: int = Field(2048, ge=0, description="Rows in each worker's local shuffle buffer; 0 = file order.")

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if self.batch_size % self.workers:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by workers {self.workers}; "
                             "the global batch is split evenly")
        if self.schedule.milestones and self.schedule.milestones[-1] > self.epochs:
            raise ValueError(f"schedule.milestones {self.schedule.milestones} reach past epochs={self.epochs}")
        return self

    @property
    def depth(self) -> int:
        return int(self.backbone.removeprefix("iresnet"))

    def config_hash(self) -> str:
        """Hash of the recipe; the worker count and CPUs per worker are left out, so a killed training may resume on
        another number of workers (the global batch stays the same)."""
        content = self.model_dump(mode="json", exclude={"workers", "cpus_per_worker"})
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _format(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        path = "evaluate." + ".".join(str(p) for p in e["loc"]) if e["loc"] else "evaluate"
        if e["type"] == "extra_forbidden":
            model: type[StrictModel] = EvaluateConfig
            for part in e["loc"][:-1]:
                sub = model.model_fields[str(part)].annotation
                model = next((a for a in getattr(sub, "__args__", (sub,)) if isinstance(a, type)
                              and issubclass(a, StrictModel)), model)
            parts.append(f"{path}: unknown key; allowed: {', '.join(model.model_fields)}")
        else:
            parts.append(f"{path}: {e['msg']} (got {e.get('input')!r})")
    return f"{source}: " + "; ".join(parts)


def validate_evaluate(data: object, source: str = "config") -> EvaluateConfig:
    """Validate the ``evaluate:`` mapping; errors name the key path and what is allowed."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: evaluate: expected a mapping, got {type(data).__name__}")
    try:
        return EvaluateConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def load_evaluate_config(path: str | Path, overrides: list[str] | None = None) -> EvaluateConfig:
    """Read the ``evaluate:`` section of a YAML file; ``overrides`` are ``evaluate.key=value`` strings."""
    path = Path(path)
    data = read_yaml(path, overrides, what="training config")
    if not isinstance(data, dict) or "evaluate" not in data:
        raise ConfigError(f"{path}: no 'evaluate:' section (the training recipe lives under evaluate:)")
    others = sorted(set(data) - {"evaluate"})
    if others:
        raise ConfigError(f"{path}: unknown top-level key(s) {others}; a training config has only 'evaluate:'")
    return validate_evaluate(data["evaluate"], str(path))
