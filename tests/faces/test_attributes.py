"""Attribute estimators: InsightFace's genderage.onnx and FairFace, on tiny random-weight files in the real formats."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from landmarkfaces import PHOTOS
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from realfaces import needs_photo

from facefoundry.faces import fairface, genderage
from facefoundry.faces.dlib_models import DlibFaceModel
from facefoundry.faces.face_weights import FaceWeightsError, FaceWeightsNotFoundError
from facefoundry.faces.fairface import FairFaceEstimator, FairFaceResNet, load_fairface
from facefoundry.faces.genderage import (
    GenderAgeEstimator,
    GenderAgeModelError,
    GenderAgeModelNotFoundError,
    crop_face,
)
from facefoundry.faces.tiny_face_models import write_tiny_fairface, write_tiny_genderage

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = ["CPUExecutionProvider"]
HANKS = PHOTOS["hanks"][0]


def constant_graph(path: Path, values, size: int = 96, batch: int | str = "n") -> Path:
    """``[batch, 3, size, size] -> [batch, len(values)]``, every row equal to ``values`` (no Sub/Mul/bn_data)."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flat"),
        helper.make_node("MatMul", ["flat", "zeros"], ["nothing"], name="zero"),
        helper.make_node("Add", ["nothing", "values"], ["out"], name="const"),
    ]
    values = np.asarray(values, np.float32)
    inits = [numpy_helper.from_array(np.zeros((3, len(values)), np.float32), "zeros"),
             numpy_helper.from_array(values, "values")]
    graph = helper.make_graph(
        nodes, "const", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, len(values)])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def ga_models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("genderage")
    (folder / "pack").mkdir()
    return {
        "dynamic": write_tiny_genderage(folder / "pack" / "genderage.onnx"),
        "batch1": write_tiny_genderage(folder / "batch1.onnx", batch=1),
        "male34": constant_graph(folder / "male.onnx", [0.2, 1.3, 0.257]),
    }


@pytest.fixture(scope="module")
def faces():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (90 + 7 * i, 120 - 5 * i, 3), dtype=np.uint8) for i in range(5)]
    boxes = np.array([[10, 12, 70, 80], [0, 0, 50, 40], [-20, 30, 60, 90], [33.3, 5.5, 61.7, 77.1], [5, 5, 95, 60]])
    return images, boxes.astype(np.float32)


# --- genderage.onnx -----------------------------------------------------------------------------------------


def test_crop_equals_insightface_transform_restated(faces):
    """face_align.transform: scikit-image transforms t1 (scale) + t2 (-centre * scale) + t3 (rotation 0) + t4."""
    from skimage.transform import SimilarityTransform

    image, box = faces[0][3], faces[1][3]
    x1, y1, x2, y2 = box
    s = 96 / (max(x2 - x1, y2 - y1) * 1.5)
    cx, cy = (x2 + x1) / 2 * s, (y2 + y1) / 2 * s
    parts = [SimilarityTransform(scale=s), SimilarityTransform(translation=(-cx, -cy)),
             SimilarityTransform(rotation=0.0), SimilarityTransform(translation=(48, 48))]
    matrix = parts[3].params @ parts[2].params @ parts[1].params @ parts[0].params
    np.testing.assert_array_equal(genderage.crop_matrix(box), matrix[:2])
    expected = cv2.warpAffine(image, matrix[:2], (96, 96), borderValue=0.0)
    np.testing.assert_array_equal(crop_face(image, box), expected)
    m = genderage.crop_matrix(box)  # box centre -> crop centre; the box's longer side spans 96 / 1.5 = 64 px
    np.testing.assert_allclose(m @ [(x1 + x2) / 2, (y1 + y2) / 2, 1], [48, 48], atol=1e-4)
    np.testing.assert_allclose(m[:, :2] @ [x2 - x1, y2 - y1], [64 * (x2 - x1) / (y2 - y1), 64], rtol=1e-5)


