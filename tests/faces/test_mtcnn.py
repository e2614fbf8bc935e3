"""MTCNN (faces/mtcnn.py) against facenet-pytorch 2.6.0's own detector on real photos, plus its weight-file errors.

facenet-pytorch imports torchvision, which this project does not install (it breaks beside our torch). For the
comparison its package is imported with a stand-in ``torchvision`` in ``sys.modules`` holding the one function its
detector calls, ``ops.boxes.batched_nms``, written below as a plain loop over boxes (torchvision's CPU kernel:
greedy, best score first, IoU with ``(x2 - x1) * (y2 - y1)`` areas in the boxes' float type, ``IoU > threshold``
suppressed, per index). The stand-in and facenet_pytorch leave ``sys.modules`` when this file's tests end.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch
from landmarkfaces import PHOTOS
from PIL import Image

from facefoundry.faces.face_weights import FaceWeightsError
from facefoundry.faces.mtcnn import MTCNN, MTCNNWeightsNotFoundError, ONet, PNet, RNet, mtcnn_weights_dir, nms

HAVE_FACENET = importlib.util.find_spec("facenet_pytorch") is not None
needs_facenet = pytest.mark.skipif(
    not HAVE_FACENET,
    reason="facenet-pytorch is not installed (pip install --no-deps facenet-pytorch==2.6.0): it is the reference "
    "detector and ships the MTCNN weights",
)
needs_photos = pytest.mark.skipif(
    any(path is None for path, _ in PHOTOS.values()), reason="insightface or scikit-image (the real photos) absent"
)
BOX_TOL, PROB_TOL = 1e-3, 1e-5


def loop_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float):
    """torchvision.ops.batched_nms, one kept box at a time (its IoU with all the others at once): kept indices,
    best score first."""
    order = sorted(range(len(scores)), key=lambda k: -float(scores[k]))  # sorted() is stable: ties by index
    rank = torch.empty(len(order), dtype=torch.long)
    rank[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    x1, y1, x2, y2 = (boxes[:, c] for c in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        w = torch.clamp(torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1), min=0)
        h = torch.clamp(torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1), min=0)
        inter = w * h
        iou = inter / (areas[i] + areas - inter)  # float32, as the C++ kernel
        suppressed |= (iou.double() > iou_threshold) & (idxs == idxs[i]) & (rank > rank[i])
    return torch.tensor(keep, dtype=torch.long)


def stand_in_torchvision() -> dict[str, types.ModuleType]:
    """The modules facenet_pytorch's import chain asks for: ``torchvision.ops.boxes.batched_nms`` and
    ``torchvision.transforms.functional`` (only used when cropping, which these tests never do)."""
    root, ops, boxes = (types.ModuleType(n) for n in ("torchvision", "torchvision.ops", "torchvision.ops.boxes"))
    transforms, functional = (types.ModuleType(n) for n in ("torchvision.transforms",
                                                             "torchvision.transforms.functional"))
    boxes.batched_nms = loop_batched_nms
    ops.boxes, root.ops, transforms.functional, root.transforms = boxes, ops, functional, transforms
    return {m.__name__: m for m in (root, ops, boxes, transforms, functional)}


@pytest.fixture(scope="module")
def reference():
    """facenet-pytorch's ``MTCNN(image_size=112, margin=0)`` (defaults otherwise), imported beside the stand-in."""
    if not HAVE_FACENET:
        pytest.skip("facenet-pytorch is not installed (pip install --no-deps facenet-pytorch==2.6.0)")
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as patch:
        for name, module in stand_in_torchvision().items():
            patch.setitem(sys.modules, name, module)
        from facenet_pytorch import MTCNN as FacenetMTCNN

        yield FacenetMTCNN(image_size=112, margin=0)
    for name in set(sys.modules) - before:
        if name.split(".")[0] == "facenet_pytorch":
            del sys.modules[name]


@pytest.fixture(scope="module")
def ours():
    if not HAVE_FACENET:
        pytest.skip("facenet-pytorch is not installed (pip install --no-deps facenet-pytorch==2.6.0)")
    return MTCNN()


def photo(name: str) -> np.ndarray:
    return np.array(Image.open(PHOTOS[name][0]).convert("RGB"))


def as_float_array(values) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)


def assert_same(ref_boxes, ref_probs, boxes, probs) -> tuple[float, float]:
    """Equal detections (one image); returns the largest box and probability differences."""
    if ref_boxes is None:
        assert boxes is None and probs is None
        return 0.0, 0.0
    assert boxes is not None and boxes.shape == ref_boxes.shape and probs.shape == (len(ref_boxes),)
    box_diff = float(np.abs(boxes.astype(np.float64) - np.asarray(ref_boxes, dtype=np.float64)).max())
    prob_diff = float(np.abs(probs.astype(np.float64) - as_float_array(ref_probs)).max())
    assert box_diff <= BOX_TOL and prob_diff <= PROB_TOL, (box_diff, prob_diff)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert np.all(np.diff(areas) <= 0), "largest first"
    return box_diff, prob_diff


@pytest.mark.slow
@needs_facenet
@needs_photos
@pytest.mark.parametrize("name, at_least", [("t1", 6), ("hanks", 1), ("astronaut", 1)])
def test_same_boxes_and_probs_as_facenet_on_real_photos(reference, ours, name, at_least):
    image = photo(name)
    ref_boxes, ref_probs = reference.detect(image, landmarks=False)
    boxes, probs = ours.detect(image)
    assert len(boxes) == len(probs) == 1
    assert boxes[0] is not None and len(boxes[0]) >= at_least
    print(name, "faces", len(boxes[0]), "max differences (px, prob)", assert_same(ref_boxes, ref_probs, boxes[0],
                                                                                   probs[0]))


