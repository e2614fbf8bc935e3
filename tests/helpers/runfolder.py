"""Build small, complete run folders without Ray: :func:`make_run` (no models either), for tests of the
finished-run tools, and :func:`write_in_process` (the pipeline's own stages in this process), for a reference
run that a real run, killed and resumed or written elsewhere, must match byte for byte."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from facefoundry.config import validate_config
from facefoundry.dataset.manifest import plan_units
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


def make_run(out: Path, identities: int = 4, per_identity: int = 3, per_unit: int = 2,
             string_identities: bool = False) -> Path:
    """A run folder as `facefoundry run` leaves it: run.json, identities.parquet, shards, manifests.
    ``string_identities``: a malformed run whose shards' ``identity`` column holds strings (``"id0"``, ...)."""
    cfg = validate_config({
        "run": {"name": "fixture"},
        "identities": {"count": identities},
        "images": {"per_identity": per_identity},
        "output": {"identities_per_unit": per_unit},
    })
    prepare_run_folder(out, cfg)
    write_identities(out, cfg)
    for unit in plan_units(identities, per_unit):
        ids = np.repeat(np.arange(unit.start, unit.stop), per_identity)
        idx = np.tile(np.arange(per_identity), unit.stop - unit.start)
        table = pa.table({
            "image": image_struct([png(int(i) * 1000 + int(j)) for i, j in zip(ids, idx, strict=True)],
                                  [f"{i:07d}_{j:04d}.png" for i, j in zip(ids, idx, strict=True)]),
            "identity": pa.array([f"id{i}" for i in ids]) if string_identities else pa.array(ids, pa.int64()),
            "image_index": pa.array(idx, pa.int32()),
            "seed": pa.array(ids * 100 + idx, pa.int64()),
        })
        write_unit(out, unit, table, generated=len(ids), drops={}, config_hash=cfg.config_hash(),
                   file_metadata={"run_id": "fixture"})
    return out


def write_in_process(cfg, out: str | Path) -> list[dict]:
    """A finished run of ``cfg`` in ``out`` (a folder or a URI), every unit through the same stages a Ray worker
    runs (set up the same way), in this process; the manifests. Tiny model builds go under ``out`` (a folder)
    or a temporary folder (a URI)."""
    import os
    import tempfile

    from facefoundry.dataset.storage import is_remote

    prepare_run_folder(out, cfg)
    write_identities(out, cfg)
    with tempfile.TemporaryDirectory(prefix="ffmodels-") as models:
        paths = resolve_model_paths(cfg, Path(models) if is_remote(out) else Path(out))
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