def test_blob_equals_blobfromimage_on_bgr(ga_models, faces):
    images, boxes = faces
    est = GenderAgeEstimator(ga_models["male34"], providers=CPU)
    assert (est.input_mean, est.input_std) == (127.5, 128.0)  # no in-graph normalisation: Attribute's default
    assert (GenderAgeEstimator(ga_models["dynamic"], providers=CPU).input_mean,) == (0.0,)  # bn_data first
    bgr_crops = [crop_face(np.ascontiguousarray(im[:, :, ::-1]), b) for im, b in zip(images, boxes, strict=True)]
    expected = np.concatenate([cv2.dnn.blobFromImage(c, 1.0 / 128.0, (96, 96), (127.5,) * 3, swapRB=True)
                               for c in bgr_crops])  # fmt: skip
    np.testing.assert_allclose(est.preprocess(images, boxes), expected, rtol=0, atol=1e-6)


def test_decoding_of_constant_outputs(ga_models, faces):
    res = GenderAgeEstimator(ga_models["male34"], providers=CPU).estimate(*faces)
    assert res.gender == ["male"] * 5 and res.age.dtype == np.float32
    np.testing.assert_array_equal(res.age, 26.0)  # round(0.257 * 100)
    np.testing.assert_allclose(res.gender_score, 1 / (1 + np.exp(-1.1)), rtol=1e-6)
    dec = genderage.decode(np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.014], [-3, 3, 0.996]], np.float32))
    assert dec.gender == ["female", "female", "male"] and len(dec) == 3  # a tie goes to index 0, as np.argmax
    np.testing.assert_array_equal(dec.age, [50, 1, 100])
    np.testing.assert_allclose(dec.gender_score, [1 / (1 + np.exp(-3)), 0.5, 1 / (1 + np.exp(-6))], rtol=1e-6)


def test_batching_and_fixed_batch_graph_agree(ga_models, faces):
    one_by_one = GenderAgeEstimator(ga_models["dynamic"], providers=CPU, batch_size=1).predict(*faces)
    for key, batch in (("dynamic", 2), ("dynamic", 64), ("batch1", 64)):
        est = GenderAgeEstimator(ga_models[key], providers=CPU, batch_size=batch)
        np.testing.assert_allclose(est.predict(*faces), one_by_one, rtol=1e-5, atol=1e-6)
    assert GenderAgeEstimator(ga_models["batch1"], providers=CPU).batch_size == 1
    pack = GenderAgeEstimator(ga_models["dynamic"].parent, providers=CPU)  # a pack folder
    assert pack.model_path.name == "genderage.onnx" and len(pack.estimate([], np.zeros((0, 4)))) == 0


@needs_photo
def test_equals_insightface_attribute(ga_models):
    from insightface.app.common import Face
    from insightface.model_zoo import get_model
    from insightface.model_zoo.attribute import Attribute

    rgb = np.asarray(Image.open(PHOTOS["t1"][0]).convert("RGB"))
    boxes = np.array([[100, 120, 180, 230], [300.5, 80.2, 370.9, 170.4], [520, 60, 600, 150]], np.float32)
    ours = GenderAgeEstimator(ga_models["dynamic"], providers=CPU).estimate([rgb] * 3, boxes)
    for key in ("dynamic", "male34"):
        ref = get_model(str(ga_models[key]), providers=CPU)
        assert isinstance(ref, Attribute) and ref.taskname == "genderage"
        est = GenderAgeEstimator(ga_models[key], providers=CPU)
        assert (est.input_mean, est.input_std) == (ref.input_mean, ref.input_std)
    ref = get_model(str(ga_models["dynamic"]), providers=CPU)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # InsightFace reads BGR
    expected = [ref.get(bgr, Face(bbox=b)) for b in boxes]
    assert ours.gender == [("female", "male")[g] for g, _ in expected]
    np.testing.assert_array_equal(ours.age, [a for _, a in expected])


