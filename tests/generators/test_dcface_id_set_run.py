"""DCFace through the pipeline on an ID set, as a real run is set up (its smoke preset:
tests/pipelines/test_presets.py)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from runfolder import write_in_process
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.config import validate_config
from facefoundry.faces.tiny_face_models import write_tiny_arcface
from facefoundry.generators.dcface.inputs import IdSet
from facefoundry.generators.dcface.tiny import build_tiny_dcface, smooth_noise


def test_a_run_takes_its_identities_from_the_id_set(tmp_path):
    """As a real run is set up: `facefoundry dcface-ids` on a folder, then identities from_file on that ID set."""
    checkpoint, _, bank = build_tiny_dcface(tmp_path / "models", seed=0, count=1)
    folder = tmp_path / "ids"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(smooth_noise(rng)).save(folder / f"face{i}.png")
    encoder = write_tiny_arcface(tmp_path / "enc" / "arcface.pth", seed=3)
    id_set = tmp_path / "ids.parquet"
    made = CliRunner().invoke(app, ["dcface-ids", "--folder", str(folder), "--encoder", str(encoder), "--count", "3",
                                    "--max-cosine", "0.9999", "--out", str(id_set), "--device", "cpu"])
    assert made.exit_code == 0, made.output
    base = {"run": {"name": "dcface-real", "seed": 1}, "images": {"per_identity": 2},
            "generator": {"kind": "dcface", "checkpoint": str(checkpoint), "id_set": str(id_set),
                          "style_bank": str(bank), "steps": 2, "device": "cpu"},
            "filter": {"mode": "annotate"}, "output": {"identities_per_unit": 2}}
    with pytest.raises(ValueError, match="identities.file"):
        validate_config({**base, "identities": {"count": 3, "sampler": "uniform_sphere", "max_cosine": None}})
    cfg = validate_config({**base, "identities": {"count": 3, "sampler": "from_file", "file": str(id_set),
                                                  "max_cosine": None}})
    write_in_process(cfg, tmp_path / "run")
    rows = pq.read_table(tmp_path / "run" / "data", columns=["identity", "id_source", "style_source"]).to_pylist()
    sources = IdSet(id_set).sources
    assert [(r["identity"], r["id_source"]) for r in rows] == [(i, sources[i]) for i in range(3) for _ in range(2)]
    assert {r["style_source"] for r in rows} <= {p.name for p in bank.iterdir()}
