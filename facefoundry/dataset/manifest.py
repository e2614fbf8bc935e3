"""Work-unit manifests: ``manifests/<unit>.json`` is written after its shard and is the truth.

A unit is done iff its manifest parses, belongs to this run, and its shard exists with the
recorded size (``verify`` additionally checks the sha256). Anything else is redone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST_DIR = "manifests"
DATA_DIR = "data"


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
        return f"train-{self.name}.parquet"


def plan_units(n_identities: int, per_unit: int) -> list[Unit]:
    return [Unit(s, min(s + per_unit, n_identities)) for s in range(0, n_identities, per_unit)]


def manifest_path(out: Path, unit: Unit) -> Path:
    return out / MANIFEST_DIR / f"{unit.name}.json"


def shard_path(out: Path, unit: Unit) -> Path:
    return out / DATA_DIR / unit.shard_name


def read_manifest(out: Path, unit: Unit) -> dict | None:
    path = manifest_path(out, unit)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _agrees(out: Path, manifest: object, config_hash: str | None) -> bool:
    """The done rule: a manifest of this run whose shard exists with the recorded size."""
    if not isinstance(manifest, dict) or manifest.get("config_hash") != config_hash:
        return False
    shard = out / str(manifest.get("shard", ""))
    return shard.is_file() and shard.stat().st_size == manifest.get("bytes")


def is_done(out: Path, unit: Unit, config_hash: str) -> bool:
    return _agrees(out, read_manifest(out, unit), config_hash)


def finished_manifests(out: Path, config_hash: str | None) -> list[dict]:
    """Manifests of every done unit of the run in ``out``, in identity order (leftover temporaries,
    corrupt manifests, other runs' manifests and units whose shard disagrees are left out)."""
    found = []
    for path in sorted((out / MANIFEST_DIR).glob("*.json")):
        if path.name.startswith("."):  # an interrupted atomic write
            continue
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if _agrees(out, manifest, config_hash):
            found.append(manifest)
    return sorted(found, key=lambda m: m.get("identity_start", 0))
