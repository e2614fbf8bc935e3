"""Shard writer: one Parquet file per work unit, committed atomically (``dataset.storage``), then its manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facefoundry.attributes import LABEL_COLUMNS
from facefoundry.dataset.manifest import DATA_DIR, Unit
from facefoundry.dataset.schema import with_hf_metadata
from facefoundry.dataset.storage import RunStore, open_store
from facefoundry.layout import manifest_file


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _column_stats(table: pa.Table) -> dict[str, dict[str, float]]:
    """Mean/min/max of the float score columns (for the report, without rescanning shards)."""
    stats = {}
    for field in table.schema:
        if pa.types.is_floating(field.type):
            values = table.column(field.name).to_numpy(zero_copy_only=False).astype(np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                stats[field.name] = {
                    "count": int(values.size),
                    "mean": float(values.mean()),
                    "min": float(values.min()),
                    "max": float(values.max()),
                }
    return stats


def _label_counts(table: pa.Table) -> dict[str, dict[str, int]]:
    """Rows per value of the attribute label columns present (null values are left out)."""
    counts = {}
    for name in LABEL_COLUMNS:
        if name in table.column_names:
            values = pc.value_counts(table.column(name).drop_null()).to_pylist()
            if values:
                counts[name] = {v["values"]: int(v["counts"]) for v in sorted(values, key=lambda v: v["values"])}
    return counts


def write_unit(
    out: str | Path | RunStore,
    unit: Unit,
    table: pa.Table,
    *,
    generated: int,
    drops: dict[str, int],
    config_hash: str,
    file_metadata: dict,
    row_group_size: int = 100,
    compression: str = "zstd",
) -> dict:
    """Write ``table`` as the unit's shard and then its manifest; return the manifest.

    Rows are sorted by (identity, image_index) so a shard's bytes do not depend on the order in
    which workers produced its images.
    """
    table = table.sort_by([("identity", "ascending"), ("image_index", "ascending")])
    table = table.replace_schema_metadata(with_hf_metadata(table.schema, file_metadata).metadata)
    store = open_store(out)
    shard = f"{DATA_DIR}/{unit.shard_name}"
    with store.commit(shard) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression=compression)
        size, sha256 = tmp.stat().st_size, sha256_file(tmp)
    identities = pc.unique(table.column("identity")).to_pylist() if table.num_rows else []
    manifest = {
        "unit": unit.name,
        "identity_start": unit.start,
        "identity_stop": unit.stop,
        "shard": shard,
        "rows": table.num_rows,
        "generated": generated,
        "identities_kept": len(identities),
        "drops": dict(sorted(drops.items())),
        "bytes": size,
        "sha256": sha256,
        "config_hash": config_hash,
        "stats": _column_stats(table),
    }
    labels = _label_counts(table)
    if labels:
        manifest["label_counts"] = labels
    # Last: the manifest is what makes the unit done (dataset.manifest).
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    store.put_bytes(manifest_file(unit.name), text.encode())
    return manifest
