"""``verify``'s advice repairs what it finds: a flipped byte (same size) and an orphan shard are fixed by
the command it prints, and the repaired shard is byte-identical to the original."""

from __future__ import annotations

import io
import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.pipelines.progress import Progress

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
SMALL = ["--set", "identities.count=4", "--set", "images.per_identity=2"]
SHARD = "data/train-0000002-0000004.parquet"
ORPHAN = "data/train-9999999-extra.parquet"


def test_resumed_progress_counts_the_units_already_done():
    stream = io.StringIO()
    progress = Progress(12, 8.0, stream, done_units=7)
    progress.update({"generated": 8, "rows": 6})
    assert stream.getvalue().startswith("units 8/12 | images 8 (kept 75.0%)")


def test_verify_on_a_folder_that_is_not_a_run_says_so(tmp_path):
    result = CliRunner().invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {tmp_path} is not a facefoundry run folder (run.json missing); give "
                                      "the folder a run wrote (`facefoundry run CONFIG --out DIR`)")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("repair") / "run"
    result = CliRunner().invoke(app, ["run", str(SMOKE), "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    return out


def test_repair_without_a_run_is_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["run", "--repair", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {tmp_path} is not a facefoundry run folder (run.json missing); "
                                     "give CONFIG to start a run")


@pytest.mark.slow
def test_flipped_byte_and_orphan_are_repaired_by_the_advised_command(smoke_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(smoke_run, out)
    original = (out / SHARD).read_bytes()
    corrupt = bytearray(original)
    corrupt[len(corrupt) // 2] ^= 0xFF  # same size: the cheap done rule cannot see it
    (out / SHARD).write_bytes(bytes(corrupt))
    shutil.copy(out / "data" / "train-0000000-0000002.parquet", out / ORPHAN)

    failed = CliRunner().invoke(app, ["verify", str(out)])
    assert failed.exit_code == 1
    assert f"problem: {SHARD}: sha256 differs from its manifest (corrupt or modified)" in failed.output
    assert f"problem: {ORPHAN}: orphan file (no planned unit)" in failed.output
    advised = re.search(r"repair with `([^`]+)`", failed.output)
    assert advised and advised.group(1) == f"facefoundry run --repair --out {out}", failed.output

    repaired = CliRunner().invoke(app, shlex.split(advised.group(1))[1:])
    assert repaired.exit_code == 0, repaired.output
    assert f"{ORPHAN}: no planned unit owns it; moved to orphans/{ORPHAN}" in repaired.output
    assert f"{SHARD}: sha256 differs from its manifest; moved to orphans/{SHARD}" in repaired.output
    assert "units 2/2" in repaired.output and "1 units written, 1 skipped" in repaired.output

    assert CliRunner().invoke(app, ["verify", str(out)]).exit_code == 0
    assert (out / SHARD).read_bytes() == original
    assert (out / "orphans" / SHARD).read_bytes() == bytes(corrupt)  # set aside, not deleted
    assert (out / "orphans" / ORPHAN).exists() and not (out / ORPHAN).exists()
