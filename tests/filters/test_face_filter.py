"""The dlib face filter on real faces (insightface's sample group photo), noise and broken bytes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from facecrops import IMAGE_TYPE, PERSON_A, PERSON_B, PERSON_C, crop, encode, noise, unit, views
from PIL import Image
from realfaces import needs_photo, open_group_photo

from facefoundry.faces import dlib_models
from facefoundry.faces.dlib_models import LANDMARK_ORDER, DlibFaceModel, DlibModelError, model_path
from facefoundry.filters.face_filter import (
    IDENTITY_CONFUSION,
    IDENTITY_MISMATCH,
    LOW_FACE_SCORE,
    MULTIPLE_FACES,
    NO_FACE,
    UNDECODABLE,
    FaceFilter,
)
from facefoundry.sections import DlibFilterConfig


@pytest.fixture(scope="module")
def model() -> DlibFaceModel:
    return DlibFaceModel("hog")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return open_group_photo()


def make_filter(model: DlibFaceModel, **kw) -> FaceFilter:
    filt = FaceFilter(DlibFilterConfig(**kw))
    filt.model = model  # share the loaded models across tests
    return filt


def test_model_files_located_by_path():
    for name in (dlib_models.SHAPE_5_FILE, dlib_models.RECOGNITION_FILE, dlib_models.CNN_DETECTOR_FILE):
        assert model_path(name).is_file()


def test_missing_model_file_and_package_are_clear(tmp_path, monkeypatch):
    with pytest.raises(DlibModelError, match="shape_predictor_5_face_landmarks.dat.*pip install face-recogn"):
        model_path(dlib_models.SHAPE_5_FILE, tmp_path)
    monkeypatch.setattr(dlib_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DlibModelError, match="face_recognition_models.*pip install face-recognition-models"):
        dlib_models.models_dir()


@needs_photo
def test_detector_finds_all_six_faces(model, photo):
    img = np.asarray(photo)
    dets = model.detect(img, upsample=1, threshold=0.0)
    assert len(dets) == 6
    for det in dets:
        pts = model.landmarks(img, det)
        assert pts.shape == (len(LANDMARK_ORDER), 2)
        x0, y0, x1, y1 = det.box
        assert ((pts[:, 0] > x0 - 5) & (pts[:, 0] < x1 + 5) & (pts[:, 1] > y0 - 5) & (pts[:, 1] < y1 + 5)).all()
        assert pts[0, 0] > pts[1, 0] > pts[3, 0] > pts[2, 0]  # documented order, frontal faces
        assert pts[4, 1] > pts[:4, 1].max()  # nose base below the eyes
    out = make_filter(model, mode="annotate").process(unit([encode(photo, "JPEG", quality=95)], [0]))
    row = out.table.to_pylist()[0]
    assert row["face_count"] == 6 and row["filter_reason"] == MULTIPLE_FACES
    assert out.drops == {MULTIPLE_FACES: 1}


@pytest.mark.slow
@needs_photo
def test_same_person_views_kept_and_intruder_rejected(model, photo):
    a, c = views(photo, PERSON_A), views(photo, PERSON_C)
    table = unit(a + c, [0] * len(a) + [1] * len(c))
    kept = make_filter(model, mode="drop").process(table)
    assert kept.drops == {} and kept.table.num_rows == len(a) + len(c)
    rows = kept.table.to_pylist()
    assert all(r["face_count"] == 1 and r["face_score"] > 0 for r in rows)
    assert all(0 <= r["judge_distance"] < 0.6 and r["judge_similarity"] > 0.9 for r in rows)
    assert all(r["filter_reason"] is None for r in rows)

    intruder = encode(crop(photo, PERSON_B))
    table = unit(a[:3] + [intruder] + c, [0] * 4 + [1] * len(c))
    out = make_filter(model, mode="drop").process(table)
    assert out.drops == {IDENTITY_MISMATCH: 1}
    assert 3 not in out.table.column("image_index").to_pylist()
    assert out.table.num_rows == 3 + len(c)
    annotated = make_filter(model, mode="annotate").process(table).table.to_pylist()
    assert [r["filter_reason"] for r in annotated] == [None] * 3 + [IDENTITY_MISMATCH] + [None] * len(c)
    assert annotated[3]["judge_distance"] > 0.6
    assert all(r["judge_distance"] < 0.6 for i, r in enumerate(annotated) if i != 3)


@needs_photo
def test_low_face_score_keeps_the_best_candidate(model, photo):
    out = make_filter(model, mode="annotate", min_face_score=5.0).process(unit([encode(crop(photo, PERSON_A))], [0]))
    row = out.table.to_pylist()[0]
    assert row["filter_reason"] == LOW_FACE_SCORE and row["face_count"] == 0
    assert 0 < row["face_score"] < 5.0 and row["face_box"] is not None and len(row["landmarks"]) == 10
    assert row["judge_distance"] is None and out.drops == {LOW_FACE_SCORE: 1}


def test_noise_has_no_face(model):
    table = unit([noise(0), noise(1), noise(2)], [0, 0, 1])
    dropped = make_filter(model, mode="drop").process(table)
    assert dropped.table.num_rows == 0 and dropped.drops == {NO_FACE: 3}
    annotated = make_filter(model, mode="annotate").process(table)
    assert annotated.drops == {NO_FACE: 3} and annotated.table.num_rows == 3
    for row in annotated.table.to_pylist():
        assert row["filter_reason"] == NO_FACE and row["face_count"] == 0
        assert row["face_score"] is None and row["face_box"] is None and row["landmarks"] is None
        assert row["judge_distance"] is None and row["judge_similarity"] is None


def test_undecodable_bytes_do_not_stop_the_unit(model):
    table = unit([b"not an image", None, encode(Image.new("RGB", (8, 8)))[:20], noise(3)], [0, 0, 0, 1])
    out = make_filter(model, mode="annotate").process(table)
    reasons = out.table.column("filter_reason").to_pylist()
    assert reasons == [UNDECODABLE, UNDECODABLE, UNDECODABLE, NO_FACE]
    assert out.table.column("face_count").to_pylist() == [None, None, None, 0]
    assert out.drops == {UNDECODABLE: 3, NO_FACE: 1}


def test_schema_is_stable_whatever_the_data(model):
    table = unit([noise(4), b"broken"], [0, 1])
    expected = table.schema
    for f in FaceFilter.output_schema():
        expected = expected.append(f)
    results = [
        make_filter(model, mode="drop").process(table).table,  # everything dropped
        make_filter(model, mode="annotate").process(table).table,  # all-null score columns
        make_filter(model, mode="drop").process(table.slice(0, 0)).table,  # empty unit
        make_filter(model, mode="annotate").process(make_filter(model).process(table).table).table,  # re-run
    ]
    for result in results:
        assert result.schema == expected
    assert pa.concat_tables(results).num_rows == 2


def test_setup_is_lazy_and_idempotent_and_input_is_checked():
    filt = FaceFilter(DlibFilterConfig())
    assert filt.model is None
    filt.setup()
    first = filt.model
    filt.setup()
    assert filt.model is first
    assert filt.model.info()["judge"] == dlib_models.RECOGNITION_FILE
    with pytest.raises(KeyError, match="identity"):
        filt.process(pa.table({"image": pa.array([], IMAGE_TYPE)}))


@pytest.mark.slow
@needs_photo
def test_a_face_of_another_identity_is_rejected_as_a_confusion(model, photo):
    # identity 0 = person A, identity 1 = person C; one image of C labelled 0 looks like identity 1
    a, c = views(photo, PERSON_A), views(photo, PERSON_C)
    table = unit(a[:3] + [c[0]] + c[1:], [0] * 4 + [1] * (len(c) - 1))
    out = make_filter(model, mode="annotate").process(table)
    rows = out.table.to_pylist()
    assert [r["filter_reason"] for r in rows] == [None] * 3 + [IDENTITY_CONFUSION] + [None] * (len(c) - 1)
    assert out.drops == {IDENTITY_CONFUSION: 1}
    confused = rows[3]
    assert confused["judge_other_distance"] < 0.3 < 0.6 < confused["judge_distance"]
    assert all(r["judge_other_distance"] > r["judge_distance"] + 0.3 for i, r in enumerate(rows) if i != 3)
    # a margin larger than the gap between people makes everyone look like everyone: the rule really compares,
    # and of two identities (4 faces each) that look alike it keeps the lower index, rejecting all of identity 1
    strict = make_filter(model, mode="annotate", judge_confusion_margin=5.0, max_judge_distance=5.0).process(table)
    assert strict.table.column("filter_reason").to_pylist() == [None] * 4 + [IDENTITY_CONFUSION] * 4
