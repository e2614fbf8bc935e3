"""A small finished run for the card and publish tests, written without Ray: 4 identities x 3 images in 2 units."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from runfolder import png, rows_table, write_run

from facefoundry.runfolder.runinfo import run_id

SECTIONS = [
    "Dataset description", "Intended uses", "Out-of-scope uses", "How it was generated", "Identity sampling",
    "Image generation", "Face filter", "Upstream models and licences", "Software and reproduction",
    "Dataset structure", "Loading", "Columns", "Splits", "Statistics", "Score columns", "Plots", "Filtering",
    "Leakage screening", "Removals", "Evaluation", "Considerations for using the data", "Privacy", "Bias", "Misuse",
    "Synthetic marking", "Licence", "Limitations", "Citation",
]


def make_run(out: Path, gallery: Path | None = None, sampler: dict | None = None, *, extra: dict | None = None,
             drops: dict[str, int] | None = None) -> Path:
    """4 identities x 3 images in 2 units, with score columns, one rejected image per unit and a report/.

    ``extra``: config sections added (or merged into ``identities``); ``drops``: each unit's drop counts."""
    extra = dict(extra or {})
    identities = {"count": 4, **(sampler or {}), **extra.pop("identities", {})}
    if gallery is not None:
        identities["leakage"] = {"galleries": [str(gallery)]}
    def unit_rows(unit):
        ids = np.repeat(np.arange(unit.start, unit.stop), 3)[:-1]  # the last image was rejected
        idx = np.tile(np.arange(3), 2)[:-1]
        n = len(ids)
        rng = np.random.default_rng(unit.start)
        table = rows_table(
            ids, idx, [png(int(i) * 10 + int(j)) for i, j in zip(ids, idx, strict=True)],
            face_count=pa.array(np.ones(n), pa.int32()),
            face_score=pa.array(rng.uniform(0.5, 2.0, n), pa.float32()),
            face_box=pa.FixedSizeListArray.from_arrays(pa.array(rng.uniform(0, 16, 4 * n), pa.float32()), 4),
            judge_distance=pa.array(rng.uniform(0.2, 0.5, n), pa.float32()),
            filter_reason=pa.nulls(n, pa.string()))
        return table, 6, drops or {"identity_mismatch": 1}

    write_run(out, {"run": {"name": "hubtest", "seed": 3}, "identities": identities, "images": {"per_identity": 3},
                    "output": {"identities_per_unit": 2}, **extra}, unit_rows,
              metadata=lambda cfg: {"run_id": run_id(cfg), "config_hash": cfg.config_hash(), "synthetic": True,
                                    "generator": {"kind": cfg.generator.kind, "revision": None}})
    (out / "report").mkdir()
    (out / "report" / "separation.png").write_bytes(png(1))
    (out / "report" / "funnel.png").write_bytes(png(2))
    (out / "report" / "summary.json").write_text('{"rows": 10}\n')
    (out / "report" / ".tmp-1-grid.png").write_bytes(b"partial")
    (out / "models").mkdir()
    (out / "models" / "weights.safetensors").write_bytes(b"not for the Hub")
    (out / "run.log").write_text("log\n")
    return out


def sections(text: str) -> dict[str, str]:
    """Heading title -> the text under it (code fences respected)."""
    found, heading, fenced = {}, None, False
    for line in text.splitlines():
        fenced = fenced != line.startswith("```")
        if not fenced and re.match(r"#{1,6} ", line):
            heading = line.lstrip("#").strip()
            found[heading] = ""
        elif heading is not None:
            found[heading] += line + "\n"
    return found


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path (to prove a folder unchanged)."""
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """The run of :func:`make_run` with a screened gallery, built once per test module."""
    root = tmp_path_factory.mktemp("cardrun")
    gallery = root / "real_gallery.npy"
    np.save(gallery, np.random.default_rng(7).standard_normal((64, 512)).astype(np.float32))
    return make_run(root / "run", gallery)


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    """A private copy of ``base_run`` that a test may change."""
    return Path(shutil.copytree(base_run, tmp_path / "run"))


@pytest.fixture
def stub(monkeypatch, tmp_path):
    """The loopback Hub stub (:mod:`hubstub`), every default Hub URL pointed at it."""
    from hubstub import serve

    yield from serve(monkeypatch, tmp_path)
