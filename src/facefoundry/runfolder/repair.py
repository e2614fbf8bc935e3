"""Bring a run folder back to what ``verify`` accepts, without deleting anything a user might want.

Two steps, both before a run decides which units are done:

- :func:`set_aside_orphans` (every rerun): a file in ``data/`` or ``manifests/`` that no planned unit
  owns (``data/train-9999999-extra.parquet``, a manifest of another unit size) would be read by
  ``datasets.load_dataset(data_dir=...)`` or flagged by ``verify``; it is moved to ``orphans/``.
- :func:`set_aside_corrupt` (``run --repair``): the done rule trusts a shard whose size matches its
  manifest, which is cheap on 15M images but blind to a flipped byte. Repair reads every shard and
  compares its sha256 with the manifest; a mismatching shard and its manifest go to ``orphans/``,
  so the unit is redone (its bytes are a function of the config, so the original comes back). An
  identities file that ``verify`` rejects is set aside the same way and sampled again.

``orphans/`` is never read by any tool nor published; delete it once satisfied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pyarrow.parquet as pq

from facefoundry.dataset.manifest import DATA_DIR, MANIFEST_DIR, Unit, UnitFiles, list_unit_files, read_manifest
from facefoundry.dataset.storage import RunStore, arrow_reader
from facefoundry.layout import ORPHANS_DIR
from facefoundry.runfolder.removal import without_removed


def repair_command(run_dir: str) -> str:
    """The exact command that repairs the run in ``run_dir`` (its config is read from ``run.json``)."""
    return f"facefoundry run --repair --out {run_dir}"


def move_aside(store: RunStore, rel: str) -> str:
    """Move the run file ``rel`` under ``orphans/`` (keeping its path, never overwriting); return where."""
    parent, _, name = rel.rpartition("/")
    folder = f"{ORPHANS_DIR}/{parent}".rstrip("/")
    existing = set(store.sizes(folder))
    candidate, n = name, 1
    while candidate in existing:
        candidate, n = f"{name}.{n}", n + 1
    dest = f"{folder}/{candidate}"
    store.move(rel, dest)
    return dest


def set_aside_orphans(store: RunStore, units: Iterable[Unit], files: UnitFiles | None = None) -> list[str]:
    """Move every file of ``data/`` and ``manifests/`` that no unit of ``units`` owns to ``orphans/``.

    ``files``: the run's :func:`~facefoundry.dataset.manifest.list_unit_files` (listed here when not given).
    Returns one line per file moved. Temporaries (``.tmp-*``) are left to ``remove_temporaries``."""
    units = list(units)
    files = list_unit_files(store) if files is None else files
    owned = {DATA_DIR: {u.shard_name for u in units}, MANIFEST_DIR: {f"{u.name}.json" for u in units}}
    lines = []
    for folder, names in owned.items():
        for name in sorted(files[folder]):
            if name in names or name.startswith(".tmp-"):
                continue
            dest = move_aside(store, f"{folder}/{name}")
            lines.append(f"{folder}/{name}: no planned unit owns it; moved to {dest}")
    return lines


def set_aside_corrupt(store: RunStore, units: Iterable[Unit], config_hash: str) -> list[str]:
    """Move each shard whose bytes disagree with its manifest (size or sha256), or that holds an identity
    ``facefoundry remove`` took out (an old copy put back), with its manifest, to ``orphans/`` so the unit is
    redone (without the removed identities). Returns one line per unit set aside."""
    from facefoundry.runfolder.verify import check_removals

    removed = check_removals(store)[1]
    lines = []
    for unit in units:
        manifest = read_manifest(store, unit)
        shard = f"{DATA_DIR}/{unit.shard_name}"
        if manifest is None or manifest.get("config_hash") != config_hash:
            continue  # not done: the run redoes it anyway
        data = store.read_bytes(shard)
        if data is None:
            continue  # not done either
        intact = len(data) == manifest.get("bytes") and hashlib.sha256(data).hexdigest() == manifest.get("sha256")
        if intact and not _holds(data, removed):
            continue
        moved = move_aside(store, f"{MANIFEST_DIR}/{unit.name}.json")  # the unit stops being done first
        dest = move_aside(store, shard)
        why = "sha256 differs from its manifest" if not intact else "holds rows of removed identities"
        lines.append(f"{shard}: {why}; moved to {dest} (manifest to {moved}), unit {unit.name} is redone")
    return lines


def _holds(data: bytes, labels: frozenset[int]) -> bool:
    """Whether the shard ``data`` has a row of one of ``labels``."""
    if not labels:
        return False
    return without_removed(pq.read_table(arrow_reader(data), columns=["identity"]), labels)[1] > 0


def set_aside_bad_identities(store: RunStore, config_hash: str, count: int) -> list[str]:
    """Move an identities file that ``verify`` rejects to ``orphans/`` so it is sampled again."""
    from facefoundry.identities.store import IDENTITIES_FILE
    from facefoundry.runfolder.verify import check_identities

    if store.read_bytes(IDENTITIES_FILE) is None:
        return []
    problems = check_identities(store, config_hash, count)
    if not problems:
        return []
    dest = move_aside(store, IDENTITIES_FILE)
    return [f"{problems[0]}; moved to {dest}, sampled again"]
