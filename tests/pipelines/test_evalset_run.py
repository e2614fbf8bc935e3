"""Evaluation-set mode end to end with the shipped offline preset, configs/smoke-evalset.yaml (configs/evalset.yaml's
path with tiny models: Vec2Face with its AttrOP pose schedule, the tiny genderage estimator and 6DRepNet, balance),
through the CLI as a user runs it, then `facefoundry export-pairs`."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from facefoundry.attributes import age_group_labels
from facefoundry.cli import app
from facefoundry.config import load_config
from facefoundry.evaluate.benchmarks import load_benchmark

pytestmark = pytest.mark.ray
PRESET = Path(__file__).resolve().parents[2] / "configs" / "smoke-evalset.yaml"


def test_the_evalset_smoke_preset_runs_offline_and_exports_pairs(tmp_path):
    cfg = load_config(PRESET, [])
    count = cfg.identities.count
    young, old = age_group_labels(cfg.attributes.age_edges)
    assert cfg.balance.targets == {"age_group": {young: 0.5, old: 0.5}}  # what the assertions below rely on

    out = tmp_path / "evalset"
    result = CliRunner().invoke(app, ["run", str(PRESET), "--out", str(out)])
    assert result.exit_code == 0, result.output
    identities = pq.read_table(out / "identities.parquet")
    assert identities.num_rows == count == 6
    assert sorted(identities.column("age_group").to_pylist()) == sorted([young] * 3 + [old] * 3)
    rows = pq.read_table(out / "data").to_pylist()
    assert len(rows) == count * 3
    for row in rows:  # the schedule by image index: frontal, +30, -30; the measured pose beside it
        assert row["attrop_target_yaw"] == [0.0, 30.0, -30.0][row["image_index"]]
        assert row["head_yaw"] is not None and row["attrop_yaw"] is not None

    # An identity's cell is its first image's own age estimate. The tiny estimator puts every image at 19 or 20
    # years, so which side of the edge a first image falls on can change with the CPU's float kernels: the cells,
    # and what each can hold, are read from the rows (3 images an identity: 3 genuine pairs each; impostors need
    # two identities in the cell).
    first = {r["identity"]: r["age_group"] for r in rows if r["image_index"] == 0}
    members = {f"age_group={g}": sum(v == g for v in first.values()) for g in set(first.values())}
    expected = {cell: (3, 3 if n >= 2 else 0) for cell, n in members.items()}
    pairs = tmp_path / "evalset.bin"
    result = CliRunner().invoke(app, ["export-pairs", str(out), "--out", str(pairs), "--cells", "age_group",
                                      "--pairs-per-cell", "3", "--include-rejected", "--allow-short"])
    assert result.exit_code == 0, result.output
    bench = load_benchmark(pairs)
    with open(pairs, "rb") as fh:
        bins, issame = pickle.load(fh, encoding="bytes")
    genuine, impostor = (sum(g for g, _ in expected.values()), sum(i for _, i in expected.values()))
    assert len(bins) == 2 * len(issame) == 2 * (genuine + impostor) and sum(issame) == genuine
    assert list(bench.issame) == list(issame)
    sidecar = json.loads(Path(f"{pairs}.pairs.json").read_text())
    assert {c: (v["genuine"], v["impostor"]) for c, v in sidecar["per_cell"].items()} == expected
