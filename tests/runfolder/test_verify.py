import json

import pytest
from runfolder import make_run
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.runfolder.verify import verify_run

SHARD = "data/train-0000002-0000004.parquet"


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")


def test_complete_run_verifies(run):
    assert verify_run(run) == []
    result = CliRunner().invoke(app, ["verify", str(run)])
    assert result.exit_code == 0 and "verifies" in result.output


def test_flipped_byte_names_the_shard(run):
    path = run / SHARD
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = verify_run(run)
    assert problems == [f"{SHARD}: sha256 differs from its manifest (corrupt or modified)"]
    result = CliRunner().invoke(app, ["verify", str(run)])
    assert result.exit_code == 1 and SHARD in result.output


def test_missing_orphan_and_leftover_files(run):
    (run / "manifests" / "0000000-0000002.json").unlink()
    (run / "data" / "train-0000009-0000010.parquet").write_bytes(b"x")
    (run / "data" / ".tmp-123-train-0000002-0000004.parquet").write_bytes(b"x")
    (run / SHARD).unlink()
    problems = "\n".join(verify_run(run))
    assert "manifests/0000000-0000002.json: missing" in problems
    assert "data/train-0000009-0000010.parquet: orphan file" in problems
    assert "leftover temporary file" in problems
    assert f"{SHARD}: missing (its manifest exists)" in problems


def test_manifest_row_count_and_identities_checked(run):
    manifest = run / "manifests" / "0000002-0000004.json"
    record = json.loads(manifest.read_text())
    record["rows"] += 1
    manifest.write_text(json.dumps(record))
    (run / "identities.parquet").unlink()
    problems = verify_run(run)
    assert f"{SHARD}: 6 rows, manifest says 7" in problems
    assert "identities.parquet: missing" in problems


def test_not_a_run(tmp_path):
    assert "run.json missing" in verify_run(tmp_path)[0]


def test_a_shard_with_string_identities_is_a_problem_not_a_crash(tmp_path):
    run = make_run(tmp_path / "run", string_identities=True)
    problems = verify_run(run)
    assert problems and all("column identity holds string, not int64" in p for p in problems), problems
