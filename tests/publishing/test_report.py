"""``build_report`` on small run folders built without Ray: planted scores in, exact numbers out."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from runfolder import write_run

from facefoundry.config import load_config
from facefoundry.dataset.schema import image_struct
from facefoundry.faces.quality import pose_proxies
from facefoundry.filters.face_filter import OUTPUT_FIELDS, REASONS
from facefoundry.publishing import report
from facefoundry.publishing.report import PLOTS, ReportError, build_report
from facefoundry.runfolder.runfacts import read_run_facts
from facefoundry.runfolder.runinfo import prepare_run_folder

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
PER = 5  # images per identity
# Planted rejections: (identity, image_index) -> reason; identity 5 loses every image.
REJECT = {(1, 4): "no_face", (2, 3): "identity_mismatch", (2, 4): "identity_mismatch", (3, 0): "multiple_faces"}
REJECT |= {(5, j): "no_face" for j in range(PER)}
NOSE_X = 50 + 0.1 * 28  # eye centres (36, 40) and (64, 40): yaw proxy 0.1, pitch proxy 20 / 28, roll 0
LANDMARKS = [70, 40, 58, 40, 30, 40, 42, 40, NOSE_X, 60]


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def row_scores(identity: int, j: int) -> dict:
    reason = REJECT.get((identity, j))
    if reason == "no_face":
        return dict(face_count=0, face_score=None, face_box=None, landmarks=None, judge_distance=None,
                    judge_similarity=None, judge_other_distance=None, filter_reason=reason)
    judged = reason != "multiple_faces"
    return dict(
        face_count=2 if reason == "multiple_faces" else 1,
        face_score=0.5 + 0.1 * j,
        face_box=[20.0, 20.0, 80.0, 80.0],
        landmarks=LANDMARKS,
        judge_distance=(0.7 if reason else 0.4) if judged else None,
        judge_similarity=(0.6 if reason else 0.9 + 0.01 * j) if judged else None,
        judge_other_distance=0.9 if judged else None,
        filter_reason=reason,
    )


def unit_table(start: int, stop: int, null_scores: bool = False) -> pa.Table:
    keys = [(i, j) for i in range(start, stop) for j in range(PER)]
    scores = [row_scores(i, j) for i, j in keys]
    if null_scores:  # a run of noise: no face anywhere
        scores = [row_scores(5, 0) for _ in keys]
    columns = {
        "image": image_struct([png(40 * i + j) for i, j in keys], [f"{i}_{j}.png" for i, j in keys]),
        "identity": pa.array([i for i, _ in keys], pa.int64()),
        "image_index": pa.array([j for _, j in keys], pa.int32()),
        "seed": pa.array(range(len(keys)), pa.int64()),
    }
    columns |= {f.name: pa.array([s[f.name] for s in scores], f.type) for f in OUTPUT_FIELDS}
    return pa.table(columns)


def make_run(root, mode: str = "annotate", null_scores: bool = False):
    overrides = [f"filter.mode={mode}", "identities.count=6", f"images.per_identity={PER}",
                 "output.identities_per_unit=2"]

    def unit_rows(unit):
        table = unit_table(unit.start, unit.stop, null_scores)
        reasons = table.column("filter_reason").to_pylist()
        drops = {r: reasons.count(r) for r in set(reasons) - {None}}
        if mode == "drop":
            table = table.filter(pa.array([r is None for r in reasons]))
        return table, len(reasons), drops

    cfg = write_run(root, load_config(SMOKE, overrides), unit_rows, metadata=lambda _: {"run_id": "test"})
    return cfg


def check_pngs(folder):
    for name in PLOTS:
        with Image.open(folder / name) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert 400 <= width <= 4000 and 200 <= height <= 4000, (name, image.size)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["annotate", "drop"])
def test_report_numbers_match_planted_run(tmp_path, mode):
    make_run(tmp_path, mode)
    # Not done units: an interrupted atomic write, another config's manifest, a shard of the wrong size.
    manifests = tmp_path / "manifests"
    text = (manifests / "0000000-0000002.json").read_text()
    (manifests / ".tmp-1-0000000-0000002.json").write_text(text)
    (manifests / "0000006-0000008.json").write_text(json.dumps(json.loads(text) | {"config_hash": "other"}))
    (manifests / "0000008-0000010.json").write_text(json.dumps(json.loads(text) | {"bytes": 1}))
    summary = build_report(tmp_path)
    check_pngs(tmp_path / "report")
    assert json.loads((tmp_path / "report" / "summary.json").read_text()) == summary
    assert summary["filter_mode"] == mode
    assert summary["units"] == {"done": 3, "planned": 3}
    images = summary["images"]
    assert images["generated"] == 30 and images["accepted"] == 21 and images["rejected"] == 9
    assert images["stored"] == (30 if mode == "annotate" else 21)
    assert images["acceptance"] == pytest.approx(0.7) and images["acceptance_pct"] == pytest.approx(70.0)
    planted = {"no_face": 6, "multiple_faces": 1, "identity_mismatch": 2}
    assert summary["drops"] == {r: planted.get(r, 0) for r in REASONS}  # every reason, in decision order
    assert summary["identities"]["count"] == 6 and summary["identities"]["nn_cosine"]["max"] <= 0.3
    per = summary["images_per_identity"]
    assert per["sample"]["histogram"] == {"0": 1, "3": 1, "4": 2, "5": 2}
    assert per["mean_accepted"] == pytest.approx(21 / 6) and per["target"] == PER
    # Manifest stats aggregated with count weights = stats over all stored rows.
    stored = [row_scores(i, j) for i in range(6) for j in range(PER)]
    if mode == "drop":
        stored = [s for s in stored if s["filter_reason"] is None]
    scores = np.array([s["face_score"] for s in stored if s["face_score"] is not None], np.float32)
    col = summary["columns"]["face_score"]
    assert col["count"] == scores.size and col["mean"] == pytest.approx(scores.mean(), rel=1e-6)
    assert col["min"] == pytest.approx(0.5) and col["max"] == pytest.approx(0.9)
    sim = summary["consistency"]["judge_similarity"]
    assert sim["accepted"]["count"] == 21 and sim["accepted"]["min"] == pytest.approx(0.9)
    assert sim["rejected"]["count"] == (2 if mode == "annotate" else 0)
    pose = summary["pose"]
    assert pose["yaw_proxy"]["count"] == len([s for s in stored if s["landmarks"]])
    assert pose["yaw_proxy"]["p50"] == pytest.approx(0.1, abs=1e-5)
    assert pose["roll_deg"]["max"] == pytest.approx(0.0, abs=1e-6)
    assert summary["grid"] == {"identities": 6 if mode == "annotate" else 5, "images": len(stored)}
    assert summary["sample"]["rows"] == len(stored) and summary["sample"]["shards_read"] == 3


@pytest.mark.slow
def test_sample_is_bounded_and_deterministic(tmp_path, monkeypatch):
    make_run(tmp_path)
    a = build_report(tmp_path, tmp_path / "a", max_rows=15, seed=3)
    check_pngs(tmp_path / "a")
    assert a["sample"]["rows"] == 15 and a["sample"]["max_rows"] == 15
    assert a["sample"]["shards_read"] == 2 and a["sample"]["last_shard_cut"] is True
    assert a["images"]["generated"] == 30  # manifest numbers never depend on the sample
    assert a["images_per_identity"]["sample"]["identities"] == 2  # only whole shards count
    manifests = read_run_facts(tmp_path).manifests
    first, again = (report._sample(tmp_path, manifests, 15, 3) for _ in range(2))
    assert first["info"] == again["info"] == a["sample"]
    assert np.array_equal(first["identity"], again["identity"])
    monkeypatch.setattr(report, "MAX_SAMPLE_SHARDS", 1)  # many small shards: the shard bound ends the sample
    few = report._sample(tmp_path, manifests, 10**6, 3)["info"]
    assert (few["shards_read"], few["rows"], few["max_shards"]) == (1, 2 * PER, 1)
    other = report._sample(tmp_path, manifests, 15, 4)["identity"]
    assert not np.array_equal(np.unique(first["identity"]), np.unique(other))  # the seed picks the shards


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["annotate", "drop"])
def test_run_without_faces_reports_no_data(tmp_path, mode):
    make_run(tmp_path, mode, null_scores=True)  # drop mode: every shard is empty
    summary = build_report(tmp_path)
    check_pngs(tmp_path / "report")
    assert summary["images"]["accepted"] == 0 and summary["drops"]["no_face"] == 30
    assert summary["images"]["stored"] == (30 if mode == "annotate" else 0)
    assert summary["grid"]["identities"] == (6 if mode == "annotate" else 0)
    assert summary["columns"] == {}
    assert summary["consistency"]["judge_similarity"] == {"accepted": {"count": 0}, "rejected": {"count": 0}}
    assert summary["pose"]["yaw_proxy"] == {"count": 0}
    assert summary["images_per_identity"]["sample"]["histogram"] == {"0": 6}


def test_not_a_run_or_nothing_done(tmp_path):
    with pytest.raises(ReportError, match="not a facefoundry run"):
        build_report(tmp_path)
    cfg = load_config(SMOKE)
    prepare_run_folder(tmp_path, cfg)
    with pytest.raises(ReportError, match="no finished unit"):
        build_report(tmp_path)


def test_pose_proxies_and_reason_order(tmp_path):
    make_run(tmp_path)
    assert tuple(read_run_facts(tmp_path).drops(with_zeros=True)) == REASONS  # the filter's decision order
    lm = np.array([LANDMARKS, [np.nan] * 10, [30, 40, 42, 40, 70, 40, 58, 40, 50, 60]], np.float64)
    got = pose_proxies(lm)
    assert got["yaw_proxy"][0] == pytest.approx(0.1) and got["pitch_proxy"][0] == pytest.approx(20 / 28)
    assert np.isnan(got["yaw_proxy"][1])
    assert abs(got["roll_deg"][2]) == pytest.approx(180.0)  # eyes swapped: upside-down face
