"""The pipeline's stages, each testable without Ray: generate a unit, filter it, write it.

A stage takes one work unit (a contiguous identity block) and returns a ``pa.Table`` of its image
rows; ``setup()`` loads models once per worker. ``pipelines.executor`` wraps them for Ray Data.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image

from facefoundry.config import ImagesConfig, RunConfig
from facefoundry.dataset.manifest import Unit
from facefoundry.dataset.schema import image_struct
from facefoundry.dataset.shards import write_unit
from facefoundry.dataset.storage import open_store
from facefoundry.identities.variation import perturb, sigma_schedule
from facefoundry.seeds import image_seeds

ATTROP_COLUMNS = {"attrop_iterations": pa.int32(), "attrop_converged": pa.bool_(),
                  "attrop_id_similarity": pa.float32(), "attrop_quality": pa.float32(), "attrop_yaw": pa.float32()}


def identity_vectors(out: str):
    """The run's identity vectors (row i = identity i), from a run folder or a remote URI."""
    # Imported here: the identities package pulls in torch, which filter and writer actors never need
    # (it would cost each of them a second of start-up).
    from facefoundry.identities.store import read_run_vectors

    return read_run_vectors(out)


@dataclass(frozen=True)
class ModelPaths:
    """Where the generator loads from: Hub ids or local folders (tiny builds live under <out>/models).

    Arc2Face: ``model`` holds arc2face/ and encoder/, ``base_model`` the SD-1.5 parts; Vec2Face:
    ``model`` is the checkpoint (Hub id, folder or file) and ``base_model`` is unused."""

    model: str
    base_model: str | None = None
    lcm_lora: str | None = None  # Arc2Face fast mode: the LCM-LoRA (tiny builds); None = generator.lcm_lora
    face_models: str | None = None  # Vec2Face AttrOP's models (tiny builds); None = generator.attrop.models


def build_generator(cfg: RunConfig, paths: ModelPaths):
    """The configured generator, not yet set up."""
    if cfg.generator.kind == "vec2face":
        from facefoundry.generators.vec2face import Vec2FaceGenerator

        # The config's own checkpoint (Hub id or path) is resolved by the generator; a tiny build is a file.
        return Vec2FaceGenerator(cfg.generator, None if paths.model == cfg.generator.checkpoint else paths.model,
                                 face_models=paths.face_models)
    from facefoundry.generators.arc2face import Arc2FaceGenerator

    return Arc2FaceGenerator(cfg.generator, paths.model, paths.base_model, paths.lcm_lora)


@dataclass
class UnitResult:
    """A unit's rows on their way to the writer, with what the filter removed."""

    unit: Unit
    table: pa.Table
    generated: int
    drops: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # set when a stage failed this unit after its retries: nothing is written

    @classmethod
    def failed(cls, unit: Unit, error: str) -> UnitResult:
        return cls(unit, pa.table({}), 0, {}, error)


def encode_image(array: np.ndarray, cfg: ImagesConfig) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    if cfg.format == "png":
        image.save(buf, format="PNG")
    else:
        image.save(buf, format="JPEG", quality=cfg.jpeg_quality)
    return buf.getvalue()


