"""The generator protocol: identity vectors + per-image seeds (+ variations) -> RGB images.

Not diffusion-specific: diffusion models (Arc2Face, IDiff-Face, DCFace) and a masked autoencoder (Vec2Face) implement
it, each in its folder ``generators/<name>/`` beside the spec the rest of the code reads
(:mod:`facefoundry.generators.spec`). A batch may mix identities; image ``i`` is drawn from ``vectors[i]``,
``seeds[i]`` and ``variations[i]`` only, never from its position in the batch. Batched kernels may still round
differently than a batch of one: a few values of an image can differ by one grey level with the batch size.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import torch

from facefoundry.resources import ModelFiles, Resources

__all__ = ["IDENTITY_INDEX", "IDENTITY_VECTOR", "IMAGE_INDEX", "GenerationOutput", "Generator", "ModelFiles",
           "Resources"]

# Variation key every image gets from the pipeline: the identity vector it must show (before any
# perturbation). A generator that steers toward the identity (Vec2Face AttrOP) reads it; others ignore it.
IDENTITY_VECTOR = "identity_vector"
# Variation keys every image also gets: its identity (row of identities.parquet) and its index within the identity.
# A generator whose identities are more than a vector (DCFace's ID images) looks them up by IDENTITY_INDEX.
IDENTITY_INDEX = "identity_index"
IMAGE_INDEX = "image_index"


@dataclass
class GenerationOutput:
    """What a generator returns for a batch: the images and its own per-image columns.

    ``columns`` holds one sequence per field of the generator's :meth:`Generator.extra_fields`, one value per
    image; the pipeline appends them to the image rows with exactly those Arrow types, in that order.
    """

    images: list[np.ndarray]
    columns: dict[str, Sequence[Any] | pa.Array] = field(default_factory=dict)

    def arrays(self, fields: list[pa.Field]) -> dict[str, pa.Array]:
        """``columns`` as Arrow arrays of the declared ``fields`` (a missing or extra column is an error)."""
        if set(self.columns) != {f.name for f in fields}:
            raise ValueError(f"generator returned columns {sorted(self.columns)}, declared "
                             f"{[f.name for f in fields]}")
        for f in fields:
            if len(self.columns[f.name]) != len(self.images):
                raise ValueError(f"column {f.name} has {len(self.columns[f.name])} values for "
                                 f"{len(self.images)} images")
        return {f.name: pa.array(self.columns[f.name], f.type) for f in fields}


@runtime_checkable
class Generator(Protocol):
    """An identity-conditioned image generator (one folder each under ``generators/``, named by its spec).

    Class-level declarations read by the pipeline before any worker starts: ``resources`` (what one
    generator actor asks Ray for; ``ray.generator_gpus`` overrides the GPUs) and
    :meth:`model_files` (what ``setup`` will load, checked in the driver).
    """

    name: str
    resources: ClassVar[Resources]

    @classmethod
    def model_files(cls, cfg: Any, model: str | None = None, base_model: str | None = None,
                    extra: str | None = None) -> list[ModelFiles]:
        """The files :meth:`setup` loads for generator config ``cfg`` (paths override the config's)."""

    @classmethod
    def from_paths(cls, cfg: Any, model: str | None = None, base_model: str | None = None,
                   extra: str | None = None) -> Generator:
        """The generator, not yet set up, loading from these paths (Hub ids or folders; None = the config's)."""

    def setup(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Load weights onto ``device`` once per worker."""

    def extra_fields(self) -> list[pa.Field]:
        """The per-image columns :meth:`generate_output` adds to the image rows (may be empty)."""

    def generate(
        self, vectors: np.ndarray, seeds: np.ndarray, variations: list[dict[str, Any]] | None = None
    ) -> list[np.ndarray]:
        """Return one HxWx3 uint8 RGB array per row of ``vectors`` (float32, N x dim)."""

    def generate_output(
        self, vectors: np.ndarray, seeds: np.ndarray, variations: list[dict[str, Any]] | None = None
    ) -> GenerationOutput:
        """The images of :meth:`generate` and, per image, the columns of :meth:`extra_fields`."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# The weight files ``from_pretrained`` reads in a component folder: one of each tuple must exist (sharded
# checkpoints have an index instead).
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                        "pytorch_model.bin.index.json")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, on_cuda: str = "float16") -> torch.dtype:
    """The config's dtype; ``auto`` (or None) is float32 on CPU and ``on_cuda`` on CUDA (each generator passes the
    precision its official code samples in: its spec's ``precision_on_cuda``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return DTYPES[on_cuda] if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Reject NaN/inf or wrong-dimension identity vectors with a clear message (C-contiguous float32 out: a view with
    negative strides, such as ``vectors[::-1]``, cannot become a tensor)."""
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"identity vectors must have shape (N, {dim}), got {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        bad = np.where(~np.isfinite(arr).all(axis=1))[0][:5].tolist()
        raise ValueError(f"identity vectors contain NaN or inf (rows {bad})")
    return arr


def check_batch(
    vectors: np.ndarray, seeds: np.ndarray, variations: list | None, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one ``generate`` call's inputs: vectors (see :func:`check_vectors`), one seed and at most
    one variation per vector."""
    arr = check_vectors(vectors, dim)
    seeds = np.asarray(seeds).reshape(-1)
    if len(seeds) != len(arr):
        raise ValueError(f"got {len(arr)} vectors but {len(seeds)} seeds")
    if variations is not None and len(variations) != len(arr):
        raise ValueError(f"got {len(arr)} vectors but {len(variations)} variations")
    return arr, seeds


def load_plain_state_dict(path: Path, error: type[Exception], what: str = "") -> dict[str, torch.Tensor]:
    """A plain state dict from ``path`` with ``torch.load(weights_only=True)`` (no globals allowed; memory-mapped
    when the file is a zip archive); ``error`` with the path and the cause when it cannot be read as one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise error(f"cannot read {what}{' ' if what else ''}{path} as a weights-only state dict: {exc}") from exc
    if not isinstance(state, dict):
        raise error(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


def state_dict_mismatch(state: Any, expected: dict[str, torch.Tensor]) -> str | None:
    """None when ``state`` holds exactly ``expected``'s keys with its shapes; else what differs (a few of each
    kind named), for a loader's error message. ``state`` must be a dict of tensors."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "not a state dict of tensors"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
    if unexpected and all(k.startswith("module.") for k in unexpected):
        parts.append("keys start with 'module.': strip the DistributedDataParallel prefix")
    return "; ".join(parts) or None


def in_microbatches(
    n: int, batch_size: int, run: Callable[[int, int], list[np.ndarray]], device: torch.device | None
) -> list[np.ndarray]:
    """``run(start, stop)`` over ``[0, n)`` in micro-batches; a CUDA out-of-memory error halves the
    micro-batch and retries (down to one image) before it propagates. Safe because no image is drawn from its
    batch (see the module docstring for the rounding caveat)."""
    images: list[np.ndarray] = []
    step, start = max(1, int(batch_size)), 0
    while start < n:
        try:
            images += run(start, min(start + step, n))
        except torch.OutOfMemoryError:
            if step == 1:
                raise
            step = max(1, step // 2)
            if device is not None and device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        start += step
    return images
