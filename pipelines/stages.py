"""The pipeline's stages, each testable without Ray: generate a unit, filter it, write it.

A stage takes one work unit (a contiguous identity block) and returns a ``pa.Table`` of its image
rows; ``setup()`` loads models once per worker. Each stage declares what one of its workers needs
(:attr:`Stage.resources`, from its generator's or filters' class declarations and the ``ray.*``
settings), how many units it takes per call (:attr:`Stage.batch_size`) and its actor pool's size
(:attr:`Stage.workers`); ``pipelines.executor`` builds the Ray stage from that declaration alone.
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pyarrow as pa
from PIL import Image

from facefoundry.config import RunConfig
from facefoundry.dataset.manifest import Unit
from facefoundry.dataset.schema import image_struct
from facefoundry.dataset.shards import write_unit
from facefoundry.dataset.storage import open_store
from facefoundry.generators.registry import generator_class
from facefoundry.generators.spec import ModelPaths
from facefoundry.identities.variation import perturb, sigma_schedule
from facefoundry.pipelines.stage import Stage, UnitResult
from facefoundry.resources import ModelFiles, Resources
from facefoundry.runfolder.removal import REMOVED, read_removals, removed_labels, without_removed
from facefoundry.sections import AttributesConfig, ImagesConfig
from facefoundry.seeds import image_seeds


def identity_vectors(out: str):
    """The run's identity vectors (row i = identity i), from a run folder or a remote URI."""
    # Imported here: the identities package pulls in torch, which filter and writer actors never need
    # (it would cost each of them a second of start-up).
    from facefoundry.identities.store import read_run_vectors

    return read_run_vectors(out)


def build_generator(cfg: RunConfig, paths: ModelPaths):
    """The configured generator, not yet set up."""
    return generator_class(cfg.generator).from_paths(cfg.generator, paths.model, paths.base_model, paths.extra)


def generator_model_files(cfg: RunConfig, paths: ModelPaths) -> list[ModelFiles]:
    """The model files the configured generator will load from ``paths`` (checked before Ray starts)."""
    return generator_class(cfg.generator).model_files(cfg.generator, paths.model, paths.base_model, paths.extra)


def attributes_section(cfg: RunConfig, paths: ModelPaths | None) -> AttributesConfig | None:
    """What the attribute annotator loads: ``paths.attributes`` (``pipelines.runner.resolve_model_paths``, tiny
    builds resolved), else the config's own section, which names real files only when it is not tiny."""
    if paths is not None and paths.attributes is not None:
        return paths.attributes
    if cfg.attributes is not None and cfg.attributes.tiny:
        raise ValueError("attributes.tiny: the tiny build's files come with pipelines.runner.resolve_model_paths")
    return cfg.attributes


def generator_resources(cfg: RunConfig) -> Resources:
    """What a generator worker asks Ray for: the generator class's declaration with ``ray.generator_gpus`` GPUs
    (the generator stage's actors and a generator's preparation jobs alike)."""
    return generator_class(cfg.generator).resources.override("ray.generator_gpus", num_gpus=cfg.ray.generator_gpus)


