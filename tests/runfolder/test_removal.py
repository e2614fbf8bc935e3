"""``facefoundry remove``: a takedown rewrites only the affected shards, is logged, survives a kill, and sticks."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from runfolder import png, rows_table, write_run
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.dataset.manifest import accepted_images, plan_units, read_manifest
from facefoundry.identities.store import read_run_vectors
from facefoundry.runfolder.removal import (
    DONE,
    PENDING,
    REMOVED,
    RemovalError,
    finish_pending,
    read_removals,
    remove_identities,
)
from facefoundry.runfolder.verify import verify_run

PER_IDENTITY = 3


def _unit_rows(unit):
    """3 images per identity; image 2 of every odd identity was rejected (annotate mode keeps it with a reason)."""
    ids = np.repeat(np.arange(unit.start, unit.stop), PER_IDENTITY)
    idx = np.tile(np.arange(PER_IDENTITY), unit.stop - unit.start)
    reasons = ["no_face" if i % 2 and j == 2 else None for i, j in zip(ids, idx, strict=True)]
    table = rows_table(ids, idx, [png(int(i) * 10 + int(j)) for i, j in zip(ids, idx, strict=True)],
                       face_score=pa.array(np.linspace(0.5, 1.0, len(ids)), pa.float32()),
                       filter_reason=pa.array(reasons, pa.string()))
    return table, len(ids), {"no_face": sum(r is not None for r in reasons)}


CONFIG = {"run": {"name": "takedown"}, "identities": {"count": 6}, "images": {"per_identity": PER_IDENTITY},
          "output": {"identities_per_unit": 2}, "filter": {"mode": "annotate"}}


@pytest.fixture
def run(tmp_path):
    write_run(tmp_path / "run", CONFIG, _unit_rows)
    return tmp_path / "run"


def _digests(run) -> dict[str, str]:
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def _identities(run, shard: str) -> list[int]:
    return pq.read_table(run / "data" / shard, columns=["identity"]).column("identity").to_pylist()


def test_removal_rewrites_only_its_shards_and_logs_it(run):
    before = _digests(run)
    entry = remove_identities(run, [3, 2], "resembles a public figure")
    after = _digests(run)
    changed = {path for path in before if before[path] != after.get(path)}
    assert changed == {"data/train-0000002-0000004.parquet", "manifests/0000002-0000004.json"}
    assert set(after) - set(before) == {"removals.json"}
    assert verify_run(run) == []
    assert _identities(run, "train-0000002-0000004.parquet") == []

    log = read_removals(run)
    assert log == [entry] and entry["status"] == DONE
    assert entry["labels"] == [2, 3] and entry["reason"] == "resembles a public figure"
    assert entry["matched"] == {"by": "labels"}
    # identity 2: 3 accepted rows; identity 3: 2 accepted + 1 rejected (stored in annotate mode)
    assert entry["rows"] == 6 and entry["units"] == {"0000002-0000004": {"rows": 6, "accepted": 5}}
    manifest = read_manifest(run, plan_units(6, 2)[1])
    assert manifest["rows"] == 0 and manifest["drops"] == {"no_face": 1, REMOVED: 5}
    assert accepted_images(manifest) == 0  # accepted still means rows a reader keeps
    assert manifest["generated"] == 6  # history: what was generated is not rewritten


def test_partial_removal_keeps_the_other_identities_rows_and_stats(run):
    remove_identities(run, [1], "withdrawn")
    table = pq.read_table(run / "data" / "train-0000000-0000002.parquet")
    assert table.column("identity").to_pylist() == [0, 0, 0]
    manifest = read_manifest(run, plan_units(6, 2)[0])
    assert manifest["rows"] == 3 and manifest["identities_kept"] == 1
    assert manifest["stats"]["face_score"]["count"] == 3
    assert manifest["drops"] == {"no_face": 1, REMOVED: 2}
    assert accepted_images(manifest) == 3
    meta = json.loads(pq.read_schema(run / "data" / "train-0000000-0000002.parquet").metadata[b"facefoundry"])
    assert meta == {"run_id": "takedown"}  # the shard keeps its facefoundry metadata


def test_removal_equals_what_the_writer_writes_when_the_unit_is_generated_again(run):
    """run --repair after a takedown: the writer leaves the removed identities out, to the same bytes."""
    from facefoundry.config import validate_config
    from facefoundry.pipelines.stage import UnitResult
    from facefoundry.pipelines.stages import WriteStage

    cfg = validate_config(CONFIG)
    unit = plan_units(6, 2)[0]
    original = _unit_rows(unit)
    remove_identities(run, [1], "withdrawn")
    removed = _digests(run)
    (run / "manifests" / f"{unit.name}.json").unlink()
    WriteStage(cfg, str(run), {"run_id": "takedown"})(UnitResult(unit, *original))
    assert _digests(run) == removed


def test_labels_out_of_range_a_missing_reason_and_an_unfinished_run_are_refused(run):
    with pytest.raises(RemovalError, match=r"labels \[6\] are not identities of this run \(0..5\)"):
        remove_identities(run, [1, 6], "x")
    with pytest.raises(RemovalError, match="give the reason"):
        remove_identities(run, [1], "  ")
    (run / "manifests" / "0000004-0000006.json").unlink()
    with pytest.raises(RemovalError, match="does not verify .*0000004-0000006.json.*finish or repair it first"):
        remove_identities(run, [1], "x")
    assert not (run / "removals.json").exists()


def test_removing_again_is_a_no_op_and_dry_run_changes_nothing(run):
    before = _digests(run)
    planned = remove_identities(run, [4], "x", dry_run=True)
    assert planned["rows"] == 3 and _digests(run) == before
    remove_identities(run, [4], "x")
    once = _digests(run)
    assert remove_identities(run, [4], "again") is None
    assert _digests(run) == once


def test_verify_names_removed_rows_put_back_and_repair_sets_the_unit_aside(run):
    from facefoundry.runfolder.repair import set_aside_corrupt

    unit = plan_units(6, 2)[2]
    shard, manifest = run / "data" / unit.shard_name, run / "manifests" / f"{unit.name}.json"
    old = shard.read_bytes(), manifest.read_bytes()
    remove_identities(run, [5], "x")
    shard.write_bytes(old[0])  # a backup of the unit put back
    manifest.write_bytes(old[1])
    problems = verify_run(run)
    assert problems == [f"data/{unit.shard_name}: holds rows of identities removed by `facefoundry remove` ([5]); "
                        "`facefoundry run --repair` writes the unit again without them"]
    from facefoundry.dataset.storage import open_store

    lines = set_aside_corrupt(open_store(run), plan_units(6, 2), read_manifest(run, unit)["config_hash"])
    assert len(lines) == 1 and "holds rows of removed identities" in lines[0]


KILLER = textwrap.dedent("""
    import os, signal, sys
    from facefoundry.dataset.storage import LocalStore
    from facefoundry.runfolder.removal import remove_identities

    put = LocalStore.put_bytes
    manifests = []

    def put_then_die(self, rel, data):
        if rel.startswith("manifests/"):
            manifests.append(rel)
            if len(manifests) == 2:  # the second unit's shard is replaced, its manifest not yet written
                os.kill(os.getpid(), signal.SIGKILL)
        put(self, rel, data)

    LocalStore.put_bytes = put_then_die
    remove_identities(sys.argv[1], [1, 3, 5], "killed on purpose")
