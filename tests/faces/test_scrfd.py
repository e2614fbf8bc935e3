"""SCRFD decoding on tiny ONNX models built here: a crafted one with known faces, and a random-weight conv net
compared with InsightFace's own SCRFD on the real group photo."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from realfaces import GROUP_PHOTO

from facefoundry.faces.scrfd import MissingModelError, OnnxModelError, ScrfdDetector, anchor_centres, nms

STRIDES = (8, 16, 32)
WIDTHS = (1, 4, 10)
CRAFT_W, CRAFT_H = 128, 96  # the crafted model's fixed input (width, height)


needs_insightface = pytest.mark.skipif(GROUP_PHOTO is None, reason="insightface (reference SCRFD, t1.jpg) absent")


def constant_model(path: Path, outputs: list[np.ndarray], input_shape=(1, 3, CRAFT_H, CRAFT_W)) -> Path:
    """ONNX graph ``input.1`` -> constant outputs (plus 0 x mean(input), so that the input is used)."""
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outs = []
    for i, value in enumerate(outputs):
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"c{i}"))
        nodes.append(helper.make_node("Add", [f"c{i}", "nothing"], [f"out{i}"]))
        outs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, list(input_shape))], outs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def crafted_outputs() -> tuple[list[np.ndarray], dict]:
    """9 SCRFD outputs for a 128x96 input with four candidates; returns them and the expected decoding."""
    rows = [(CRAFT_H // s) * (CRAFT_W // s) * 2 for s in STRIDES]
    outs = [np.zeros((n, w), np.float32) for w in WIDTHS for n in rows]
    kps_offsets = np.array([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.25], [-0.375, 1.0], [0.375, 1.0]])

    def put(level, y, x, anchor, score, dist):
        row = ((y * (CRAFT_W // STRIDES[level])) + x) * 2 + anchor
        outs[level][row, 0] = score
        outs[3 + level][row] = dist
        outs[6 + level][row] = kps_offsets.reshape(-1)
        centre = np.array([x, y]) * STRIDES[level]
        s = STRIDES[level]
        box = [centre[0] - dist[0] * s, centre[1] - dist[1] * s, centre[0] + dist[2] * s, centre[1] + dist[3] * s]
        return np.array(box), centre + kps_offsets * s

    box_a, kps_a = put(1, 2, 3, 1, 0.9, [1.5, 1.0, 2.0, 2.5])  # face A at stride 16: box (24, 16, 80, 72)
    put(0, 4, 6, 0, 0.7, [3.0, 2.0, 4.0, 5.0])  # overlaps A heavily (IoU > 0.4): suppressed by NMS
    box_c, kps_c = put(2, 0, 3, 0, 0.625, [0.5, 0.0, 0.25, 0.75])  # face C, apart from A: kept
    put(0, 10, 1, 1, 0.49, [1.0, 1.0, 1.0, 1.0])  # below det_thresh 0.5: dropped
    expected = {"boxes": [box_a, box_c], "scores": [0.9, 0.625], "kps": [kps_a, kps_c]}
    return outs, expected


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> tuple[Path, dict]:
    outs, expected = crafted_outputs()
    return constant_model(tmp_path_factory.mktemp("scrfd") / "det_crafted.onnx", outs), expected


def export_random_net(path: Path, batched: bool) -> Path:
    """Random-weight conv SCRFD head (dynamic H, W) exported from torch: 9 outputs, [rows, k] or, batched,
    [N, rows, k] with a dynamic batch axis. Same weights either way."""
    import torch

    class TinyScrfd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = torch.nn.ModuleList(torch.nn.Conv2d(3, 2 * 15, s, stride=s) for s in STRIDES)
            with torch.no_grad():
                for head in self.heads:
                    head.bias[0::15] -= 0.25  # a few hundred anchors above 0.5

        def forward(self, x):
            scores, boxes, kps = [], [], []
            for head in self.heads:
                y = head(x).permute(0, 2, 3, 1)  # locations row-major, 2 anchors adjacent
                y = y.reshape(x.shape[0], -1, 15) if batched else y.reshape(-1, 15)
                scores.append(torch.sigmoid(y[..., :1]))
                boxes.append(torch.nn.functional.softplus(y[..., 1:5]) * 2)
                kps.append(y[..., 5:])
            return (*scores, *boxes, *kps)

    torch.manual_seed(0)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    rows = 1 if batched else 0
    dynamic = {"input.1": {2: "height", 3: "width"}, **{n: {rows: f"rows_{n}"} for n in names}}
    if batched:
        dynamic["input.1"][0] = "batch"
        for n in names:
            dynamic[n][0] = "batch"
    with warnings.catch_warnings():  # the TorchScript exporter (dynamo=False) is deprecated but what we want
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            TinyScrfd().eval(), (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False,
            input_names=["input.1"], output_names=names, dynamic_axes=dynamic,
        )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def random_net(tmp_path_factory) -> Path:
    return export_random_net(tmp_path_factory.mktemp("scrfd") / "det_random.onnx", batched=False)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(GROUP_PHOTO).convert("RGB"))


def test_crafted_model_decodes_exactly(crafted):
    path, expected = crafted
    det = ScrfdDetector(path, input_size=(CRAFT_W, CRAFT_H))
    image = np.zeros((2 * CRAFT_H, 2 * CRAFT_W, 3), np.uint8)  # letterbox scale 0.5 -> coordinates double
    boxes, kps = det.detect(image)
    assert boxes.dtype == kps.dtype == np.float32 and boxes.shape == (2, 5) and kps.shape == (2, 5, 2)
    np.testing.assert_array_equal(boxes[:, :4], 2 * np.array(expected["boxes"], np.float32))
    np.testing.assert_array_equal(boxes[:, 4], np.array(expected["scores"], np.float32))
    np.testing.assert_array_equal(kps, 2 * np.array(expected["kps"], np.float32))
    np.testing.assert_array_equal(boxes[0, :4], [48, 32, 160, 144])

    tall = np.zeros((4 * CRAFT_H, CRAFT_W, 3), np.uint8)  # height-limited letterbox: scale 0.25
    boxes_tall, _ = det.detect(tall)
    np.testing.assert_array_equal(boxes_tall[:, :4], 4 * np.array(expected["boxes"], np.float32))
    strict = ScrfdDetector(path, input_size=(CRAFT_W, CRAFT_H), det_thresh=0.95)
    assert strict.detect(image)[0].shape == (0, 5) and strict.detect(image)[1].shape == (0, 5, 2)
    flipped = det.detect(image[:, ::-1])  # any array view; the constant model ignores pixels
    np.testing.assert_array_equal(flipped[0], boxes)
    assert len(det.detect_batch([image, tall, image])) == 3
    with pytest.raises(ValueError, match="uint8 RGB"):
        det.detect(np.zeros((10, 10, 4), np.uint8))


@needs_insightface
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_crafted_model_matches_insightface(crafted):
    from insightface.model_zoo import get_model

    path, _ = crafted
    image = np.random.default_rng(0).integers(0, 256, (300, 350, 3), dtype=np.uint8)
    ref = get_model(str(path), providers=["CPUExecutionProvider"])
    ref_boxes, ref_kps = ref.detect(image[:, :, ::-1], input_size=(CRAFT_W, CRAFT_H))
    boxes, kps = ScrfdDetector(path, input_size=(CRAFT_W, CRAFT_H)).detect(image)
    np.testing.assert_array_equal(boxes, ref_boxes)
    np.testing.assert_array_equal(kps, ref_kps)


@needs_insightface
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("input_size", [(160, 160), (192, 128), (96, 160)])
def test_random_net_matches_insightface_on_the_group_photo(random_net, photo, input_size):
    from insightface.model_zoo import get_model

    ref = get_model(str(random_net), providers=["CPUExecutionProvider"])
    ours = ScrfdDetector(random_net, input_size=input_size, providers=["CPUExecutionProvider"])
    for image in (photo, np.ascontiguousarray(photo.transpose(1, 0, 2)[:, ::3])):  # wide, then tall
        ref_boxes, ref_kps = ref.detect(np.ascontiguousarray(image[:, :, ::-1]), input_size=input_size)
        boxes, kps = ours.detect(image)
        assert len(boxes) > 50  # hundreds of candidates: NMS had work to do
        np.testing.assert_array_equal(boxes, ref_boxes)  # identical, not merely close
        np.testing.assert_array_equal(kps, ref_kps)


@needs_insightface
def test_batched_model_detects_several_images_in_one_call(random_net, photo, tmp_path):
    batched = ScrfdDetector(export_random_net(tmp_path / "det_batched.onnx", batched=True), input_size=(160, 160))
    single = ScrfdDetector(random_net, input_size=(160, 160))
    assert batched.batched and not single.batched
    images = [photo, np.ascontiguousarray(photo[100:600, 200:500]), photo[:, ::-1]]
    for (b_boxes, b_kps), image in zip(batched.detect_batch(images), images, strict=True):
        s_boxes, s_kps = single.detect(image)
        assert len(s_boxes) > 10
        np.testing.assert_allclose(b_boxes, s_boxes, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(b_kps, s_kps, rtol=1e-5, atol=1e-3)


def test_anchor_layout_and_nms():
    centres = anchor_centres(2, 3, 8, 2)
    np.testing.assert_array_equal(centres[:6], [[0, 0], [0, 0], [8, 0], [8, 0], [16, 0], [16, 0]])
    np.testing.assert_array_equal(centres[6], [0, 8])
    boxes = np.array([[0, 0, 9, 9, 0.8], [1, 1, 10, 10, 0.9], [20, 20, 29, 29, 0.7]], np.float32)
    np.testing.assert_array_equal(nms(boxes, 0.4), [1, 2])


def test_missing_and_wrong_models_are_clear(tmp_path, crafted):
    with pytest.raises(MissingModelError, match="nowhere.onnx"):
        ScrfdDetector(tmp_path / "nowhere.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(OnnxModelError, match="junk.onnx.*not a loadable ONNX"):
        ScrfdDetector(junk)
    arcface_like = constant_model(tmp_path / "rec.onnx", [np.zeros((1, 512))], (1, 3, 112, 112))
    with pytest.raises(OnnxModelError, match=r"rec.onnx: expected an SCRFD detector.*9 outputs.*got 1"):
        ScrfdDetector(arcface_like)
    outs, _ = crafted_outputs()
    no_kps = constant_model(tmp_path / "nokps.onnx", outs[:6])
    with pytest.raises(OnnxModelError, match="nokps.onnx.*6 outputs.*without keypoints"):
        ScrfdDetector(no_kps, input_size=(CRAFT_W, CRAFT_H))
    swapped = constant_model(tmp_path / "swapped.onnx", outs[3:6] + outs[:3] + outs[6:])
    with pytest.raises(OnnxModelError, match=r"swapped.onnx.*output 0 .*should be \[rows, 1\]"):
        ScrfdDetector(swapped, input_size=(CRAFT_W, CRAFT_H))
    path, _ = crafted
    with pytest.raises(OnnxModelError, match="fixes its input to 128x96.*input_size is 640x640"):
        ScrfdDetector(path)
    with pytest.raises(ValueError, match="multiples of 32"):
        ScrfdDetector(path, input_size=(100, 96))


def test_pack_folders(tmp_path, crafted):
    path, _ = crafted
    pack = tmp_path / "antelopev2"
    pack.mkdir()
    (pack / "scrfd_10g_bnkps.onnx").write_bytes(path.read_bytes())
    constant_model(pack / "glintr100.onnx", [np.zeros((1, 512))], (1, 3, 112, 112))
    assert ScrfdDetector(pack, input_size=(CRAFT_W, CRAFT_H)).model_path.name == "scrfd_10g_bnkps.onnx"
    outer = tmp_path / "outer"
    (outer / "antelopev2").mkdir(parents=True)
    (outer / "antelopev2" / "det.onnx").write_bytes(path.read_bytes())
    with pytest.raises(MissingModelError, match="no detection model in pack folder .*outer.*nested folder"):
        ScrfdDetector(outer)
