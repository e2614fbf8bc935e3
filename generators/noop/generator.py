"""The no-op generator: tiny deterministic noise images at no cost, for rehearsing orchestration at scale.

A testing and benchmark tool (``bench/scale.py``, the scale tests), selected only by ``generator.kind: noop``:
its images show no face, so a run with it measures planning, scheduling, filtering, writing and resuming
without a model's cost. Image ``i`` is a function of ``seeds[i]`` alone (and the configured size).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from facefoundry.generators.base import GenerationOutput, ModelFiles, Resources, check_batch
from facefoundry.generators.noop.config import NoopConfig


class NoopGenerator:
    """``generate`` returns ``size`` x ``size`` uniform noise drawn from each image's seed; no model files."""

    name = "noop"
    resources = Resources(num_cpus=1.0)

    def __init__(self, cfg: NoopConfig | None = None):
        self.cfg = cfg or NoopConfig()

    @classmethod
    def model_files(cls, cfg: Any, model: str | None = None, base_model: str | None = None,
                    extra: str | None = None) -> list[ModelFiles]:
        """None: it loads nothing."""
        return []

    @classmethod
    def from_paths(cls, cfg: Any, model: str | None = None, base_model: str | None = None,
                   extra: str | None = None) -> NoopGenerator:
        """The generator (paths are ignored: there is nothing to load)."""
        return cls(cfg)

    def setup(self, device: Any = None, dtype: Any = None) -> None:
        """Nothing to load."""

    def extra_fields(self) -> list[pa.Field]:
        """None."""
        return []

    def generate(self, vectors: np.ndarray, seeds: np.ndarray,
                 variations: list[dict[str, Any]] | None = None) -> list[np.ndarray]:
        """One noise image per row of ``vectors`` (validated like a real generator's input), from its seed."""
        vectors = np.asarray(vectors)
        _, seeds = check_batch(vectors, seeds, variations, vectors.shape[1] if vectors.ndim == 2 else 0)  # any dim
        shape = (self.cfg.size, self.cfg.size, 3)
        return [np.random.default_rng(int(seed)).integers(0, 256, shape, dtype=np.uint8) for seed in seeds]

    def generate_output(self, vectors: np.ndarray, seeds: np.ndarray,
                        variations: list[dict[str, Any]] | None = None) -> GenerationOutput:
        """The images of :meth:`generate`; no extra columns."""
        return GenerationOutput(self.generate(vectors, seeds, variations))


def rehearsal_config(identities: int, per_identity: int = 1, identities_per_unit: int = 1, size: int = 8,
                     name: str = "rehearsal") -> dict[str, Any]:
    """A run config (raw mapping) that rehearses orchestration: the no-op generator, identities drawn without a
    separation rule (sampling costs next to nothing), and the dlib filter in ``annotate`` mode so every image is
    scored and kept (noise has no face). ``bench/scale.py`` and the scale tests use it."""
    return {
        "run": {"name": name, "seed": 0},
        "identities": {"sampler": "uniform_sphere", "count": identities, "max_cosine": None},
        "images": {"per_identity": per_identity},
        "generator": {"kind": "noop", "size": size},
        "filter": {"kind": "dlib", "mode": "annotate"},
        "output": {"identities_per_unit": identities_per_unit},
    }
