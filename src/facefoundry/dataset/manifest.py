"""Work-unit manifests: ``manifests/<unit>.json`` is written after its shard and is the truth.

A unit is done iff its manifest parses, belongs to this run, and its shard exists with the
recorded size (``verify`` additionally checks the sha256). Anything else is redone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from facefoundry.dataset.storage import RunStore, open_store
from facefoundry.layout import DATA_DIR, MANIFEST_DIR, manifest_file, shard_file


@dataclass(frozen=True)
class Unit:
    """A contiguous block of identities ``[start, stop)`` with all their images."""

    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.start:07d}-{self.stop:07d}"

    @property
    def shard_name(self) -> str:
        return shard_file(self.name)


def plan_units(n_identities: int, per_unit: int) -> list[Unit]:
    return [Unit(s, min(s + per_unit, n_identities)) for s in range(0, n_identities, per_unit)]


def accepted_images(manifest: dict) -> int:
    """Images of a unit that passed every filter: generated minus rejected (by any reason, in either
    filter mode; in ``annotate`` mode rejected images are stored too, so rows can exceed this)."""
    return int(manifest.get("generated", 0)) - sum(int(n) for n in (manifest.get("drops") or {}).values())


def shard_path(out: Path, unit: Unit) -> Path:
    return out / DATA_DIR / unit.shard_name


def _parse(raw: bytes | None) -> dict | None:
    try:
        manifest = json.loads(raw) if raw is not None else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def read_manifest(out: str | Path | RunStore, unit: Unit) -> dict | None:
    return _parse(open_store(out).read_bytes(manifest_file(unit.name)))


def _agrees(manifest: dict | None, config_hash: str | None, shard_sizes: dict[str, int]) -> bool:
    """The done rule: a manifest of this run whose shard exists with the recorded size."""
    if manifest is None or manifest.get("config_hash") != config_hash:
        return False
    folder, _, name = str(manifest.get("shard", "")).partition("/")
    return folder == DATA_DIR and shard_sizes.get(name) == manifest.get("bytes")


def is_done(out: str | Path | RunStore, unit: Unit, config_hash: str) -> bool:
    store = open_store(out)
    size = store.size(f"{DATA_DIR}/{unit.shard_name}")
    return _agrees(read_manifest(store, unit), config_hash, {unit.shard_name: size} if size is not None else {})


UnitFiles = dict[str, dict[str, int]]  # DATA_DIR and MANIFEST_DIR -> {file name: size}


def list_unit_files(out: str | Path | RunStore) -> UnitFiles:
    """Every file of ``data/`` and ``manifests/`` with its size: one listing of each folder, which is all a
    resume needs to see of the store (pass it on rather than listing again: on an object store a listing of
    10^5 units is 100 requests)."""
    store = open_store(out)
    return {folder: store.sizes(folder) for folder in (DATA_DIR, MANIFEST_DIR)}


def finished_manifests(out: str | Path | RunStore, config_hash: str | None, files: UnitFiles | None = None
                       ) -> list[dict]:
    """Manifests of every done unit of the run in ``out``, in identity order (leftover temporaries,
    corrupt manifests, other runs' manifests and units whose shard disagrees are left out).

    ``files`` is the run's :func:`list_unit_files` (listed here when not given); then one read per manifest,
    many in flight at once on an object store (``RunStore.read_many``)."""
    store = open_store(out)
    files = list_unit_files(store) if files is None else files
    names = [name for name in sorted(files[MANIFEST_DIR])
             if not name.startswith(".") and name.endswith(".json")]  # not an interrupted local write
    manifests = map(_parse, store.read_many([f"{MANIFEST_DIR}/{name}" for name in names]))
    found = [m for m in manifests if _agrees(m, config_hash, files[DATA_DIR])]
    return sorted(found, key=lambda m: m.get("identity_start", 0))
