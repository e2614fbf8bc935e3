"""Every offline smoke preset through the pipeline's own stages, in this process: the shards load with
``datasets``, carry the generator's columns and the metadata its spec declares, and a second run writes the same
bytes. (Running a preset on Ray is one concern for every generator: tests/pipelines/test_cli_run.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from runfolder import write_in_process

from facefoundry.config import load_config
from facefoundry.generators.registry import spec_of

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = ["identities.count=4", "images.per_identity=2", "output.identities_per_unit=2"]


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


# ID-Booth's preset fine-tunes on Ray before it generates: tests/pipelines/test_id_booth_run.py runs it whole.
STAGES_ONLY = sorted(p.name for p in CONFIGS.glob("smoke*.yaml") if p.name != "smoke-id-booth.yaml")


@pytest.mark.parametrize("preset", STAGES_ONLY)
def test_a_smoke_preset_runs_through_the_stages_and_reproduces(preset, tmp_path):
    import datasets

    cfg = load_config(CONFIGS / preset, SMALL)
    write_in_process(cfg, tmp_path / "run")
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "run" / "data"), split="train")
    assert len(ds) == 8 and sorted(set(ds["identity"])) == [0, 1, 2, 3] and len(set(ds["seed"])) == 8
    width, height = ds[0]["image"].size
    assert width == height and {"filter_reason", "face_count"} <= set(ds.column_names)
    meta = json.loads(pq.read_schema(next((tmp_path / "run" / "data").glob("*.parquet"))).metadata[b"facefoundry"])
    spec = spec_of(cfg.generator)
    assert meta["generator"] == json.loads(json.dumps(
        {"kind": cfg.generator.kind, **spec.shard_metadata(cfg.generator), "revision": cfg.generator.revision}))
    write_in_process(cfg, tmp_path / "again")
    assert _shards(tmp_path / "run") == _shards(tmp_path / "again")


def test_fast_mode_runs_through_the_stages_with_the_tiny_lcm_lora(tmp_path):
    """generator.sampler=lcm through the pipeline's stages: the tiny build's LoRA is found and fused."""
    cfg = load_config(CONFIGS / "smoke.yaml", [*SMALL, "generator.sampler=lcm", "generator.steps=2",
                                               "generator.guidance_scale=1.0"])
    manifests = write_in_process(cfg, tmp_path / "lcm")
    assert [m["rows"] for m in manifests] == [4, 4]
    meta = json.loads(pq.read_schema(next((tmp_path / "lcm" / "data").glob("*.parquet"))).metadata[b"facefoundry"])
    assert meta["generator"]["sampler"] == "lcm" and meta["generator"]["lcm_lora"].startswith("tiny")


def test_vec2face_attrop_runs_through_the_stages_and_records_each_outcome(tmp_path):
    cfg = load_config(CONFIGS / "smoke-vec2face.yaml", [*SMALL, "generator.attrop.enabled=true",
                                                        "generator.attrop.max_iterations=2",
                                                        "generator.attrop.target_yaw=15"])
    out = tmp_path / "attrop"
    write_in_process(cfg, out)
    table = pq.read_table(out / "data").to_pylist()
    assert len(table) == 8 and all(0 <= r["attrop_iterations"] <= 2 for r in table)
    assert all(r["attrop_yaw"] is not None and r["attrop_quality"] is not None for r in table)
    assert all(r["attrop_converged"] or r["attrop_iterations"] == 2 for r in table)  # not converged: at the cap
    assert (out / "models" / "vec2face-face-models" / "weights" / "arcface-r100-glint360k.pth").is_file()
