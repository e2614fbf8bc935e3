"""``verify``'s advice repairs what it finds: a flipped byte (same size) and an orphan shard are fixed by
the command it prints, and the repaired shard is byte-identical to the original."""

from __future__ import annotations

import io
import re
import shlex
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.pipelines.progress import Progress, StartupTicker

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
SMALL = ["--set", "identities.count=4", "--set", "images.per_identity=2"]
SHARD = "data/train-0000002-0000004.parquet"
ORPHAN = "data/train-9999999-extra.parquet"


def test_startup_ticker_speaks_until_stopped_and_never_after():
    stream = io.StringIO()
    with StartupTicker(stream, every=0.05) as ticker:
        deadline = time.monotonic() + 30  # a loaded machine may not run the ticker's thread for a while
        while stream.getvalue().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        ticker.stop()
        lines = stream.getvalue().splitlines()
        time.sleep(0.15)
    assert len(lines) >= 2 and all(line.startswith("still starting after ") for line in lines)
    assert stream.getvalue().splitlines() == lines, "a line written after stop()"


def test_resumed_progress_counts_the_units_already_done():
    stream = io.StringIO()
    progress = Progress(12, 8.0, stream, done_units=7)
    progress.update({"generated": 8, "rows": 8, "drops": {"no_face": 2}})  # annotate mode: rejected rows stored
    assert stream.getvalue().startswith("units 8/12 | images 8 (accepted 75.0%)")


def test_verify_on_a_folder_that_is_not_a_run_says_so(tmp_path):
    result = CliRunner().invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {tmp_path} is not a facefoundry run folder (run.json missing); give "
                                      "the folder a run wrote (`facefoundry run CONFIG --out DIR`)")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, shared_ray):  # the repair run below uses the same Ray
    out = tmp_path_factory.mktemp("repair") / "run"
    result = CliRunner().invoke(app, ["run", str(SMOKE), "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    return out


def test_repair_without_a_run_is_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["run", "--repair", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {tmp_path} is not a facefoundry run folder (run.json missing); "
                                     "give CONFIG to start a run")


@pytest.mark.ray
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


@pytest.mark.ray
@pytest.mark.parametrize("where", ["local", "s3"])
def test_set_aside_moves_corrupt_units_and_orphans_without_deleting(where, tmp_path, request):
    from runfolder import make_run
    from s3server import bucket_uri

    from facefoundry.dataset.manifest import finished_manifests, plan_units
    from facefoundry.dataset.storage import open_store
    from facefoundry.runfolder.repair import set_aside_corrupt, set_aside_orphans
    from facefoundry.runfolder.runinfo import read_run

    local = make_run(tmp_path / "run")
    store = open_store(local)
    if where == "s3":
        store = open_store(bucket_uri(request.getfixturevalue("s3_endpoint"), "repair", "run"))
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            store.put_bytes(path.relative_to(local).as_posix(), path.read_bytes())
    cfg = read_run(store)
    units = plan_units(cfg.identities.count, cfg.output.identities_per_unit)
    shard = f"data/{units[1].shard_name}"
    data = bytearray(store.read_bytes(shard))
    data[-20] ^= 1
    store.put_bytes(shard, bytes(data))
    store.put_bytes(ORPHAN, b"stray")
    assert len(finished_manifests(store, cfg.config_hash())) == 2  # the size rule is blind to it

    assert set_aside_orphans(store, units) == [f"{ORPHAN}: no planned unit owns it; moved to orphans/{ORPHAN}"]
    lines = set_aside_corrupt(store, units, cfg.config_hash())
    assert lines == [f"{shard}: sha256 differs from its manifest; moved to orphans/{shard} (manifest to "
                     f"orphans/manifests/{units[1].name}.json), unit {units[1].name} is redone"]
    assert [m["unit"] for m in finished_manifests(store, cfg.config_hash())] == [units[0].name]
    assert store.read_bytes(f"orphans/{shard}") == bytes(data) and store.read_bytes(f"orphans/{ORPHAN}") == b"stray"
    assert store.read_bytes(shard) is None and set_aside_corrupt(store, units, cfg.config_hash()) == []
    store.put_bytes(ORPHAN, b"again")  # a second orphan of the same name never overwrites the first
    set_aside_orphans(store, units)
    assert store.read_bytes(f"orphans/{ORPHAN}.1") == b"again"
