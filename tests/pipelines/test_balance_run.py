"""A balanced run end to end through `facefoundry run` (embedded Ray): the no-op generator's images, the tiny
genderage model in its published format, quotas met, estimates per row, report and card; a rerun does nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from facefoundry.attributes import age_group_labels
from facefoundry.cli import app
from facefoundry.config import validate_config
from facefoundry.faces.tiny_face_models import write_tiny_genderage
from facefoundry.identities.sampling import sample_identities
from facefoundry.pipelines.balance import PROBE_CHUNK, Prober
from facefoundry.pipelines.runner import resolve_model_paths

pytestmark = pytest.mark.ray
COUNT = 8


def base_config(model: Path) -> dict:
    return {
        "run": {"name": "balanced", "seed": 1},
        "identities": {"count": COUNT, "dim": 32, "max_cosine": 0.9},
        "images": {"per_identity": 2},
        "generator": {"kind": "noop", "size": 48},
        "filter": {"mode": "annotate"},
        "attributes": {"model": str(model), "detector_model": None, "age_edges": [30]},
        "output": {"identities_per_unit": 4},
    }


def probe_estimates(data: dict, out: Path, n: int) -> list[dict | None]:
    """What the run's prober says of its first ``n`` candidates (the same code the run calls)."""
    cfg = validate_config(data)
    vectors = sample_identities(cfg.identities.model_copy(update={"count": n}), cfg.run.seed).vectors
    prober = Prober(cfg, resolve_model_paths(cfg, out))
    return prober(vectors, list(range(n)))


def test_balanced_run_end_to_end(tmp_path):
    model = write_tiny_genderage(tmp_path / "models" / "genderage.onnx", seed=0)
    data = base_config(model)
    # targets the tiny random model can meet: its ages on noise images span a few (whole) years, so an age edge
    # at the highest of them on 64 probes splits them in two groups, then half and half of the two
    ages = np.array([e["age"] for e in probe_estimates(data, tmp_path / "probe", 2 * PROBE_CHUNK) if e is not None])
    edge = int(ages.max())
    assert (ages < edge).sum() >= COUNT // 2 and (ages >= edge).sum() >= COUNT // 2, ages
    young, old = age_group_labels([edge])
    data["attributes"]["age_edges"] = [edge]
    data["balance"] = {"attributes": ["age_group"], "targets": {"age_group": {young: 0.5, old: 0.5}},
                       "oversample": 8}
    config = tmp_path / "balanced.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "balance: " in result.output and "identities kept" in result.output

    identities = pq.read_table(out / "identities.parquet")
    meta = json.loads(identities.schema.metadata[b"facefoundry"])["balance"]
    assert identities.num_rows == COUNT
    assert sorted(identities.column("age_group").to_pylist()) == sorted([young] * 4 + [old] * 4)
    assert meta["achieved"]["age_group"] == {young: 0.5, old: 0.5} and meta["estimator"] == "genderage"
    # each identity's recorded estimate is its probe's, re-estimated here from the same candidate
    probed = probe_estimates({**data}, tmp_path / "probe", int(max(identities.column("candidate").to_pylist())) + 1)
    for candidate, group in zip(identities.column("candidate").to_pylist(), identities.column("age_group").to_pylist(),
                                strict=True):
        assert probed[candidate]["age_group"] == group

    rows = pq.read_table(out / "data").to_pylist()
    assert len(rows) == COUNT * 2
    assert all(r["gender"] in ("female", "male") and r["age_group"] in (young, old) for r in rows)
    assert all(0.5 <= r["gender_score"] <= 1 and r["race"] is None for r in rows)
    manifests = [json.loads(p.read_text()) for p in (out / "manifests").glob("*.json")]
    assert sum(sum(m["label_counts"]["gender"].values()) for m in manifests) == COUNT * 2

    verified = CliRunner().invoke(app, ["verify", str(out)])
    assert verified.exit_code == 0, verified.output
    assert CliRunner().invoke(app, ["report", str(out)]).exit_code == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["attributes"]["balance"]["target_cells"] == {young: 0.5, old: 0.5}
    assert (out / "report" / "attributes.png").stat().st_size > 1000
    card = CliRunner().invoke(app, ["card", str(out)])
    assert card.exit_code == 0, card.output
    text = (out / "README.md").read_text()
    section = text.split("## Demographic attributes (estimated)")[1].split("\n## ")[0]
    assert "not ground truth" in section and "genderage" in section and "Balanced by quota" in section
    assert f"| {young} | 0.500 | 0.500 |" in section
    bias = text.split("### Bias")[1].split("\n### ")[0]
    assert "balanced on age_group as the genderage estimator labels them" in bias, bias

    again = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert again.exit_code == 0 and "nothing to do" in again.output
