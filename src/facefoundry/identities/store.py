"""``identities.parquet``: the run's identity vectors, written once before generation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefoundry.config import RunConfig
from facefoundry.dataset.storage import RunStore, arrow_reader, open_store
from facefoundry.identities.leakage import LeakageResult
from facefoundry.identities.sampling import SamplingError, sample_identities
from facefoundry.identities.separation import nearest_neighbours, separation_summary
from facefoundry.layout import IDENTITIES_FILE

_META_KEY = b"facefoundry"


def identities_table(vectors: np.ndarray, sampler: str, leakage: LeakageResult | None = None) -> pa.Table:
    """One row per identity: vector, nearest other identity and, when screened, top-2 gallery cosines."""
    nn_cos, nn_idx = nearest_neighbours(vectors)
    n, dim = vectors.shape
    missing = pa.nulls(n, pa.float64())
    return pa.table(
        {
            "identity": pa.array(np.arange(n), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
            "norm": pa.array(np.linalg.norm(vectors, axis=1), pa.float32()),
            "nn_cosine": pa.array(nn_cos, pa.float64()),
            "nn_identity": pa.array(nn_idx, pa.int64()),
            "sampler": pa.array([sampler] * n, pa.string()),
            "gallery_top1": pa.array(leakage.top1, pa.float64()) if leakage else missing,
            "gallery_top2": pa.array(leakage.top2, pa.float64()) if leakage else missing,
            "possible_morph": pa.array(leakage.morph, pa.bool_()) if leakage else pa.nulls(n, pa.bool_()),
        }
    )


def write_identities(out: str | Path | RunStore, cfg: RunConfig, progress: TextIO | None = None) -> dict:
    """Sample and write ``identities.parquet`` unless a file of this run is already there.

    Returns the sampling summary (also stored in the file's metadata). The run refuses to go on if
    any pair of identities is closer than ``identities.max_cosine`` allows. Long sampling reports its
    progress to the ``progress`` stream, if given.
    """
    store = open_store(out)
    raw = store.read_bytes(IDENTITIES_FILE)
    if raw is not None:
        meta = read_metadata(arrow_reader(raw), store.name(IDENTITIES_FILE))
        if meta.get("config_hash") == cfg.config_hash():
            return meta
        raise RuntimeError(f"{store.name(IDENTITIES_FILE)} belongs to another config "
                           f"(hash {meta.get('config_hash')}); use a new --out")
    icfg = cfg.identities
    sampled = sample_identities(icfg, cfg.run.seed, progress)
    table = identities_table(sampled.vectors, icfg.sampler, sampled.leakage)
    nn = table.column("nn_cosine").to_numpy()
    if icfg.max_cosine is not None and len(nn) > 1 and nn.max() > icfg.max_cosine:
        pairs = int((nn > icfg.max_cosine).sum())
        raise SamplingError(
            f"identities: {pairs} identities have a neighbour closer than max_cosine {icfg.max_cosine} "
            f"(max cosine {nn.max():.6f}); for {icfg.sampler} raise the iterations, lower identities.count, "
            f"or set identities.max_cosine to null to accept it"
        )
    meta = {
        "config_hash": cfg.config_hash(),
        "sampler": icfg.sampler,
        "count": len(nn),
        "dim": icfg.dim,
        "candidates": sampled.candidates,
        "max_cosine": icfg.max_cosine,
        "space": icfg.space,
        "nn_cosine": separation_summary(nn),
        # Timings stay out: the file's bytes must be the same on every rerun of the run.
        "sampler_details": {k: v for k, v in sampled.details.items() if not k.startswith("seconds")},
        "leakage": sampled.leakage.summary() | {
            "rejected": sampled.details.get("leakage_rejected", 0),
            "max_cosine": icfg.leakage.max_cosine,
            "morph_cosine": icfg.leakage.morph_cosine,
        } if sampled.leakage else None,
    }
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta, sort_keys=True).encode()})
    with store.commit(IDENTITIES_FILE) as tmp:
        pq.write_table(table, tmp)
    return meta


def read_metadata(source: Path | pa.NativeFile, name: str | None = None) -> dict:
    """The sampling summary stored in an identities file (a path, or an open Arrow file named ``name``)."""
    raw = pq.read_schema(source).metadata or {}
    if _META_KEY not in raw:
        raise RuntimeError(f"{name or source} has no facefoundry metadata: not written by facefoundry, or corrupt")
    return json.loads(raw[_META_KEY])


def read_run_vectors(out: str | Path | RunStore) -> np.ndarray:
    """The identity vectors of the run in ``out`` (a folder or a remote URI); row i = identity i."""
    store = open_store(out)
    raw = store.read_bytes(IDENTITIES_FILE)
    if raw is None:
        raise FileNotFoundError(f"{store.name(IDENTITIES_FILE)} is missing: the run's identities were not written")
    return read_vectors(arrow_reader(raw))


def read_vectors(path: Path | pa.NativeFile, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Vectors of identities ``start..stop`` as a float32 (n, dim) array."""
    table = pq.read_table(path, columns=["identity", "vector"])
    table = table.slice(start, (stop - start) if stop is not None else None)
    col = table.column("vector").combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), col.type.list_size).astype(np.float32)
