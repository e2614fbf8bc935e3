"""``facefoundry merge``: one run folder from several runs, relabelled, with provenance, cross-run duplicates found and
handled, deterministic and resumable; the sources are never modified."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from facecrops import PERSON_A, PERSON_B, views
from realfaces import needs_photo, open_group_photo
from runfolder import png, rows_table, write_run
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.exporters.merge import MergeError, merge_runs
from facefoundry.identities.store import commit_identities, read_metadata, read_run_vectors
from facefoundry.runfolder.verify import verify_run


def _digests(folder, skip=("logs",)) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] not in skip}


def _source(out, name, generator, images_of, per_identity=3, count=4, space=None, rejected=()):
    """A finished run of ``count`` identities; identity i's image j is ``images_of(i, j)``; ``rejected``: the
    (identity, image) rows the filter rejected (annotate mode: stored with their reason)."""
    def unit_rows(unit):
        ids = np.repeat(np.arange(unit.start, unit.stop), per_identity)
        idx = np.tile(np.arange(per_identity), unit.stop - unit.start)
        reasons = ["no_face" if (int(i), int(j)) in rejected else None for i, j in zip(ids, idx, strict=True)]
        table = rows_table(ids, idx, [images_of(int(i), int(j)) for i, j in zip(ids, idx, strict=True)],
                           face_score=pa.array(np.ones(len(ids)), pa.float32()),
                           filter_reason=pa.array(reasons, pa.string()))
        return table, len(ids), {"no_face": sum(r is not None for r in reasons)}

    identities = {"count": count, **(space or {})}
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)  # runs of other names sample other vectors
    write_run(out, {"run": {"name": name, "seed": seed}, "identities": identities,
                    "images": {"per_identity": per_identity}, "generator": generator,
                    "output": {"identities_per_unit": 2}, "filter": {"mode": "annotate"}},
              unit_rows)
    return out


def _noise(seed):
    return lambda i, j: png(seed * 1000 + i * 10 + j, 32)


ARC2FACE = {"kind": "arc2face", "tiny": True}
VEC2FACE = {"kind": "vec2face", "tiny": True}
RAW = {"space": "raw", "norm": 22.0}


def test_same_space_duplicate_is_found_by_vectors_and_the_less_supported_side_dropped(tmp_path):
    a = _source(tmp_path / "a", "a", ARC2FACE, _noise(1))
    b = _source(tmp_path / "b", "b", ARC2FACE, _noise(2), rejected={(0, 2)})  # b's identity 0 keeps 2 images
    vectors = read_run_vectors(a)
    planted = read_run_vectors(b)
    planted[0] = vectors[3]  # b's identity 0 is a's identity 3
    table = pq.read_table(b / "identities.parquet")
    table = table.set_column(1, "vector", pa.FixedSizeListArray.from_arrays(pa.array(planted.reshape(-1)), 512))
    commit_identities(b, table, read_metadata(b / "identities.parquet"))
    assert verify_run(b) == []
    sources_before = _digests(a) | {f"b/{k}": v for k, v in _digests(b).items()}

    report = merge_runs([a, b], tmp_path / "m", judge=None)
    [dup] = report["duplicates"]
    assert dup["by"] == "identity vectors" and dup["score"] == pytest.approx(1.0)
    assert dup["first"] == {"run_id": report["sources"][0]["run_id"], "identity": 3}
    assert dup["dropped"] == {"run_id": report["sources"][1]["run_id"], "identity": 0}  # 2 kept images < 3
    assert report["unchecked"] == []
    merged = tmp_path / "m"
    assert verify_run(merged) == []
    assert _digests(a) | {f"b/{k}": v for k, v in _digests(b).items()} == sources_before  # sources untouched

    rows = pq.read_table(merged / "data").sort_by([("identity", "ascending"), ("image_index", "ascending")])
    assert sorted(set(rows.column("identity").to_pylist())) == list(range(7))
    provenance = set(zip(rows.column("identity").to_pylist(), rows.column("source_identity").to_pylist(),
                         rows.column("source_run").to_pylist(), strict=True))
    a_id, b_id = (s["run_id"] for s in report["sources"])
    assert provenance == {(i, i, a_id) for i in range(4)} | {(4 + k, 1 + k, b_id) for k in range(3)}
    assert rows.column("filter_reason").null_count == rows.num_rows  # only kept rows by default
    ident = pq.read_table(merged / "identities.parquet")
    np.testing.assert_array_equal(np.stack(ident.column("vector").to_numpy(zero_copy_only=False))[4],
                                  read_run_vectors(b)[1])
    meta = read_metadata(merged / "identities.parquet")
    assert meta["merge"]["dropped"] == 1 and meta["count"] == 7

    kept = merge_runs([a, b], tmp_path / "keep", judge=None, duplicates="keep")
    assert kept["duplicates"][0]["dropped"] is None and kept["sources"][1]["identities_taken"] == 4


@needs_photo
def test_a_duplicate_across_identity_spaces_is_found_by_the_judge_and_the_merge_is_a_run(tmp_path, monkeypatch):
    """An Arc2Face-space run and a Vec2Face-space run (tiny configs), one person planted in both: the dlib judge's
    centroids find it; the merged folder verifies, loads with datasets, has a card naming both sources, and a merge
    into another folder gives the same bytes."""
    photo = open_group_photo()
    person_a, person_b = views(photo, PERSON_A), views(photo, PERSON_B)
    a = _source(tmp_path / "a", "arc", ARC2FACE,
                lambda i, j: person_a[j] if i == 1 else person_b[j] if i == 2 else png(i * 10 + j, 32))
    b = _source(tmp_path / "b", "vec", VEC2FACE, lambda i, j: person_a[j + 2] if i == 3 else png(500 + i * 10 + j, 32),
                space=RAW, rejected={(3, 2)})
    report = merge_runs([a, b], tmp_path / "m", judge_images=2)
    [dup] = report["duplicates"]
    a_id, b_id = (s["run_id"] for s in report["sources"])
    assert dup["by"] == "judge centroids" and dup["score"] < 0.6
    assert dup["first"] == {"run_id": a_id, "identity": 1} and dup["second"] == {"run_id": b_id, "identity": 3}
    assert dup["dropped"] == {"run_id": b_id, "identity": 3}
    assert report["unjudged"] == {a_id: 2, b_id: 3}  # the noise identities
    merged = tmp_path / "m"
    assert verify_run(merged) == []

    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(merged / "data"), split="train")
    assert ds.num_rows == 4 * 3 + 3 * 3 and set(ds["source_generator"]) == {"arc2face", "vec2face"}
    assert ds[0]["image"].size == (32, 32)

    result = CliRunner().invoke(app, ["card", str(merged)])
    assert result.exit_code == 0, result.output
    card = (merged / "README.md").read_text()
    assert f"| `{a_id}` | arc2face | 4 of 4 | 0..3 |" in card and f"| `{b_id}` | vec2face | 3 of 4 | 4..6 |" in card
    assert "judge centroids" in card and "Arc2Face" in card and "Vec2Face" in card

    again = CliRunner().invoke(app, ["merge", str(a), str(b), "--out", str(tmp_path / "m2"), "--judge-images", "2"])
    assert again.exit_code == 0, again.output
    assert "duplicate (judge centroids" in again.output
    first = _digests(merged)
    del first["README.md"]
    assert _digests(tmp_path / "m2") == first  # byte-identical (the judge centroids kept in merge/ included)
    assert len(list((merged / "merge").glob("centroids-*.npy"))) == 2

    from facefoundry.evaluate import judge as judge_module

    def no_judging(self, images):
        raise AssertionError("a rerun judged again instead of reading merge/")

    monkeypatch.setattr(judge_module.FaceJudge, "__call__", no_judging)
    rerun = merge_runs([a, b], merged, judge_images=2)
    assert rerun["units"]["written"] == 0 and rerun["duplicates"] == report["duplicates"]


def test_a_killed_merge_is_finished_by_the_same_command_to_the_same_bytes(tmp_path):
    a = _source(tmp_path / "a", "a", ARC2FACE, _noise(1))
    b = _source(tmp_path / "b", "b", ARC2FACE, _noise(2))
    merge_runs([a, b], tmp_path / "m", judge=None)
    whole = _digests(tmp_path / "m")
    (tmp_path / "m" / "manifests" / "0000002-0000004.json").unlink()  # killed before this unit's manifest
    shard = tmp_path / "m" / "data" / "train-0000004-0000006.parquet"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # and a shard damaged since
    shard.write_bytes(bytes(data))
    (tmp_path / "m" / "data" / ".tmp-1-train-0000006-0000008.parquet").write_bytes(b"partial")
    lines = []
    report = merge_runs([a, b], tmp_path / "m", judge=None, notify=lines.append)
    assert report["units"] == {"written": 2, "skipped": 2}
    assert any("sha256 differs from its manifest" in line for line in lines)
    after = {k: v for k, v in _digests(tmp_path / "m", skip=("logs", "orphans")).items()}
    assert after == whole and verify_run(tmp_path / "m") == []


def test_include_rejected_takes_annotated_rows_with_their_reasons(tmp_path):
    a = _source(tmp_path / "a", "a", ARC2FACE, _noise(1), rejected={(0, 0), (0, 1), (0, 2), (1, 1)})
    b = _source(tmp_path / "b", "b", ARC2FACE, _noise(2))
    assert merge_runs([a, b], tmp_path / "kept", judge=None)["sources"][0]["identities_taken"] == 3
    report = merge_runs([a, b], tmp_path / "all", judge=None, include_rejected=True)
    assert report["sources"][0]["identities_taken"] == 4
    rows = pq.read_table(tmp_path / "all" / "data")
    assert rows.column("filter_reason").to_pylist().count("no_face") == 4
    manifests = [json.loads(p.read_text()) for p in sorted((tmp_path / "all" / "manifests").glob("*.json"))]
    assert manifests[0]["drops"] == {"no_face": 4} and manifests[0]["rows"] == 6  # accepted = 6 - 4


def test_what_cannot_be_merged_is_refused_in_one_line(tmp_path):
    a = _source(tmp_path / "a", "a", ARC2FACE, _noise(1))
    b = _source(tmp_path / "b", "b", ARC2FACE, _noise(2))
    with pytest.raises(MergeError, match="a run is given twice"):
        merge_runs([a, a], tmp_path / "m", judge=None)
    with pytest.raises(MergeError, match="is one of the runs: sources are never modified"):
        merge_runs([a, b], b, judge=None)
    with pytest.raises(MergeError, match="two or more runs"):
        merge_runs([a], tmp_path / "m", judge=None)
    with pytest.raises(MergeError, match="holds a generated run, not a merge"):
        merge_runs([a, b], _source(tmp_path / "c", "c", ARC2FACE, _noise(4)), judge=None)
    (b / "manifests" / "0000002-0000004.json").unlink()
    with pytest.raises(MergeError, match="does not verify .*0000002-0000004.json"):
        merge_runs([a, b], tmp_path / "m", judge=None)
    noop = tmp_path / "noop"
    _source(noop, "noop", {"kind": "noop"}, _noise(3))
    result = CliRunner().invoke(app, ["merge", str(a), str(noop), "--out", str(tmp_path / "m"), "--judge", "none"])
    assert result.exit_code == 2 and "pipeline rehearsal" in result.output
    assert not (tmp_path / "m").exists()


def test_two_runs_whose_column_types_differ_cannot_share_a_schema(tmp_path):
    a = _source(tmp_path / "a", "a", ARC2FACE, _noise(1))

    def unit_rows(unit):
        ids = np.repeat(np.arange(unit.start, unit.stop), 3)
        idx = np.tile(np.arange(3), unit.stop - unit.start)
        table = rows_table(ids, idx, [png(int(i) * 10 + int(j), 32) for i, j in zip(ids, idx, strict=True)],
                           face_score=pa.array([str(x) for x in range(len(ids))], pa.string()))
        return table, len(ids), {}

    write_run(tmp_path / "b", {"run": {"name": "b"}, "identities": {"count": 4}, "images": {"per_identity": 3},
                               "generator": ARC2FACE, "output": {"identities_per_unit": 2}}, unit_rows)
    with pytest.raises(MergeError, match="column face_score holds float in .* but string in b-"):
        merge_runs([a, tmp_path / "b"], tmp_path / "m", judge=None)


def test_a_merged_run_is_not_generated_again_by_run(tmp_path):
    from facefoundry.pipelines.runner import run
    from facefoundry.runfolder.runinfo import RunFolderError, read_run

    a = _source(tmp_path / "a", "a", ARC2FACE, _noise(1))
    b = _source(tmp_path / "b", "b", ARC2FACE, _noise(2))
    merge_runs([a, b], tmp_path / "m", judge=None)
    (tmp_path / "m" / "manifests" / "0000002-0000004.json").unlink()
    with pytest.raises(RunFolderError, match="a merged dataset is not generated: run `facefoundry merge` again"):
        run(read_run(tmp_path / "m"), tmp_path / "m", repair=True)
