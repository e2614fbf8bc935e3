"""``identities.parquet``: the run's identity vectors, written once before generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefoundry.config import RunConfig
from facefoundry.dataset.atomic import atomic_path
from facefoundry.identities.sampling import sample_identities
from facefoundry.identities.separation import nearest_neighbours, separation_summary

IDENTITIES_FILE = "identities.parquet"
_META_KEY = b"facefoundry"


def identities_table(vectors: np.ndarray, sampler: str) -> pa.Table:
    nn_cos, nn_idx = nearest_neighbours(vectors)
    dim = vectors.shape[1]
    return pa.table(
        {
            "identity": pa.array(np.arange(len(vectors)), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
            "norm": pa.array(np.linalg.norm(vectors, axis=1), pa.float32()),
            "nn_cosine": pa.array(nn_cos, pa.float64()),
            "nn_identity": pa.array(nn_idx, pa.int64()),
            "sampler": pa.array([sampler] * len(vectors), pa.string()),
        }
    )


def write_identities(out: Path, cfg: RunConfig) -> dict:
    """Sample and write ``identities.parquet`` unless a file of this run is already there.

    Returns the sampling summary (also stored in the file's metadata). The run refuses to go on if
    any pair of identities is closer than ``identities.max_cosine`` allows.
    """
    path = out / IDENTITIES_FILE
    if path.exists():
        meta = read_metadata(path)
        if meta.get("config_hash") == cfg.config_hash():
            return meta
        raise RuntimeError(f"{path} belongs to another config (hash {meta.get('config_hash')}); use a new --out")
    sampled = sample_identities(cfg.identities, cfg.run.seed)
    table = identities_table(sampled.vectors, cfg.identities.sampler)
    nn = table.column("nn_cosine").to_numpy()
    if len(nn) > 1 and nn.max() > cfg.identities.max_cosine:
        raise RuntimeError(
            f"identities: a pair has cosine {nn.max():.6f} > max_cosine {cfg.identities.max_cosine}"
        )
    meta = {
        "config_hash": cfg.config_hash(),
        "sampler": cfg.identities.sampler,
        "count": len(nn),
        "candidates": sampled.candidates,
        "max_cosine": cfg.identities.max_cosine,
        "space": cfg.identities.space,
        "nn_cosine": separation_summary(nn),
    }
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta, sort_keys=True).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return meta


def read_metadata(path: Path) -> dict:
    raw = pq.read_schema(path).metadata or {}
    if _META_KEY not in raw:
        raise RuntimeError(f"{path} has no facefoundry metadata: not written by facefoundry, or corrupt")
    return json.loads(raw[_META_KEY])


def read_vectors(path: Path, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Vectors of identities ``start..stop`` as a float32 (n, dim) array."""
    table = pq.read_table(path, columns=["identity", "vector"])
    table = table.slice(start, (stop - start) if stop is not None else None)
    col = table.column("vector").combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), col.type.list_size).astype(np.float32)