""")


def test_a_removal_killed_between_shard_and_manifest_is_finished_to_the_same_bytes(run, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(run, reference)
    done = remove_identities(reference, [1, 3, 5], "killed on purpose")

    killed = subprocess.run([sys.executable, "-c", KILLER, str(run)], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    log = read_removals(run)
    assert [e["status"] for e in log] == [PENDING]
    problems = verify_run(run)
    assert any("was interrupted" in p for p in problems)
    shard_vs_manifest = r"data/train-0000002-0000004\.parquet: \d+ bytes, manifest says \d+"  # new shard, old manifest
    assert any(re.fullmatch(shard_vs_manifest, p) for p in problems), problems

    result = CliRunner().invoke(app, ["remove", str(run)])
    assert result.exit_code == 0, result.output
    assert "1 interrupted removal(s) finished" in result.output
    assert verify_run(run) == []
    ours, theirs = _digests(run), _digests(reference)
    del ours["removals.json"], theirs["removals.json"]  # they differ by date only
    assert ours == theirs
    entry = read_removals(run)[0]
    assert {k: v for k, v in entry.items() if k != "date"} == {k: v for k, v in done.items() if k != "date"}


def test_a_rerun_of_the_pipeline_finishes_an_interrupted_removal(run):
    from facefoundry.dataset.storage import open_store
    from facefoundry.runfolder.removal import _write_log, plan_removal

    plans, _ = plan_removal(run, [0])
    _write_log(open_store(run), [{"date": "2026-01-01T00:00:00+00:00", "reason": "x", "labels": [0],
                                  "matched": {"by": "labels"}, "status": PENDING, "rows": 3, "units": plans}])
    assert finish_pending(run) == 1  # what `facefoundry run` calls before deciding what is done
    assert verify_run(run) == [] and read_removals(run)[0]["status"] == DONE
    assert 0 not in _identities(run, "train-0000000-0000002.parquet")


def test_cli_like_matches_an_embedding_above_the_threshold(run, tmp_path):
    vectors = read_run_vectors(run)
    query = vectors[4] + 0.01 * np.linalg.norm(vectors[4]) * np.random.default_rng(0).standard_normal(len(vectors[4]))
    np.save(tmp_path / "face.npy", query.astype(np.float32))
    expected = vectors @ query / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query)
    threshold = float(np.sort(expected)[-1] - 1e-4)  # only the closest identity
    assert int(np.argmax(expected)) == 4 and np.sort(expected)[-2] < threshold

    runner = CliRunner()
    dry = runner.invoke(app, ["remove", str(run), "--like", str(tmp_path / "face.npy"), "--threshold",
                              str(threshold), "--reason", "takedown request", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would remove 1 identities, 3 rows in 1 shards: labels [4]" in dry.output
    assert not (run / "removals.json").exists()
    done = runner.invoke(app, ["remove", str(run), "--like", str(tmp_path / "face.npy"), "--threshold",
                               str(threshold), "--reason", "takedown request"])
    assert done.exit_code == 0, done.output
    entry = read_removals(run)[0]
    assert entry["labels"] == [4] and entry["matched"]["by"] == "embedding"
    assert entry["matched"]["cosines"]["4"] == pytest.approx(expected[4], abs=1e-5)
    assert "face.npy" not in (run / "removals.json").read_text()  # nothing of the query is kept


@pytest.mark.parametrize("args, message", [
    (["--labels", "1", "--like", "x.npy", "--threshold", "0.5"], "either --labels or --like"),
    (["--like", "x.npy"], "--like needs --threshold"),
    (["--labels", "one"], "give comma-separated integers"),
    (["--like", "missing.npy", "--threshold", "0.5", "--reason", "r"], "no such file"),
])
def test_cli_bad_arguments_are_one_clear_line(run, args, message):
    result = CliRunner().invoke(app, ["remove", str(run), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (run / "removals.json").exists()


def test_like_refuses_a_wrong_size_or_nan_embedding_and_an_image_without_an_identity_filter(run, tmp_path):
    np.save(tmp_path / "short.npy", np.ones(7, np.float32))
    np.save(tmp_path / "nan.npy", np.full(read_run_vectors(run).shape[1], np.nan, np.float32))
    (tmp_path / "face.png").write_bytes(png(1, 64))
    runner = CliRunner()
    for name, message in (("short.npy", "holds shape (7,), the run's identity vectors are 512-d"),
                          ("nan.npy", "holds NaN or inf"), ("face.png", "this run has no identity filter")):
        result = runner.invoke(app, ["remove", str(run), "--like", str(tmp_path / name), "--threshold", "0.5",
                                     "--reason", "r"])
        assert result.exit_code == 2 and message in result.output, result.output
