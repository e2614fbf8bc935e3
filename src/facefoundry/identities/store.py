"""``identities.parquet``: the run's identity vectors, written once before generation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefoundry.dataset.storage import RunStore, arrow_reader, open_store
from facefoundry.identities.leakage import LeakageResult
from facefoundry.identities.sampling import SamplingError, sample_identities
from facefoundry.identities.separation import nearest_neighbours, separation_summary
from facefoundry.layout import IDENTITIES_FILE

if TYPE_CHECKING:  # the run config is assembled above this layer (it holds the generators' sections)
    from facefoundry.config import RunConfig

_META_KEY = b"facefoundry"
# Rows per row group of identities.parquet (about 8 MB of 512-d vectors): a generator worker reads the groups
# its units fall in, never the whole file (2 GB at 10^6 identities).
IDENTITY_ROW_GROUP = 4096


class Selector(Protocol):
    """Chooses the identities among more sampled candidates (a balanced run: pipelines.balance)."""

    candidates: int

    def __call__(self, vectors: np.ndarray) -> Any:
        """-> an object with ``kept`` (candidate indices, increasing), ``columns`` (name -> Arrow array, one value
        per kept identity) and ``summary`` (JSON-able, stored in the file's metadata)."""


def identities_table(vectors: np.ndarray, sampler: str, leakage: LeakageResult | None = None,
                     extra: dict[str, pa.Array] | None = None) -> pa.Table:
    """One row per identity: vector, nearest other identity and, when screened, top-2 gallery cosines (then the
    ``extra`` columns)."""
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
            **(extra or {}),
        }
    )


def write_identities(out: str | Path | RunStore, cfg: RunConfig, progress: TextIO | None = None,
                     selector: Selector | None = None) -> dict:
    """Sample and write ``identities.parquet`` unless a file of this run is already there.

    Returns the sampling summary (also stored in the file's metadata). The run refuses to go on if
    any pair of identities is closer than ``identities.max_cosine`` allows. Long sampling reports its
    progress to the ``progress`` stream, if given. With a ``selector``, ``selector.candidates`` vectors are
    sampled and the identities are those it keeps, in candidate order.
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
    sampling = icfg if selector is None else icfg.model_copy(update={"count": selector.candidates})
    sampled = sample_identities(sampling, cfg.run.seed, progress)
    vectors, leakage, extra, selection = sampled.vectors, sampled.leakage, None, None
    if selector is not None:
        selection = selector(vectors)
        vectors, extra = vectors[selection.kept], selection.columns
        if leakage is not None:
            leakage = replace(leakage, **{k: getattr(leakage, k)[selection.kept]
                                          for k in ("top1", "top2", "leaked", "morph")})
    table = identities_table(vectors, icfg.sampler, leakage, extra)
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
        "balance": selection.summary if selection is not None else None,
        "leakage": leakage.summary() | {
            "rejected": sampled.details.get("leakage_rejected", 0),
            "max_cosine": icfg.leakage.max_cosine,
            "morph_cosine": icfg.leakage.morph_cosine,
        } if leakage else None,
    }
    commit_identities(store, table, meta)
    return meta


def commit_identities(out: str | Path | RunStore, table: pa.Table, meta: dict) -> None:
    """Write ``table`` as the run's ``identities.parquet`` with ``meta`` as its metadata, atomically (the same bytes
    for the same inputs: no timings in ``meta``)."""
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta, sort_keys=True).encode()})
    with open_store(out).commit(IDENTITIES_FILE) as tmp:
        pq.write_table(table, tmp, row_group_size=IDENTITY_ROW_GROUP)


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


class IdentityVectors:
    """The identity vectors of the run in ``out`` (a folder or a remote URI), read a row group at a time as
    :meth:`rows` asks for them: a worker holds the groups of the unit it is rendering, not the whole file.

    The file is opened only to read a group that is not held (no handle stays open between units)."""

    def __init__(self, out: str | Path | RunStore):
        self._store = open_store(out)
        with self._open() as fh:
            self._metadata = pq.ParquetFile(fh).metadata
        sizes = [self._metadata.row_group(g).num_rows for g in range(self._metadata.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # group g: rows starts[g]..starts[g+1]
        self._held: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _open(self) -> pa.NativeFile:
        try:
            return self._store.open_input(IDENTITIES_FILE)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self._store.name(IDENTITIES_FILE)} is missing: the run's identities were "
                                    "not written") from None

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Vectors of identities ``start..stop`` as a float32 (stop - start, dim) array."""
        if not 0 <= start < stop <= len(self):
            raise IndexError(f"identities {start}..{stop} are outside this run's 0..{len(self)}")
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        last = int(np.searchsorted(self._starts, stop, side="left")) - 1
        wanted = range(first, last + 1)
        missing = [g for g in wanted if g not in self._held]
        held = {g: self._held[g] for g in wanted if g in self._held}
        if missing:
            with self._open() as fh:
                table = pq.ParquetFile(fh, metadata=self._metadata).read_row_groups(missing, columns=["vector"])
            block = _vectors(table)
            offsets = np.cumsum([0] + [int(self._starts[g + 1] - self._starts[g]) for g in missing])
            held.update({g: block[offsets[k]:offsets[k + 1]] for k, g in enumerate(missing)})
        self._held = held  # only the groups this call needed stay in memory
        joined = np.concatenate([held[g] for g in wanted])
        return joined[start - self._starts[first]:stop - self._starts[first]]


def _vectors(table: pa.Table) -> np.ndarray:
    col = table.column("vector").combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), col.type.list_size).astype(np.float32)


def read_vectors(path: Path | pa.NativeFile, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Vectors of identities ``start..stop`` as a float32 (n, dim) array."""
    table = pq.read_table(path, columns=["identity", "vector"])
    return _vectors(table.slice(start, (stop - start) if stop is not None else None))
