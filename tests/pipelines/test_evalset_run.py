"""Evaluation-set mode end to end: configs/evalset.yaml with tiny models (Vec2Face with its AttrOP pose schedule,
the tiny genderage estimator and 6DRepNet), a leakage gallery, balance, then `facefoundry export-pairs`."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from facefoundry.attributes import age_group_labels
from facefoundry.cli import app
from facefoundry.config import load_config
from facefoundry.evaluate.benchmarks import load_benchmark
from facefoundry.faces.tiny_face_models import write_tiny_genderage, write_tiny_sixdrepnet
from facefoundry.identities.sampling import sample_identities
from facefoundry.pipelines.balance import PROBE_CHUNK, Prober
from facefoundry.pipelines.runner import resolve_model_paths

pytestmark = pytest.mark.ray
PRESET = Path(__file__).resolve().parents[2] / "configs" / "evalset.yaml"
COUNT = 6


def test_evalset_preset_with_tiny_models(tmp_path):
    gallery = tmp_path / "training-identities.npy"
    np.save(gallery, 22 * np.random.default_rng(5).standard_normal((50, 512)).astype(np.float32))
    genderage = write_tiny_genderage(tmp_path / "models" / "genderage.onnx", seed=0)
    pose = write_tiny_sixdrepnet(tmp_path / "models" / "6DRepNet_300W_LP_AFLW2000.pth", seed=2)
    data = yaml.safe_load(PRESET.read_text())
    data["identities"] |= {"count": COUNT, "leakage": {**data["identities"]["leakage"], "galleries": [str(gallery)]}}
    data["generator"] |= {"tiny": True, "batch_size": 8}
    data["generator"]["attrop"] |= {"max_iterations": 1}
    data["attributes"] = {"estimator": "genderage", "model": str(genderage), "detector_model": None,
                          "pose_model": str(pose), "age_edges": [30]}
    data["filter"]["mode"] = "annotate"  # the tiny generator draws no faces
    data["output"]["identities_per_unit"] = 3
    data["ray"] = {"generator_gpus": 0}
    # balance on the two age groups the tiny estimator gives its probes (its ages span a few whole years)
    probe_cfg = load_config(PRESET, [])
    probe_cfg = probe_cfg.model_validate({**probe_cfg.model_dump(), **{k: data[k] for k in ("identities", "generator",
                                                                                           "attributes")},
                                          "balance": None})
    vectors = sample_identities(probe_cfg.identities.model_copy(update={"count": PROBE_CHUNK}), 0).vectors
    found = Prober(probe_cfg, resolve_model_paths(probe_cfg, tmp_path / "probe"))(vectors, list(range(PROBE_CHUNK)))
    ages = np.array([f["age"] for f in found if f is not None])
    edge = int(ages.max())
    assert (ages < edge).sum() >= COUNT // 2 and (ages >= edge).sum() >= COUNT // 2, ages
    young, old = age_group_labels([edge])
    data["attributes"]["age_edges"] = [edge]
    data["balance"] = {"attributes": ["age_group"], "targets": {"age_group": {young: 0.5, old: 0.5}}, "oversample": 10}
    config = tmp_path / "evalset.yaml"
    config.write_text(yaml.safe_dump(data))

    out = tmp_path / "evalset"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    identities = pq.read_table(out / "identities.parquet")
    assert identities.num_rows == COUNT and identities.column("gallery_top1").null_count == 0
    assert sorted(identities.column("age_group").to_pylist()) == sorted([young] * 3 + [old] * 3)
    rows = pq.read_table(out / "data").to_pylist()
    assert len(rows) == COUNT * 3
    for row in rows:  # the schedule by image index: frontal, +30, -30; the measured pose beside it
        assert row["attrop_target_yaw"] == [0.0, 30.0, -30.0][row["image_index"]]
        assert row["head_yaw"] is not None and row["attrop_yaw"] is not None

    pairs = tmp_path / "evalset.bin"
    result = CliRunner().invoke(app, ["export-pairs", str(out), "--out", str(pairs), "--cells", "age_group",
                                      "--pairs-per-cell", "3", "--include-rejected"])
    assert result.exit_code == 0, result.output
    bench = load_benchmark(pairs)
    with open(pairs, "rb") as fh:
        bins, issame = pickle.load(fh, encoding="bytes")
    assert len(bins) == 2 * len(issame) == 2 * 12 and sum(issame) == 6
    assert list(bench.issame) == list(issame)
    sidecar = json.loads(Path(f"{pairs}.pairs.json").read_text())
    assert {c: (v["genuine"], v["impostor"]) for c, v in sidecar["per_cell"].items()} == {
        f"age_group={young}": (3, 3), f"age_group={old}": (3, 3)}