def test_genderage_errors(ga_models, faces, tmp_path):
    with pytest.raises(GenderAgeModelNotFoundError, match=r"genderage\.onnx.*buffalo_l.*antelopev2.*non-commercial"):
        GenderAgeEstimator(tmp_path / "genderage.onnx")
    with pytest.raises(FileNotFoundError, match="genderage.onnx"):
        GenderAgeEstimator(tmp_path)  # a folder without it
    with pytest.raises(GenderAgeModelError, match=r"\[N, 3, 96, 96\]"):
        GenderAgeEstimator(constant_graph(tmp_path / "arc.onnx", [0.0] * 3, size=112))
    with pytest.raises(GenderAgeModelError, match=r"output \[N, 3\]"):
        GenderAgeEstimator(constant_graph(tmp_path / "four.onnx", [0.0] * 4))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="junk.onnx"):
        GenderAgeEstimator(tmp_path / "junk.onnx")
    est = GenderAgeEstimator(ga_models["male34"], providers=CPU)
    images, boxes = faces
    bad_box = boxes.copy()
    bad_box[2, 1] = np.nan
    for imgs, bxs, msg in [
        (images, boxes[:4], "one box per image"), (images, boxes[:, :3], r"\(N, 4\)"),
        (images, np.c_[boxes, boxes[:, :1]], r"boxes\[:, :4\]"), (images, bad_box, "finite"),
        (images, np.where(np.arange(5)[:, None] == 1, [5, 5, 5, 5], boxes), "empty"),
        ([images[0][:, :, 0]] + images[1:], boxes, "H x W x 3 uint8"),
        ([images[0].astype(np.float32)] + images[1:], boxes, "uint8"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            est.estimate(imgs, bxs)


# --- FairFace -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ff_file(tmp_path_factory) -> Path:
    return write_tiny_fairface(tmp_path_factory.mktemp("fairface") / fairface.FAIRFACE_FILE)


def test_official_resnet34_layout_and_size():
    with torch.device("meta"):
        net = FairFaceResNet()
    # torchvision resnet34: 21,797,672 parameters with its 1000-way fc (512 * 1000 + 1000); FairFace's is 18-way
    assert sum(p.numel() for p in net.parameters()) == 21_797_672 - 513_000 + 512 * 18 + 18 == 21_293_906
    keys = set(net.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.2.bn2.num_batches_tracked", "layer2.0.downsample.0.weight",
            "layer3.5.conv2.weight", "layer4.0.downsample.1.running_mean", "fc.weight", "fc.bias"} <= keys
    assert not any(k.startswith(("layer1.0.downsample", "layer5", "layer4.3")) for k in keys)


def test_tiny_file_loads_through_the_official_loader(ff_file):
    state = torch.load(ff_file, weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    model = load_fairface(ff_file)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3] and not model.training
    assert model.fc.weight.shape == (18, 16) and model.conv1.weight.shape[0] == 4
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    # the published file is from 2019: torch's legacy (pre-zip) format; very old files lack num_batches_tracked
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(legacy, ff_file.with_name("legacy.pt"), _use_new_zipfile_serialization=False)
    assert torch.equal(load_fairface(ff_file.with_name("legacy.pt")).fc.weight, state["fc.weight"])
    chips = [np.random.default_rng(i).integers(0, 256, (300, 300, 3), dtype=np.uint8) for i in range(3)]
    res = FairFaceEstimator(ff_file).estimate_chips(chips)
    assert len(res) == 3 and res.race_probs.shape == (3, 7) and res.race_probs.dtype == np.float32
    np.testing.assert_allclose(res.race_probs.sum(1), 1, rtol=1e-5)
    assert set(res.race) <= set(fairface.RACES) and set(res.gender) <= {"male", "female"}
    assert set(res.age) <= set(fairface.AGE_BINS) and res.age_score.shape == res.gender_score.shape == (3,)
    assert ((res.gender_score >= 0.5) & (res.gender_score <= 1) & (res.age_score >= 1 / 9)).all()


def test_strict_key_errors_name_the_keys(ff_file, tmp_path):
    state = torch.load(ff_file, weights_only=True)
    renamed = {("layer2.1.bn_one.weight" if k == "layer2.1.bn1.weight" else k): v for k, v in state.items()}
    missing = {k: v for k, v in state.items() if k != "layer3.4.conv2.weight"}
    extra = {**state, "head.weight": torch.zeros(2)}
    for name, bad, names in [("renamed", renamed, ["layer2.1.bn1.weight", "layer2.1.bn_one.weight"]),
                             ("missing", missing, ["layer3.4.conv2.weight"]), ("extra", extra, ["head.weight"])]:
        torch.save(bad, tmp_path / f"{name}.pt")
        with pytest.raises(FaceWeightsError) as info:
            load_fairface(tmp_path / f"{name}.pt")
        assert all(n in str(info.value) for n in names) and f"{name}.pt" in str(info.value)
    shape = {**state, "fc.bias": torch.zeros(5)}
    torch.save(shape, tmp_path / "shape.pt")
    with pytest.raises(FaceWeightsError, match="fc.bias"):
        load_fairface(tmp_path / "shape.pt")
    with pytest.raises(FaceWeightsNotFoundError, match=r"res34_fair_align_multi_7_20190809\.pt.*drive\.google"):
        FairFaceEstimator(tmp_path / "absent.pt")


def test_decoding_of_known_logits(ff_file, tmp_path):
    logits = np.zeros(18, np.float32)
    logits[[3, 8, 9 + 4]] = [2.0, 1.0, 3.0]  # East Asian, female, 30-39
    state = torch.load(ff_file, weights_only=True)
    state["fc.weight"] = torch.zeros_like(state["fc.weight"])
    state["fc.bias"] = torch.from_numpy(logits)
    torch.save(state, tmp_path / "known.pt")
    res = FairFaceEstimator(tmp_path / "known.pt").estimate_chips([np.zeros((300, 300, 3), np.uint8)] * 2)
    assert res.race == ["East Asian"] * 2 and res.gender == ["female"] * 2 and res.age == ["30-39"] * 2
    np.testing.assert_allclose(res.race_probs[0, 3], np.e**2 / (np.e**2 + 6), rtol=1e-6)
    np.testing.assert_allclose(res.gender_score, np.e / (np.e + 1), rtol=1e-6)
    np.testing.assert_allclose(res.age_score, np.e**3 / (np.e**3 + 8), rtol=1e-6)
    first = fairface.decode(np.eye(18, dtype=np.float32)[[0, 7, 9]] * 5)
    assert first.race[0] == "White" and first.gender[1] == "male" and first.age[2] == "0-2"


@pytest.mark.skipif(HANKS is None, reason="insightface's Tom_Hanks_54745.png is the real-face photo")
def test_chip_preprocessing_on_a_real_face(ff_file):
    import dlib

    image = np.asarray(Image.open(HANKS).convert("RGB"))
    dm = DlibFaceModel()
    shape = dm.shape(image, dm.detect(image)[0])
    chip = FairFaceEstimator.chip(image, shape)
    reference = np.asarray(dlib.extract_image_chip(image, dlib.get_face_chip_details(shape, 300, 0.25)))
    np.testing.assert_array_equal(chip, reference)
    np.testing.assert_array_equal(FairFaceEstimator.chip(image, dm.points(shape)), chip)  # (5, 2) landmarks
    assert DlibFaceModel.chip(image, shape).shape == (150, 150, 3)  # the recognition chip is unchanged
    np.testing.assert_array_equal(DlibFaceModel.chip(image, shape), dlib.get_face_chip(image, shape, 150, 0.25))
    small = np.asarray(Image.fromarray(chip).resize((224, 224), Image.Resampling.BILINEAR), np.float64) / 255
    expected = ((small - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    np.testing.assert_allclose(FairFaceEstimator.preprocess([chip])[0].numpy(), expected, atol=1e-5)
    est = FairFaceEstimator(ff_file)
    res = est.estimate([image, image], [shape, dm.points(shape)])
    np.testing.assert_allclose(res.race_probs, est.estimate_chips([chip, chip]).race_probs, rtol=1e-6)
    with pytest.raises(ValueError, match="one shape per image"):
        est.estimate([image], [])
