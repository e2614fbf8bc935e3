"""``facefoundry verify RUN``: check a run folder's (or remote run's) integrity before it is published.

Every planned unit must have a manifest of this run and a shard whose size, sha256, row count and
schema agree with it; the identities file must belong to the run; nothing else may sit in ``data/``
or ``manifests/``; no removal may be left half done, and no shard may hold an identity that
``facefoundry remove`` took out. Problems are returned as one line each, naming the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefoundry.dataset.manifest import DATA_DIR, MANIFEST_DIR, plan_units, read_manifest
from facefoundry.dataset.schema import BASE_FIELDS
from facefoundry.dataset.storage import RunStore, arrow_reader, open_store
from facefoundry.identities.store import IDENTITIES_FILE, read_metadata
from facefoundry.layout import REMOVALS_FILE
from facefoundry.runfolder.removal import PENDING, RemovalError, read_removals, removed_labels
from facefoundry.runfolder.runinfo import RunFolderError, read_run


def check_identities(store: RunStore, config_hash: str, count: int) -> list[str]:
    """Problems of the run's identities file (missing, unreadable, another config's, wrong ids, NaN)."""
    raw = store.read_bytes(IDENTITIES_FILE)
    if raw is None:
        return [f"{IDENTITIES_FILE}: missing"]
    try:
        meta = read_metadata(arrow_reader(raw), IDENTITIES_FILE)
        table = pq.read_table(arrow_reader(raw), columns=["identity", "vector"])
    except (OSError, pa.ArrowException, RuntimeError, json.JSONDecodeError) as exc:
        return [f"{IDENTITIES_FILE}: unreadable: {exc}"]
    problems = []
    if meta.get("config_hash") != config_hash:
        problems.append(f"{IDENTITIES_FILE}: written for config {meta.get('config_hash')}, run is {config_hash}")
    if table.column("identity").to_pylist() != list(range(count)):
        problems.append(f"{IDENTITIES_FILE}: identities are not 0..{count - 1}")
    vectors = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    if not np.isfinite(vectors).all():
        problems.append(f"{IDENTITIES_FILE}: vectors contain NaN or inf")
    return problems


def check_removals(store: RunStore) -> tuple[list[str], frozenset[int]]:
    """Problems of the removal log (corrupt, or a removal a kill interrupted), and the labels removed for good."""
    try:
        entries = read_removals(store)
    except RemovalError as exc:
        return [str(exc)], frozenset()
    problems = [f"{REMOVALS_FILE}: the removal of {len(e['labels'])} identities begun {e.get('date')} was "
                "interrupted; `facefoundry remove RUN` (with no labels) or `facefoundry run --repair` finishes it"
                for e in entries if e.get("status") == PENDING]
    return problems, removed_labels(e for e in entries if e.get("status") != PENDING)


def _check_shard(manifest: dict, store: RunStore, name: str, lo: int, hi: int,
                 removed: frozenset[int] = frozenset()) -> tuple[list[str], pa.Schema | None]:
    data = store.read_bytes(name)
    if data is None:
        return [f"{name}: missing (its manifest exists)"], None
    if len(data) != manifest.get("bytes"):
        return [f"{name}: {len(data)} bytes, manifest says {manifest.get('bytes')}"], None
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        return [f"{name}: sha256 differs from its manifest (corrupt or modified)"], None
    try:
        parquet = pq.ParquetFile(arrow_reader(data))
        identities = parquet.read(columns=["identity"]).column("identity").to_numpy()
    except (OSError, pa.ArrowException) as exc:
        return [f"{name}: unreadable Parquet: {exc}"], None
    schema = parquet.schema_arrow
    problems = []
    if parquet.metadata.num_rows != manifest.get("rows"):
        problems.append(f"{name}: {parquet.metadata.num_rows} rows, manifest says {manifest.get('rows')}")
    missing = [f.name for f in BASE_FIELDS if f.name not in schema.names]
    if missing:
        problems.append(f"{name}: missing columns {missing}")
    mistyped = [f"{f.name} holds {schema.field(f.name).type}, not {f.type}" for f in BASE_FIELDS
                if f.name in schema.names and schema.field(f.name).type != f.type]
    if mistyped:
        problems.append(f"{name}: column {'; column '.join(mistyped)}")
        return problems, schema.remove_metadata()  # identities of another type cannot be compared with the unit
    if b"huggingface" not in (schema.metadata or {}):
        problems.append(f"{name}: no huggingface features metadata (images would not decode)")
    if len(identities) and (identities.min() < lo or identities.max() >= hi):
        problems.append(f"{name}: identities outside its unit [{lo}, {hi})")
    back = sorted(set(np.unique(identities).tolist()) & removed) if removed else []
    if back:
        problems.append(f"{name}: holds rows of identities removed by `facefoundry remove` ({back[:10]}); "
                        "`facefoundry run --repair` writes the unit again without them")
    return problems, schema.remove_metadata()


def verify_run(run_dir: str | Path) -> list[str]:
    """Return every integrity problem of the run folder or remote run URI (an empty list means it verifies).

    Every problem listed after a readable ``run.json`` is repaired by
    :func:`facefoundry.runfolder.repair.repair_command`; without one, the only problem is that it is not a run."""
    store = open_store(run_dir)
    try:
        cfg = read_run(store)
    except (RunFolderError, ValueError) as exc:
        return [str(exc)]
    config_hash = cfg.config_hash()
    problems = check_identities(store, config_hash, cfg.identities.count)
    removal_problems, removed = check_removals(store)
    problems += removal_problems
    units = plan_units(cfg.identities.count, cfg.output.identities_per_unit)
    schemas: dict[str, pa.Schema] = {}
    for unit in units:
        manifest = read_manifest(store, unit)
        if manifest is None:
            problems.append(f"{MANIFEST_DIR}/{unit.name}.json: missing or unreadable (unit not finished)")
            continue
        if manifest.get("config_hash") != config_hash:
            problems.append(f"{MANIFEST_DIR}/{unit.name}.json: belongs to config {manifest.get('config_hash')}")
            continue
        found, schema = _check_shard(manifest, store, f"{DATA_DIR}/{unit.shard_name}", unit.start, unit.stop,
                                     removed)
        problems += found
        if schema is not None:
            schemas[unit.shard_name] = schema
    if len({s.to_string() for s in schemas.values()}) > 1:
        first = next(iter(schemas))
        odd = [n for n, s in schemas.items() if not s.equals(schemas[first])]
        problems.append(f"{DATA_DIR}/: shards have different schemas ({', '.join(odd[:5])} differ from {first})")
    expected = {u.shard_name for u in units} | {f"{u.name}.json" for u in units}
    for folder in (DATA_DIR, MANIFEST_DIR):
        for name in sorted(store.sizes(folder)):
            if name not in expected:
                kind = "leftover temporary file" if name.startswith(".tmp-") else "orphan file (no planned unit)"
                problems.append(f"{folder}/{name}: {kind}")
    return problems
