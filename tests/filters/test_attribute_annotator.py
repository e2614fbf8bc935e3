"""The attribute annotator of the filter stage: both estimators from their tiny files, rows without a face, the
columns' types, and that it drops nothing."""

from __future__ import annotations

import io

import dlib
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from realfaces import GROUP_PHOTO, needs_photo, open_group_photo

from facefoundry.attributes import FAIRFACE_RACES, age_group_labels
from facefoundry.dataset.schema import image_struct
from facefoundry.faces.fairface import jpeg_round_trip, predict_resize, predict_size
from facefoundry.faces.genderage import GenderAgeEstimator
from facefoundry.faces.tiny_face_models import write_tiny_fairface, write_tiny_genderage
from facefoundry.filters.attribute_annotator import OUTPUT_FIELDS, AttributeAnnotator
from facefoundry.sections import AttributesConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def open_face_crop():
    """A 300 px piece of the group photo around one face."""
    return open_group_photo().crop((20, 240, 320, 540))


def unit_table(images: list[bytes]) -> pa.Table:
    n = len(images)
    return pa.table({"image": image_struct(images, [f"{i}.png" for i in range(n)]),
                     "identity": pa.array(np.arange(n) // 2, pa.int64()),
                     "gender": pa.array(["stale"] * n)})  # an old column of the same name is replaced


def test_genderage_on_aligned_crops(tmp_path):
    model = write_tiny_genderage(tmp_path / "genderage.onnx", seed=1)
    cfg = AttributesConfig(model=str(model), detector_model=None, age_edges=[10, 30], batch_size=2)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    table = unit_table([png(c) for c in crops] + [b"not an image"])
    out = AttributeAnnotator(cfg).process(table).table
    assert out.num_rows == 4 and out.column_names[:2] == ["image", "identity"]
    assert out.schema.field("gender").type == pa.string() and out.column_names[2:] == [f.name for f in OUTPUT_FIELDS]
    rows = out.to_pylist()
    # the whole image is the box: the same as calling the estimator with full-image boxes
    expected = GenderAgeEstimator(model).estimate(crops, np.array([[0, 0, 112, 112]] * 3, np.float32))
    for row, age, gender, score in zip(rows[:3], expected.age, expected.gender, expected.gender_score, strict=False):
        assert row["age"] == pytest.approx(float(age)) and row["gender"] == gender
        assert row["gender_score"] == pytest.approx(float(score), rel=1e-5)
        assert row["age_group"] in age_group_labels([10, 30]) and row["race"] is None
    assert all(rows[3][f.name] is None for f in OUTPUT_FIELDS)  # undecodable: nulls, and the row stays


@needs_photo
def test_fairface_finds_faces_with_dlib(tmp_path):
    model = write_tiny_fairface(tmp_path / "fairface.pt", seed=0)
    cfg = AttributesConfig(estimator="fairface", model=str(model), age_edges=[20, 40, 60], device="cpu")
    photo = np.asarray(open_group_photo())
    noise = np.random.default_rng(1).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    annotator = AttributeAnnotator(cfg)
    found = annotator.annotate([photo, noise, None])
    assert found[1] is None and found[2] is None  # no face in noise; nothing to decode
    row = found[0]
    assert row["race"] in FAIRFACE_RACES and row["gender"] in ("female", "male")
    assert row["age_group"] in age_group_labels([20, 40, 60]) and row["age"] is None
    assert 0 < row["race_score"] <= 1 and 0 < row["age_score"] <= 1
    # the largest dlib face of the 800 px copy predict.py detects on, chipped at 300 px and round-tripped through
    # JPEG as predict.py does: the same estimate directly
    small = predict_resize(photo)
    det = max(annotator.detector.detect(small), key=lambda d: d.area)
    chip = annotator.estimator.chip(small, annotator.detector.shape(small, det))
    direct = annotator.estimator.estimate_chips(jpeg_round_trip([chip]))
    assert small.shape == (553, 800, 3) and chip.shape == (300, 300, 3) and direct.race[0] == row["race"]
    assert row["race_score"] == pytest.approx(float(direct.race_probs[0].max()), rel=1e-6)


def test_predict_size_as_fairface_predict_py():
    # the longer side becomes 800 (width only when strictly wider), the other int(800 * short / long)
    assert predict_size(886, 1280) == (553, 800)
    assert predict_size(1000, 600) == (800, 480)
    assert predict_size(112, 112) == (800, 800)  # smaller photos are enlarged too
    assert predict_size(200, 300) == (533, 800)
    big = np.random.default_rng(0).integers(0, 256, (900, 1200, 3), dtype=np.uint8)
    assert predict_resize(big).shape == (600, 800, 3)
    assert np.array_equal(predict_resize(big), dlib.resize_image(big, rows=600, cols=800))


def test_jpeg_round_trip_is_dlibs_quality_75(tmp_path):
    chip = np.asarray(open_face_crop()) if GROUP_PHOTO else np.full((300, 300, 3), 128, np.uint8)
    out = jpeg_round_trip([chip, chip])[0]
    dlib.save_image(np.ascontiguousarray(chip), str(tmp_path / "c.jpg"), 75)
    assert np.array_equal(out, dlib.load_rgb_image(str(tmp_path / "c.jpg")))
    assert out.shape == chip.shape and (GROUP_PHOTO is None or not np.array_equal(out, chip))


@needs_photo
@pytest.mark.parametrize("scale", [0.5, 1.6])  # a photo smaller and one larger than 800 px
def test_fairface_detects_and_chips_on_the_800px_copy(tmp_path, scale):
    model = write_tiny_fairface(tmp_path / "fairface.pt", seed=0)
    annotator = AttributeAnnotator(AttributesConfig(estimator="fairface", model=str(model), age_edges=[20]))
    annotator.setup()
    photo = open_group_photo()
    photo = np.asarray(photo.resize((int(photo.width * scale), int(photo.height * scale))))
    seen, chips = [], []
    detect, estimate = annotator.detector.detect, annotator.estimator.estimate_chips
    annotator.detector.detect = lambda image, upsample: seen.append((image.shape, upsample)) or detect(image, upsample)
    annotator.estimator.estimate_chips = lambda c: chips.extend(c) or estimate(c)
    row = annotator.annotate([photo])[0]
    assert seen == [((553, 800, 3), 1)] and row is not None
    assert len(chips) == 1 and chips[0].shape == (300, 300, 3)
    assert annotator.estimator.preprocess(chips).shape == (1, 3, 224, 224)
    small = predict_resize(photo)
    det = max(detect(small, 1), key=lambda d: d.area)
    expected = jpeg_round_trip([annotator.estimator.chip(small, annotator.detector.shape(small, det))])[0]
    assert np.array_equal(chips[0], expected)


def test_fairface_cnn_detector_from_a_dat_file(tmp_path):
    from facefoundry.faces.dlib_models import CNN_DETECTOR_FILE, models_dir
    from facefoundry.pipelines.preflight import PreflightError, check_model_files

    model = write_tiny_fairface(tmp_path / "fairface.pt", seed=0)
    missing = AttributesConfig(estimator="fairface", model=str(model), age_edges=[20],
                               detector_model=str(tmp_path / CNN_DETECTOR_FILE))
    files = AttributeAnnotator.model_files(missing)
    assert [f.role for f in files] == ["attributes.model", "attributes.detector_model"]
    with pytest.raises(PreflightError, match=CNN_DETECTOR_FILE) as err:
        check_model_files(files)
    assert "\n" not in str(err.value) and "attributes.detector_model" in str(err.value)
    shipped = missing.model_copy(update={"detector_model": str(models_dir() / CNN_DETECTOR_FILE)})
    check_model_files(AttributeAnnotator.model_files(shipped))
    annotator = AttributeAnnotator(shipped)
    annotator.setup()
    assert annotator.detector.detector_kind == "cnn"
    hog = AttributeAnnotator(missing.model_copy(update={"detector_model": "models/antelopev2"}))  # not a .dat: HOG
    hog.setup()
    assert hog.detector.detector_kind == "hog" and len(AttributeAnnotator.model_files(hog.cfg)) == 1


def test_model_files_name_what_setup_loads(tmp_path):
    files = AttributeAnnotator.model_files(AttributesConfig(model="models/buffalo_l"))
    assert [f.role for f in files] == ["attributes.model", "attributes.detector_model"]
    fair = AttributeAnnotator.model_files(AttributesConfig(estimator="fairface", model="m/ff.pt", age_edges=[20]))
    assert [f.role for f in fair] == ["attributes.model"]
    with pytest.raises(FileNotFoundError, match="genderage"):
        AttributeAnnotator(AttributesConfig(model=str(tmp_path / "nowhere"), detector_model=None)).setup()


def test_demo_crop_and_input_as_6drepnet_demo():
    from facefoundry.faces.sixdrepnet import demo_crop, demo_input

    image = np.arange(200 * 150 * 3, dtype=np.uint32).reshape(200, 150, 3).astype(np.uint8)
    # box 40 wide, 80 high: x widened by 0.2 * 80 = 16, y by 0.2 * 40 = 8 (demo.py's crossed terms), clipped at 0
    crop = demo_crop(image, np.array([10, 20, 50, 100, 0.9]))
    assert np.array_equal(crop, image[12:108, 0:66])
    square = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    x = demo_input([square, crop])
    assert x.shape == (2, 3, 224, 224)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (square / 255.0 - mean) / std  # 224 x 224: Resize and CenterCrop change nothing
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_head_pose_columns_from_6drepnet(tmp_path):
    import torch

    from facefoundry.faces.sixdrepnet import demo_input, euler_from_rotation, load_sixdrepnet
    from facefoundry.faces.tiny_face_models import write_tiny_sixdrepnet

    pose = write_tiny_sixdrepnet(tmp_path / "6DRepNet_300W_LP_AFLW2000.pth", seed=3)
    model = write_tiny_genderage(tmp_path / "genderage.onnx", seed=1)
    cfg = AttributesConfig(model=str(model), detector_model=None, pose_model=str(pose), device="cpu")
    crops = [np.random.default_rng(s).integers(0, 256, (112, 112, 3), dtype=np.uint8) for s in range(3)]
    rows = AttributeAnnotator(cfg).process(unit_table([png(c) for c in crops])).table.to_pylist()
    with torch.inference_mode():  # the whole image is the box; demo.py's widening is clipped to the image
        want = euler_from_rotation(load_sixdrepnet(pose)(demo_input(crops))).numpy()
    for row, (pitch, yaw, roll) in zip(rows, want, strict=True):
        assert row["head_yaw"] == pytest.approx(yaw, abs=1e-3) and row["head_pitch"] == pytest.approx(pitch, abs=1e-3)
        assert row["head_roll"] == pytest.approx(roll, abs=1e-3)
    assert len({round(r["head_yaw"], 3) for r in rows}) == 3
    without = AttributeAnnotator(AttributesConfig(model=str(model), detector_model=None))
    assert all(r["head_yaw"] is None for r in without.process(unit_table([png(crops[0])])).table.to_pylist())