class GenerateStage:
    """Renders every image of a unit. Seeds come from (run seed, identity, image index) only."""

    def __init__(self, cfg: RunConfig, out: str, paths: ModelPaths):
        self.cfg, self.out, self.paths = cfg, out, paths
        self.generator = None

    def setup(self) -> None:
        if self.generator is not None:
            return
        self.vectors = identity_vectors(self.out)
        self.generator = build_generator(self.cfg, self.paths)
        self.generator.setup()

    def __call__(self, unit: Unit) -> UnitResult:
        self.setup()
        per = self.cfg.images.per_identity
        identities = np.repeat(np.arange(unit.start, unit.stop, dtype=np.int64), per)
        indices = np.tile(np.arange(per, dtype=np.int32), unit.stop - unit.start)
        seeds = image_seeds(self.cfg.run.seed, identities, indices)
        vectors = self.vectors[identities]
        # AttrOP (Vec2Face) steers each image toward its identity, not toward its perturbed vector.
        attrop = getattr(self.cfg.generator, "attrop", None)
        variations = [{"attrop_target": v} for v in vectors] if attrop is not None and attrop.enabled else None
        extra = {}
        pcfg = self.cfg.images.perturbation
        if pcfg is not None:
            sigmas = sigma_schedule(pcfg, per)[indices]
            moved = perturb(vectors, sigmas, seeds, pcfg)
            cosine = np.sum(moved * vectors, axis=1) / (np.linalg.norm(moved, axis=1) * np.linalg.norm(vectors, axis=1))
            extra = {
                "perturbation_sigma": pa.array(sigmas, pa.float32()),
                "vector_cosine": pa.array(cosine, pa.float32()),
            }
            vectors = moved
        images = self.generator.generate(vectors, seeds, variations)
        infos = getattr(self.generator, "last_info", None)
        if infos:  # Vec2Face: the mask each image was generated with, so it can be regenerated alone
            extra["mask_ratio"] = pa.array([i["mask_ratio"] for i in infos], pa.float32())
            extra["token_mask"] = pa.array([i["token_mask"] for i in infos], pa.string())
            if variations:  # what AttrOP did to each image
                for name, kind in ATTROP_COLUMNS.items():
                    extra[name] = pa.array([i[name] for i in infos], kind)
        ext = "png" if self.cfg.images.format == "png" else "jpg"
        data = [encode_image(img, self.cfg.images) for img in images]
        paths = [f"{i:07d}_{j:04d}.{ext}" for i, j in zip(identities, indices, strict=True)]
        table = pa.table(
            {
                "image": image_struct(data, paths),
                "identity": pa.array(identities, pa.int64()),
                "image_index": pa.array(indices, pa.int32()),
                "seed": pa.array(seeds, pa.int64()),
                **extra,
            }
        )
        return UnitResult(unit, table, generated=len(images))


class FilterStage:
    """Scores (and in ``drop`` mode removes) a unit's images: the dlib filter (an independent judge),
    then, when ``id_filter`` is configured, the conditioning-encoder identity and quality filter, which
    decides last so its minimum-images-per-identity rule sees every earlier rejection."""

    def __init__(self, cfg: RunConfig, out: str):
        self.cfg, self.out = cfg, out
        self.filters: list | None = None

    def setup(self) -> None:
        if self.filters is not None:
            return
        from facefoundry.filters.face_filter import FaceFilter

        filters = [FaceFilter(self.cfg.filter)]
        if self.cfg.id_filter is not None:
            from facefoundry.filters.identity_filter import IdentityFilter

            filters.append(IdentityFilter(self.cfg.id_filter, identity_vectors(self.out)))
        for f in filters:
            f.setup()
        self.filters = filters

    def __call__(self, result: UnitResult) -> UnitResult:
        """Each image is counted once in ``drops``, under the first reason that rejected it: a ``drop``
        filter removes its rejections before the next filter runs; an ``annotate`` filter's rows stay, so
        a later filter's reasons count only rows no earlier filter rejected. (A later ``drop`` filter
        after an ``annotate`` one may count an image under both reasons.)"""
        self.setup()
        table, drops = result.table, {}
        earlier: list[str] = []
        for f in self.filters:
            filtered = f.process(table)
            table = filtered.table
            if f.cfg.mode == "drop":
                counts = filtered.drops
            else:
                rejected_before = np.zeros(table.num_rows, dtype=bool)
                for column in earlier:
                    rejected_before |= table.column(column).is_valid().to_numpy(zero_copy_only=False)
                reasons = table.column(f.reason_column).to_pylist()
                counts = Counter(r for r, before in zip(reasons, rejected_before, strict=True) if r and not before)
            for reason, count in counts.items():
                drops[reason] = drops.get(reason, 0) + count
            earlier.append(f.reason_column)
        return UnitResult(result.unit, table, result.generated, drops)


class WriteStage:
    """Commits a unit: shard first (atomic rename), manifest last."""

    def __init__(self, cfg: RunConfig, out: str, file_metadata: dict):
        self.cfg, self.out, self.file_metadata = cfg, open_store(out), file_metadata

    def __call__(self, result: UnitResult) -> dict:
        return write_unit(
            self.out,
            result.unit,
            result.table,
            generated=result.generated,
            drops=result.drops,
            config_hash=self.cfg.config_hash(),
            file_metadata=self.file_metadata,
            row_group_size=self.cfg.output.row_group_size,
            compression=self.cfg.output.compression,
        )
