"""ArcFace embedder on tiny ONNX models exported here, against ``insightface.model_zoo.get_model(...).get_feat``."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from realfaces import GROUP_PHOTO

from facefoundry.faces.alignment import align, dlib_to_arcface
from facefoundry.faces.arcface import ArcFaceEmbedder, l2_normalize
from facefoundry.faces.scrfd import MissingModelError, OnnxModelError

CPU = ["CPUExecutionProvider"]


needs_insightface = pytest.mark.skipif(GROUP_PHOTO is None, reason="insightface (reference ArcFaceONNX) absent")


def export_cnn(path: Path, batch: int | None, out_dim: int = 512, size: int = 112) -> Path:
    """A tiny random CNN with ArcFace's interface: ``[batch|N, 3, size, size] -> [.., out_dim]``."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.PReLU(8),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.PReLU(16),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, out_dim), nn.BatchNorm1d(out_dim),
    ).eval()  # fmt: skip
    with torch.no_grad():  # non-trivial BN statistics, so the exported graph is not an identity there
        for module in net:
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    dynamic = {"input.1": {0: "batch"}, "features": {0: "batch"}} if batch is None else None
    with warnings.catch_warnings():  # the TorchScript exporter (dynamo=False) is deprecated but what we want
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (torch.zeros(batch or 2, 3, size, size),), str(path), dynamo=False,
            input_names=["input.1"], output_names=["features"], dynamic_axes=dynamic,
        )  # fmt: skip
    return path


def mxnet_style(path: Path) -> Path:
    """A graph that normalises inside (first nodes named ``_minus0``/``_mul0``, as MXNet conversions are)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Sub", ["data", "mean"], ["centred"], name="_minus0"),
        helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="_mul0"),
        helper.make_node("AveragePool", ["scaled"], ["pooled"], kernel_shape=[14, 14], strides=[14, 14]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["fc1"]),
    ]
    inits = [
        numpy_helper.from_array(np.float32(127.5), "mean"),
        numpy_helper.from_array(np.float32(0.0078125), "scale"),
        numpy_helper.from_array(rng.standard_normal((192, 512)).astype(np.float32), "w"),
    ]
    graph = helper.make_graph(
        nodes, "mx", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["n", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["n", 512])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("arcface")
    return {
        "dynamic": export_cnn(folder / "dynamic.onnx", None),
        "batch1": export_cnn(folder / "batch1.onnx", 1),
        "batch4": export_cnn(folder / "batch4.onnx", 4),
        "mxnet": mxnet_style(folder / "mxnet.onnx"),
    }


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Aligned RGB crops: the six people of the group photo (dlib points mapped to ArcFace's) + two noise crops."""
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    if GROUP_PHOTO is None:
        return noise
    from facefoundry.faces.dlib_models import DlibFaceModel

    photo = np.asarray(Image.open(GROUP_PHOTO).convert("RGB"))
    model = DlibFaceModel("hog")
    faces = [align(photo, dlib_to_arcface(model.landmarks(photo, d))) for d in model.detect(photo, upsample=1)]
    return np.concatenate([np.stack(faces), noise])


@needs_insightface
@pytest.mark.parametrize("kind", ["dynamic", "batch1", "mxnet"])
def test_embeddings_equal_insightface_get_feat(models, crops, kind):
    from insightface.model_zoo import ArcFaceONNX, get_model

    ref = get_model(str(models[kind]), providers=CPU)
    assert isinstance(ref, ArcFaceONNX)  # InsightFace routes our tiny model as a recognition model
    ours = ArcFaceEmbedder(models[kind], providers=CPU, batch_size=3)
    assert (ours.input_mean, ours.input_std) == (ref.input_mean, ref.input_std)
    assert ours.input_mean == (0.0 if kind == "mxnet" else 127.5)
    bgr = [np.ascontiguousarray(c[:, :, ::-1]) for c in crops]  # InsightFace takes BGR and swaps to RGB
    if kind == "batch1":
        expected = np.concatenate([ref.get_feat(c) for c in bgr])
    else:
        expected = ref.get_feat(bgr)
    got = ours.embed(crops)
    assert got.dtype == np.float32 and got.shape == (len(crops), 512)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() > 0.01  # raw, not normalised


def test_batching_is_invisible(models, crops):
    dynamic = ArcFaceEmbedder(models["dynamic"], providers=CPU, batch_size=64)
    reference = np.concatenate([dynamic.embed(c[None]) for c in crops])  # one crop per call
    for kind, batch in (("dynamic", 3), ("batch1", 64), ("batch4", 64)):
        emb = ArcFaceEmbedder(models[kind], providers=CPU, batch_size=batch)
        np.testing.assert_allclose(emb.embed(crops), reference, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(emb(list(crops)), reference, rtol=1e-5, atol=1e-5)
    assert ArcFaceEmbedder(models["batch4"], providers=CPU).batch_size == 4
    assert dynamic.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 512)
    with pytest.raises(ValueError, match="112x112x3"):
        dynamic.embed(np.zeros((2, 100, 100, 3), np.uint8))


def test_out_of_memory_halves_the_batch(models, crops):
    emb = ArcFaceEmbedder(models["dynamic"], providers=CPU, batch_size=8)
    expected = emb.embed(crops)
    real = emb.session

    class Flaky:
        def __getattr__(self, name):
            return getattr(real, name)

        def run(self, names, feeds):
            if len(next(iter(feeds.values()))) > 2:
                raise RuntimeError("CUDA failure 2: out of memory")
            return real.run(names, feeds)

    emb.session = Flaky()
    np.testing.assert_allclose(emb.embed(crops), expected, rtol=1e-5, atol=1e-5)
    assert emb.batch_size == 2


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    assert l2_normalize(x).dtype == np.float32


def test_wrong_models_and_missing_files_are_clear(tmp_path, models):
    with pytest.raises(MissingModelError, match="recognition model not found: .*glintr100.onnx"):
        ArcFaceEmbedder(tmp_path / "glintr100.onnx")
    with pytest.raises(OnnxModelError, match=r"small.onnx: expected an ArcFace .*\[N, 3, 112, 112\].*64, 64"):
        ArcFaceEmbedder(export_cnn(tmp_path / "small.onnx", 1, size=64))
    with pytest.raises(OnnxModelError, match=r"d128.onnx: expected an ArcFace .*output.*128"):
        ArcFaceEmbedder(export_cnn(tmp_path / "d128.onnx", None, out_dim=128))
    d128 = ArcFaceEmbedder(tmp_path / "d128.onnx", embedding_dim=128)  # other widths when asked for
    assert d128.embed(np.zeros((1, 112, 112, 3), np.uint8)).shape == (1, 128)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(OnnxModelError, match="junk.onnx"):
        ArcFaceEmbedder(junk)


def test_pack_folder_picks_the_recognition_model(tmp_path, models):
    pack = tmp_path / "buffalo"
    pack.mkdir()
    (pack / "w600k_r50.onnx").write_bytes(models["dynamic"].read_bytes())
    export_cnn(pack / "genderage.onnx", 1, out_dim=3, size=96)
    assert ArcFaceEmbedder(pack, providers=CPU).model_path.name == "w600k_r50.onnx"
    (pack / "glintr100.onnx").write_bytes(models["batch1"].read_bytes())
    with pytest.raises(OnnxModelError, match="several recognition models.*glintr100.onnx, w600k_r50.onnx"):
        ArcFaceEmbedder(pack)
