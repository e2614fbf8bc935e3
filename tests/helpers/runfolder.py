"""Build small, complete run folders without Ray: :func:`write_run` (the one builder: run.json, identities and
each unit's rows as the caller draws them, committed as the writer does; no models), :func:`make_run` (its
plainest use), and :func:`write_in_process` (the pipeline's own stages in this process), for a reference run that a
real run, killed and resumed or written elsewhere, must match byte for byte."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from facefoundry.config import RunConfig, validate_config
from facefoundry.dataset.manifest import Unit, plan_units
from facefoundry.dataset.schema import image_struct
from facefoundry.dataset.shards import write_unit
from facefoundry.identities.store import write_identities
from facefoundry.pipelines.runner import file_metadata, resolve_model_paths
from facefoundry.pipelines.stage import Stage
from facefoundry.pipelines.stages import pipeline
from facefoundry.runfolder.runinfo import prepare_run_folder


def png(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def rows_table(ids, idx, images: list[bytes], **columns) -> pa.Table:
    """A unit's rows as a shard holds them: ``image`` (named ``<identity>_<index>.png``), ``identity``,
    ``image_index``, ``seed`` (identity * 100 + index), then ``columns`` (Arrow arrays) in the order given."""
    ids, idx = np.asarray(ids, np.int64), np.asarray(idx, np.int32)
    return pa.table({
        "image": image_struct(images, [f"{i:07d}_{j:04d}.png" for i, j in zip(ids, idx, strict=True)]),
        "identity": pa.array(ids, pa.int64()),
        "image_index": pa.array(idx, pa.int32()),
        "seed": pa.array(ids.astype(np.int64) * 100 + idx, pa.int64()),
        **columns,
    })


def write_run(out: Path, config: dict | RunConfig, unit_rows: Callable[[Unit], tuple[pa.Table, int, dict]],
              metadata: Callable[[RunConfig], dict] | None = None) -> RunConfig:
    """A run folder as `facefoundry run` leaves it, without models or Ray: ``run.json`` and ``identities.parquet``
    for ``config`` (a raw mapping or a validated config), then per unit the rows ``unit_rows(unit)`` returns with its
    generated count and drop counts, committed by the writer's own ``write_unit`` (shard, then manifest; row groups
    of ``output.row_group_size``). The shards' ``facefoundry`` metadata is ``metadata(cfg)`` (default: the run's
    name as its id)."""
    cfg = config if isinstance(config, RunConfig) else validate_config(config)
    prepare_run_folder(out, cfg)
    write_identities(out, cfg)
    meta = metadata(cfg) if metadata else {"run_id": cfg.run.name}
    for unit in plan_units(cfg.identities.count, cfg.output.identities_per_unit):
        table, generated, drops = unit_rows(unit)
        write_unit(out, unit, table, generated=generated, drops=drops, config_hash=cfg.config_hash(),
                   file_metadata=meta, row_group_size=cfg.output.row_group_size)
    return cfg


def make_run(out: Path, identities: int = 4, per_identity: int = 3, per_unit: int = 2,
             string_identities: bool = False) -> Path:
    """A run of noise images, every row kept (the plainest :func:`write_run`). ``string_identities``: a malformed
    run whose shards' ``identity`` column holds strings (``"id0"``, ...)."""
    def unit_rows(unit: Unit) -> tuple[pa.Table, int, dict]:
        ids = np.repeat(np.arange(unit.start, unit.stop), per_identity)
        idx = np.tile(np.arange(per_identity), unit.stop - unit.start)
        table = rows_table(ids, idx, [png(int(i) * 1000 + int(j)) for i, j in zip(ids, idx, strict=True)])
        if string_identities:
            table = table.set_column(1, "identity", pa.array([f"id{i}" for i in ids]))
        return table, len(ids), {}

    write_run(out, {"run": {"name": "fixture"}, "identities": {"count": identities},
                    "images": {"per_identity": per_identity}, "output": {"identities_per_unit": per_unit}}, unit_rows)
    return out


def write_in_process(cfg, out: str | Path) -> list[dict]:
    """A finished run of ``cfg`` in ``out`` (a folder or a URI), the generator's preparation jobs and every unit
    through the same stages a Ray worker runs (set up the same way), in this process; the manifests. Tiny model
    builds go under ``out`` (a folder) or a temporary folder (a URI)."""
    import os
    import tempfile

    from facefoundry.dataset.storage import is_remote
    from facefoundry.generators.registry import spec_of
    from facefoundry.pipelines.prepare import run_job

    prepare_run_folder(out, cfg)
    write_identities(out, cfg)
    with tempfile.TemporaryDirectory(prefix="ffmodels-") as models:
        paths = resolve_model_paths(cfg, Path(models) if is_remote(out) else Path(out))
        for phase in spec_of(cfg.generator).preparation(cfg.generator, paths, cfg.run.seed, cfg.identities.count):
            for job in phase:  # what pipelines.prepare runs on Ray, one job after the other here
                run_job(cfg, job)
        stages: list[Stage] = pipeline(cfg, str(out), paths, file_metadata(cfg))
        for stage in stages:
            stage.setup_worker(os.cpu_count())
        manifests = []
        for unit in plan_units(cfg.identities.count, cfg.output.identities_per_unit):
            item = unit
            for stage in stages:
                item = stage(item)
            manifests.append(item)
    return manifests
