"""End-to-end: the CLI runs the smoke preset on an embedded Ray, resumes, and refuses bad input."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facefoundry.cli import app

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("shared_ray")]
SMALL = ["--set", "identities.count=4", "--set", "images.per_identity=2"]


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file of the run but its logs (each invocation adds one)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "logs"
    }


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "smoke"
    config = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    return config, out, result


def test_run_writes_dataset(smoke_run):
    _, out, result = smoke_run
    assert "done:" in result.output and "units 2/2" in result.output
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["identities"]["count"] == 4 and len(record["config_hash"]) == 16
    assert (out / "identities.parquet").exists()
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "train-0000000-0000002.parquet", "train-0000002-0000004.parquet"]
    manifests = [json.loads(p.read_text()) for p in sorted((out / "manifests").iterdir())]
    assert [m["rows"] for m in manifests] == [4, 4]
    # annotate mode: noise images are kept and the reason they would be dropped is counted
    assert sum(m["drops"].get("no_face", 0) for m in manifests) == 8

    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(ds) == 4 * 2
    assert ds[0]["image"].size == (112, 112)
    assert {"image", "identity", "image_index", "seed", "face_count", "filter_reason"} <= set(ds.column_names)
    assert sorted(set(ds["identity"])) == [0, 1, 2, 3]
    assert len(set(ds["seed"])) == 8


def test_rerun_is_a_no_op(smoke_run):
    config, out, _ = smoke_run
    before = tree_digest(out)
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output and "2 skipped" in result.output
    assert tree_digest(out) == before
    first, second = sorted((out / "logs").glob("run-*.log"))  # one log per invocation
    assert "units 2/2" in first.read_text() and "done: " in first.read_text()
    assert "nothing to do" in second.read_text() and "0 units written, 2 skipped" in second.read_text()


def test_lost_unit_is_redone_identically(smoke_run, tmp_path):
    config, out, _ = smoke_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = tree_digest(copy)
    (copy / "manifests" / "0000002-0000004.json").unlink()  # as if killed before the manifest landed
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(copy), *SMALL])
    assert result.exit_code == 0, result.output
    assert "1 units written, 1 skipped" in result.output
    assert tree_digest(copy) == before


def test_changed_config_is_refused(smoke_run):
    config, out, _ = smoke_run
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out), *SMALL, "--set", "run.seed=1"])
    assert result.exit_code != 0 and "different config" in result.output


def test_malformed_config_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("identities: {count: 2, colour: red}\nimages: {per_identity: 1}\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(bad), "--out", str(out)])
    assert result.exit_code == 2
    assert "identities.colour: unknown key" in result.output
    assert not out.exists()
    result = CliRunner().invoke(app, ["run", str(bad), "--out", str(out), "--set", "images.per_identity=x"])
    assert result.exit_code == 2 and not out.exists()


def test_help_on_every_command():
    for args in (["--help"], ["run", "--help"], ["sample", "--help"], ["config", "--help"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output


def test_failing_unit_is_recorded_and_redone(tmp_path):
    """A unit that keeps failing is retried, reported with its reason, and the others still land;
    the rerun redoes only that unit."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from facefoundry.runfolder.verify import verify_run

    config = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
    out = tmp_path / "faulty"
    args = ["--out", str(out), *SMALL, "--set", "ray.unit_retries=1"]
    assert CliRunner().invoke(app, ["sample", str(config), *args]).exit_code == 0
    path = out / "identities.parquet"
    good = path.read_bytes()
    table = pq.read_table(path)
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    vectors[2] = np.nan  # identity 2 lives in unit 0000002-0000004
    poisoned = table.set_column(1, "vector", pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 512))
    pq.write_table(poisoned, path)

    result = CliRunner().invoke(app, ["run", str(config), *args])
    assert result.exit_code == 1, result.output
    assert "failed unit 0000002-0000004: ValueError: identity vectors contain NaN or inf" in result.output
    assert "1 units written, 0 skipped, 1 failed" in result.output
    assert sorted(p.name for p in (out / "manifests").iterdir()) == ["0000000-0000002.json"]
    log = next((out / "logs").glob("run-*.log")).read_text()
    assert "unit 0000002-0000004 FAILED after 1 retries: ValueError: identity vectors contain NaN" in log
    assert "incomplete: " in log

    path.write_bytes(good)
    result = CliRunner().invoke(app, ["run", str(config), *args])
    assert result.exit_code == 0, result.output
    assert "1 units written, 1 skipped, 0 failed" in result.output
    assert verify_run(out) == []
