"""Build small, complete run folders without Ray or models, for tests of the finished-run tools."""

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
from facefoundry.runinfo import prepare_run_folder


def png(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_run(out: Path, identities: int = 4, per_identity: int = 3, per_unit: int = 2) -> Path:
    """A run folder as `facefoundry run` leaves it: run.json, identities.parquet, shards, manifests."""
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
            "identity": pa.array(ids, pa.int64()),
            "image_index": pa.array(idx, pa.int32()),
            "seed": pa.array(ids * 100 + idx, pa.int64()),
        })
        write_unit(out, unit, table, generated=len(ids), drops={}, config_hash=cfg.config_hash(),
                   file_metadata={"run_id": "fixture"})
    return out