def generator_threads(cfg: RunConfig, node_cpus: int | None) -> int:
    """torch threads for one generator actor: ``ray.generator_threads``, else the node's CPUs shared
    among the generator actors (Ray alone would pin an actor reserving 1 CPU to 1 thread)."""
    if cfg.ray.generator_threads:
        return cfg.ray.generator_threads
    return max(1, (node_cpus or 1) // cfg.ray.generator_actors)


def encode_image(array: np.ndarray, cfg: ImagesConfig) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    if cfg.format == "png":
        image.save(buf, format="PNG")
    else:
        image.save(buf, format="JPEG", quality=cfg.jpeg_quality)
    return buf.getvalue()


class GenerateStage(Stage):
    """Renders every image of a unit. Seeds come from (run seed, identity, image index) only. The columns
    are the image's own, then perturbation's, then the generator's ``extra_fields()``."""

    name = "generate"

    def __init__(self, cfg: RunConfig, out: str, paths: ModelPaths, batch_size: int = 1):
        super().__init__(cfg, batch_size)
        self.out, self.paths = out, paths
        self.generator = None

    @property
    def resources(self) -> Resources:
        return generator_resources(self.cfg)

    @property
    def workers(self) -> int:
        return self.cfg.ray.generator_actors

    def model_files(self) -> list[ModelFiles]:
        return generator_model_files(self.cfg, self.paths)

    def setup_worker(self, node_cpus: int | None) -> None:
        import torch

        torch.set_num_threads(generator_threads(self.cfg, node_cpus))

    def setup(self) -> None:
        if self.generator is not None:
            return
        from facefoundry.identities.store import IdentityVectors  # pulls in torch: not at the top (filter, writer)

        self.vectors = IdentityVectors(self.out)  # read by row group as units need them (2 GB whole at 10^6)
        self.generator = build_generator(self.cfg, self.paths)
        self.generator.setup()

    def __call__(self, unit: Unit) -> UnitResult:
        self.setup()
        per = self.cfg.images.per_identity
        identities = np.repeat(np.arange(unit.start, unit.stop, dtype=np.int64), per)
        indices = np.tile(np.arange(per, dtype=np.int32), unit.stop - unit.start)
        seeds = image_seeds(self.cfg.run.seed, identities, indices)
        vectors = self.vectors.rows(unit.start, unit.stop)[identities - unit.start]
        from facefoundry.generators.base import IDENTITY_INDEX, IDENTITY_VECTOR, IMAGE_INDEX

        # what each image must show (the vector before perturbation) and which image of which identity it is
        variations = [{IDENTITY_VECTOR: v, IDENTITY_INDEX: int(i), IMAGE_INDEX: int(j)}
                      for v, i, j in zip(vectors, identities, indices, strict=True)]
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
        output = self.generator.generate_output(vectors, seeds, variations)
        extra.update(output.arrays(self.generator.extra_fields()))
        ext = "png" if self.cfg.images.format == "png" else "jpg"
        data = [encode_image(img, self.cfg.images) for img in output.images]
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
        return UnitResult(unit, table, generated=len(output.images))


class FilterStage(Stage):
    """Scores (and in ``drop`` mode removes) a unit's images: the dlib filter (an independent judge),
    then, when ``id_filter`` is configured, the conditioning-encoder identity and quality filter, which
    decides last so its minimum-images-per-identity rule sees every earlier rejection; then, when
    ``attributes`` is configured, the attribute annotator adds its estimates to every row stored. Each filter
    writes its own ``reason_column``; a row is kept when none is set (:mod:`facefoundry.runfolder.rows`)."""

    name = "filter"

    def __init__(self, cfg: RunConfig, out: str, batch_size: int = 1, paths: ModelPaths | None = None):
        super().__init__(cfg, batch_size)
        self.out = out
        self.attributes = attributes_section(cfg, paths)  # the annotator's section, its model files resolved
        self.filters: list | None = None
        self.annotator = None

    @property
    def resources(self) -> Resources:
        """The filters' class declarations merged (they run one after the other in one worker)."""
        from facefoundry.filters.face_filter import FaceFilter

        resources = FaceFilter.resources
        if self.cfg.id_filter is not None:
            from facefoundry.filters.identity_filter import IdentityFilter

            resources = resources.merge(IdentityFilter.resources)
        if self.attributes is not None:
            from facefoundry.filters.attribute_annotator import AttributeAnnotator

            resources = resources.merge(AttributeAnnotator.resources)
        return resources

    @property
    def workers(self) -> int:
        return self.cfg.ray.filter_actors

    def model_files(self) -> list[ModelFiles]:
        """The ``id_filter``'s detector and encoder and the attribute models (the dlib filter's models ship with
        its package)."""
        needs = []
        if self.cfg.id_filter is not None:
            from facefoundry.filters.identity_filter import IdentityFilter

            needs += IdentityFilter.model_files(self.cfg.id_filter)
        if self.attributes is not None:
            from facefoundry.filters.attribute_annotator import AttributeAnnotator

            needs += AttributeAnnotator.model_files(self.attributes)
        return needs

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
        self.annotator = None
        if self.attributes is not None:
            from facefoundry.filters.attribute_annotator import AttributeAnnotator

            self.annotator = AttributeAnnotator(self.attributes)
            self.annotator.setup()
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
        if self.annotator is not None:  # last: it estimates the rows the filters kept, and drops none
            table = self.annotator.process(table).table
        return UnitResult(result.unit, table, result.generated, drops)


class WriteStage(Stage):
    """Commits a unit: shard first (atomic rename), manifest last. Returns the unit's manifest (a failed
    unit's is ``{"unit", "error"}``: nothing is written for it)."""

    name = "write"

    def __init__(self, cfg: RunConfig, out: str, file_metadata: dict, batch_size: int = 1):
        super().__init__(cfg, batch_size)
        self.uri, self.file_metadata = out, file_metadata
        self.out = None  # the store, opened once per worker (setup): a stage travels to its workers unopened
        self.removed: frozenset[int] = frozenset()  # identities taken out by `facefoundry remove` (setup)

    @property
    def resources(self) -> Resources:
        """A quarter CPU: writing is mostly waiting on the disk or the object store."""
        return Resources(num_cpus=0.25)

    @property
    def workers(self) -> int:
        return self.cfg.ray.writer_actors

    def setup(self) -> None:
        if self.out is None:
            self.out = open_store(self.uri)
            self.removed = removed_labels(read_removals(self.out))

    def failed(self, unit: Unit, error: str) -> dict:
        return {"unit": unit.name, "error": error}

    def __call__(self, result: UnitResult) -> dict:
        self.setup()
        # A unit written again after a takedown (run --repair) leaves the removed identities out, as the removal did.
        table, rows, accepted = without_removed(result.table, self.removed)
        drops = result.drops | ({REMOVED: accepted} if rows else {})  # no filter gives this reason
        return write_unit(
            self.out,
            result.unit,
            table,
            generated=result.generated,
            drops=drops,
            config_hash=self.cfg.config_hash(),
            file_metadata=self.file_metadata,
            row_group_size=self.cfg.output.row_group_size,
            compression=self.cfg.output.compression,
        )


def pipeline(cfg: RunConfig, out: str, paths: ModelPaths, file_metadata: dict, batch_size: int = 1) -> list[Stage]:
    """The stages a unit goes through, in order, each taking ``batch_size`` units per call."""
    return [GenerateStage(cfg, out, paths, batch_size), FilterStage(cfg, out, batch_size, paths),
            WriteStage(cfg, out, file_metadata, batch_size)]