@pytest.mark.slow
@needs_facenet
@needs_photos
def test_a_batch_of_equal_size_images_is_detected_per_image(reference, ours):
    image = photo("t1")
    batch = np.stack([image, np.ascontiguousarray(image[:, ::-1]), np.full_like(image, 128)])  # mirror, grey
    ref_boxes, ref_probs = reference.detect(batch, landmarks=False)
    boxes, probs = ours.detect(batch)
    assert len(boxes) == len(probs) == 3
    for k in range(3):
        assert_same(ref_boxes[k], None if ref_boxes[k] is None else ref_probs[k], boxes[k], probs[k])
    assert boxes[0] is not None and boxes[1] is not None and boxes[2] is None
    # each image alone gives the same as in the batch, to float32 rounding: with more than one torch thread the
    # convolutions of a batch of 3 and of 1 sum in another order (measured: 6e-5 px on a 433 px coordinate)
    alone_boxes, alone_probs = ours.detect(batch[1])
    np.testing.assert_allclose(alone_boxes[0], boxes[1], rtol=1e-6, atol=0)
    np.testing.assert_allclose(alone_probs[0], probs[1], rtol=1e-6, atol=0)


@needs_facenet
@needs_photos
def test_a_float_tensor_that_requires_grad_is_taken(reference, ours):
    image = torch.from_numpy(photo("hanks")).float().requires_grad_()
    ref_boxes, ref_probs = reference.detect(image.detach().clone(), landmarks=False)
    boxes, probs = ours.detect(image)
    assert boxes[0] is not None
    assert_same(ref_boxes, ref_probs, boxes[0], probs[0])
    uint8_boxes, _ = ours.detect(photo("hanks"))
    np.testing.assert_array_equal(uint8_boxes[0], boxes[0])


@needs_facenet
def test_a_blank_image_has_no_face(reference, ours):
    blank = np.zeros((160, 200, 3), dtype=np.uint8)
    ref_boxes, ref_probs = reference.detect(blank, landmarks=False)
    assert ref_boxes is None
    assert ours.detect(blank) == ([None], [None])


@needs_facenet
def test_facenets_weight_files_are_found_without_importing_it():
    imported_before = "facenet_pytorch" in sys.modules  # (the reference fixture imports it)
    folder = mtcnn_weights_dir()
    assert folder.name == "data" and folder.parent.name == "facenet_pytorch"
    assert {p.name for p in folder.iterdir()} >= {"pnet.pt", "rnet.pt", "onet.pt"}
    assert imported_before or "facenet_pytorch" not in sys.modules


# --- without facenet-pytorch ---------------------------------------------------------------------------------------


def test_missing_weights_name_what_is_missing_and_the_pip_command(tmp_path, monkeypatch):
    fix = "pip install --no-deps facenet-pytorch==2.6.0"
    with pytest.raises(MTCNNWeightsNotFoundError) as missing_folder:
        MTCNN(weights_dir=tmp_path / "nowhere")
    torch.save(PNet().state_dict(), tmp_path / "pnet.pt")
    with pytest.raises(FileNotFoundError) as missing_files:
        mtcnn_weights_dir(tmp_path)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "facenet_pytorch" else real_find_spec(name, *a))
    with pytest.raises(MTCNNWeightsNotFoundError) as not_installed:
        MTCNN()
    for error, says in ((missing_folder, "nowhere does not exist"), (missing_files, "rnet.pt, onet.pt missing"),
                        (not_installed, "facenet_pytorch is not installed")):
        message = str(error.value)
        assert "\n" not in message and says in message and fix in message, message
        assert "pnet.pt" in message  # the other fix: pass the folder holding the three files


def save_random_weights(folder, rename: dict[str, str] | None = None) -> None:
    for name, network in (("pnet", PNet()), ("rnet", RNet()), ("onet", ONet())):
        state = network.state_dict()
        if name == "rnet" and rename:
            state = {rename.get(k, k): v for k, v in state.items()}
        torch.save(state, folder / f"{name}.pt")


def test_weights_load_strictly_and_a_wrong_key_is_named(tmp_path):
    save_random_weights(tmp_path)
    MTCNN(weights_dir=tmp_path)  # the module names load their own state dicts
    save_random_weights(tmp_path, rename={"dense4.weight": "fc4.weight"})
    with pytest.raises(FaceWeightsError) as refused:
        MTCNN(weights_dir=tmp_path)
    message = str(refused.value)
    assert "fc4.weight" in message and "dense4.weight" in message and "rnet.pt" in message, message


def test_detect_refuses_an_image_without_three_channels(tmp_path):
    save_random_weights(tmp_path)
    with pytest.raises(ValueError, match="H x W x 3"):
        MTCNN(weights_dir=tmp_path).detect(np.zeros((32, 32), dtype=np.uint8))


def test_nms_equals_the_box_by_box_loop():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 60, size=(300, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(5, 30, size=(300, 2)).astype(np.float32)], axis=1)
    scores = rng.choice(np.linspace(0.6, 1.0, 40).astype(np.float32), size=300)  # with ties
    groups = rng.integers(0, 3, size=300)
    for threshold in (0.5, 0.7):
        expected = loop_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups),
                                    threshold)
        np.testing.assert_array_equal(nms(boxes, scores, groups, threshold), expected.numpy())
