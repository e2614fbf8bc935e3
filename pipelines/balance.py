"""A balanced run's identity selection: probe candidates, estimate their attributes, keep them by quota.

``identities.count * balance.oversample`` candidates are sampled with the configured sampler (so every pair of
them, and so of the identities kept, obeys the separation rule and the leakage screen). In candidate order,
chunk by chunk, each candidate gets one probe image (seed ``derive_seed(run seed, "probe", candidate)``: never a
dataset image's seed), the attribute annotator estimates it, and :class:`~facefoundry.identities.quotas.QuotaFill`
keeps it while its cell has room. Probing stops when every cell is full.

Each probed chunk is recorded in ``balance/probes-<first candidate>.parquet`` (atomically, with the config hash)
before the next one starts, so a killed run resumes from the last recorded chunk and keeps exactly the same
identities: decisions depend only on the candidates' estimates in candidate order. Probes run in the driver
process, on its device (as identity sampling does), before the stage workers start.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefoundry.config import RunConfig
from facefoundry.dataset.storage import RunStore, arrow_reader
from facefoundry.identities.quotas import Cell, QuotaFill, allocate, cell_name, cell_targets, marginals_of
from facefoundry.layout import BALANCE_DIR
from facefoundry.seeds import derive_seed

PROBE_CHUNK = 32  # candidates per probe record (the work lost to a kill, at most)
_META_KEY = b"facefoundry"
ATTRIBUTE_COLUMNS = ("age", "age_group", "age_score", "gender", "gender_score", "race", "race_score")


def candidate_count(cfg: RunConfig) -> int:
    """How many candidates a balanced run samples (at most this many are probed)."""
    return int(np.ceil(cfg.identities.count * cfg.balance.oversample))


def probe_seed(run_seed: int, candidate: int) -> int:
    return derive_seed(run_seed, "probe", candidate)


@dataclass
class Selection:
    """The candidates kept (in candidate order), their estimates as columns, and the summary for the card."""

    kept: np.ndarray
    columns: dict[str, pa.Array]
    summary: dict


def _record_name(start: int) -> str:
    return f"{BALANCE_DIR}/probes-{start:08d}.parquet"


def _read_record(store: RunStore, start: int, config_hash: str) -> pa.Table | None:
    raw = store.read_bytes(_record_name(start))
    if raw is None:
        return None
    table = pq.read_table(arrow_reader(raw))
    meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    if meta.get("config_hash") != config_hash:
        raise RuntimeError(f"{store.name(_record_name(start))} belongs to another config "
                           f"(hash {meta.get('config_hash')}); use a new --out")
    return table


def _write_record(store: RunStore, start: int, candidates: list[int], rows: list[dict | None], config_hash: str,
                  schema: pa.Schema) -> pa.Table:
    columns = {"candidate": pa.array(candidates, pa.int64()), "face": pa.array([r is not None for r in rows])}
    for f in schema:
        columns[f.name] = pa.array([r[f.name] if r else None for r in rows], f.type)
    table = pa.table(columns).replace_schema_metadata({_META_KEY: json.dumps({"config_hash": config_hash}).encode()})
    with store.commit(_record_name(start)) as tmp:
        pq.write_table(table, tmp)
    return table


class Prober:
    """Renders and estimates probe images of candidates (the generator and the annotator, loaded once)."""

    def __init__(self, cfg: RunConfig, paths):
        from facefoundry.filters.attribute_annotator import AttributeAnnotator
        from facefoundry.pipelines.stages import attributes_section, build_generator

        self.cfg = cfg
        self.generator = build_generator(cfg, paths)
        self.annotator = AttributeAnnotator(attributes_section(cfg, paths))
        self.schema = AttributeAnnotator.output_schema()

    def __call__(self, vectors: np.ndarray, candidates: list[int]) -> list[dict | None]:
        from facefoundry.generators.base import IDENTITY_INDEX, IDENTITY_VECTOR, IMAGE_INDEX

        self.generator.setup()
        seeds = np.array([probe_seed(self.cfg.run.seed, c) for c in candidates], np.int64)
        variations = [{IDENTITY_VECTOR: v, IDENTITY_INDEX: c, IMAGE_INDEX: 0}
                      for v, c in zip(vectors, candidates, strict=True)]
        images = self.generator.generate_output(vectors, seeds, variations).images
        return self.annotator.annotate(list(images))


def select_balanced(cfg: RunConfig, store: RunStore, vectors: np.ndarray, prober,
                    log: TextIO | None = None) -> Selection:
    """Probe ``vectors`` (the candidates, in order) chunk by chunk until the quotas are met; resume from records."""
    balance, config_hash = cfg.balance, cfg.config_hash()
    targets = cell_targets(balance.attributes, balance.targets, balance.cells)
    fill = QuotaFill(allocate(cfg.identities.count, targets))
    tables: list[pa.Table] = []
    started, probed_now = time.monotonic(), 0
    for start in range(0, len(vectors), PROBE_CHUNK):
        stop = min(start + PROBE_CHUNK, len(vectors))
        table = _read_record(store, start, config_hash)
        if table is None:
            candidates = list(range(start, stop))
            rows = prober(vectors[start:stop], candidates)
            table = _write_record(store, start, candidates, rows, config_hash, prober.schema)
            probed_now += stop - start
        tables.append(table)
        for row in table.to_pylist():
            cell = tuple(row[a] for a in balance.attributes)
            fill.offer(row["candidate"], cell if row["face"] and None not in cell else None)
        if log is not None:
            log.write(f"balance: {stop} of {len(vectors)} candidates probed ({probed_now} now, "
                      f"{time.monotonic() - started:.0f}s), {len(fill.kept)} of {cfg.identities.count} identities "
                      "kept\n")
            log.flush()
        if fill.complete:
            break
    kept, cells = fill.finish(targets, balance.tolerance)
    probes = pa.concat_tables(tables)
    by_candidate = {c: i for i, c in enumerate(probes.column("candidate").to_pylist())}
    rows = probes.take(pa.array([by_candidate[k] for k in kept], pa.int64()))
    columns = {"candidate": pa.array(kept, pa.int64())}
    columns |= {name: rows.column(name).combine_chunks() for name in ATTRIBUTE_COLUMNS}
    return Selection(np.asarray(kept, np.int64), columns, _summary(cfg, targets, fill, cells))


def _summary(cfg: RunConfig, targets: dict[Cell, float], fill: QuotaFill, cells: list[Cell]) -> dict:
    balance = cfg.balance
    counts: dict[str, int] = {}
    for cell in cells:
        counts[cell_name(cell)] = counts.get(cell_name(cell), 0) + 1
    return {
        "attributes": list(balance.attributes),
        "estimator": cfg.attributes.estimator,
        "target_cells": {cell_name(c): p for c, p in targets.items()},
        "achieved_cells": {cell_name(c): counts.get(cell_name(c), 0) / max(len(cells), 1) for c in targets},
        "target": balance.targets or None,
        "achieved": marginals_of(cells, balance.attributes),
        "tolerance": balance.tolerance,
        "candidates_sampled": candidate_count(cfg),
        "candidates_probed": fill.offered,
        "probes_without_face": fill.unknown,
    }


class BalanceSelector:
    """The :class:`facefoundry.identities.store.Selector` of a balanced run (the prober loads on first use)."""

    def __init__(self, cfg: RunConfig, store: RunStore, paths, log: TextIO | None = None):
        self.cfg, self.store, self.paths, self.log = cfg, store, paths, log
        self.candidates = candidate_count(cfg)

    def __call__(self, vectors: np.ndarray) -> Selection:
        return select_balanced(self.cfg, self.store, vectors, Prober(self.cfg, self.paths), self.log)
