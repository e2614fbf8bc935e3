"""DCFace through the pipeline: the smoke preset on Ray, and a run on an ID set as a real run is set up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from runfolder import write_in_process
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.config import load_config, validate_config
from facefoundry.faces.tiny_face_models import write_tiny_arcface
from facefoundry.generators.dcface.inputs import IdSet
from facefoundry.generators.dcface.tiny import build_tiny_dcface, smooth_noise

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smoke-dcface.yaml"


@pytest.mark.slow
def test_smoke_preset_runs_end_to_end_and_reproduces(tmp_path):
    """``facefoundry run`` on Ray, loaded with ``datasets``; the same stages in-process write the same bytes."""
    import datasets

    overrides = ["identities.count=4", "images.per_identity=2", "output.identities_per_unit=2"]
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(CONFIG), "--out", str(out),
                                      *[a for o in overrides for a in ("--set", o)]])
    assert result.exit_code == 0, result.output
    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(ds) == 8 and ds[0]["image"].size == (112, 112)
    assert {"style_source", "id_source"} <= set(ds.column_names)
    assert set(ds["id_source"]) == {f"tiny:{i}" for i in range(4)}
    again = tmp_path / "again"
    write_in_process(load_config(CONFIG, overrides), again)
    shards = sorted(p.name for p in (out / "data").iterdir())
    assert len(shards) == 2
    assert all((out / "data" / s).read_bytes() == (again / "data" / s).read_bytes() for s in shards)


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
