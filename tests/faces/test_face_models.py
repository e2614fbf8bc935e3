"""Vec2Face's face models in torch: ArcFace-R100, MagFace-R100, 6DRepNet (tiny files in the official layout)."""

import argparse

import numpy as np
import pytest
import torch

from facefoundry.faces import iresnet as ir
from facefoundry.faces import sixdrepnet as sx
from facefoundry.faces import tiny_face_models as tiny
from facefoundry.faces.arcface import ArcFaceEmbedder
from facefoundry.faces.face_weights import FaceWeightsError, FaceWeightsNotFoundError
from facefoundry.faces.torch_embedder import TorchArcFaceEmbedder

LOADERS = {
    "arcface": (ir.load_arcface_r100, tiny.write_tiny_arcface, ir.ARCFACE_FILE),
    "magface": (ir.load_magface_r100, tiny.write_tiny_magface, ir.MAGFACE_FILE),
    "sixdrepnet": (sx.load_sixdrepnet, tiny.write_tiny_sixdrepnet, sx.SIXDREPNET_FILE),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny.write_tiny_face_models(tmp_path_factory.mktemp("vec2face"))


def images(n=3, seed=0):
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_tiny_files_load_strictly_and_unchanged(weights, kind):
    load = LOADERS[kind][0]
    model = load(weights[kind].parent.parent)  # the folder holding weights/<official name>
    on_disk = torch.load(weights[kind], weights_only=True)
    assert list(model.state_dict()) == list(on_disk)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in on_disk.items())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    out = model(images(2))
    assert out.shape == ((2, 3, 3) if kind == "sixdrepnet" else (2, 512)) and torch.isfinite(out).all()


def test_full_size_layouts_match_the_published_models():
    with torch.device("meta"):
        arc, pose = ir.iresnet(100), sx.SixDRepNet()
    assert sum(p.numel() for p in arc.parameters()) == 65_156_160 and len(arc.state_dict()) == 925
    assert ir.iresnet_arch(arc.state_dict(), "f", "ArcFace-R100")["layers"] == ir.IRESNET100_LAYERS
    keys = set(arc.state_dict())
    assert {"layer3.29.prelu.weight", "layer1.0.downsample.1.running_var", "features.num_batches_tracked"} <= keys
    assert sum(p.numel() for p in pose.parameters()) == 39_323_398 and len(pose.state_dict()) == 58
    assert pose.layer1[1].rbr_reparam.weight.shape == (128, 64, 3, 3)  # block 2: groups 2
    assert pose.layer3[15].rbr_reparam.weight.shape == (512, 256, 3, 3)  # block 26: groups 2
    assert pose.layer4[0].rbr_reparam.weight.shape == (2048, 512, 3, 3)  # block 27: dense
    assert sx.sixdrepnet_arch(pose.state_dict(), "f")["groups"] == sx.repvgg_g2_groups(sx.B1G2_BLOCKS)


def test_full_width_files_of_another_architecture_are_refused():
    with torch.device("meta"):
        r50, b1 = ir.iresnet(50), sx.SixDRepNet(groups=[1] * sum(sx.B1G2_BLOCKS))
    with pytest.raises(FaceWeightsError, match="expected iresnet100"):
        ir.iresnet_arch(r50.state_dict(), "r50.pth", "ArcFace-R100")
    with pytest.raises(FaceWeightsError, match="expected RepVGG-B1g2"):
        sx.sixdrepnet_arch(b1.state_dict(), "b1.pth")


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_missing_file_names_the_file_and_the_hub_repo(tmp_path, kind):
    load, _, filename = LOADERS[kind]
    for where in (tmp_path / "nope.pth", tmp_path):
        with pytest.raises(FaceWeightsNotFoundError) as err:
            load(where)
        msg = str(err.value)
        assert "BooBooWu/Vec2Face" in msg and f"weights/{filename}" in msg and str(tmp_path) in msg


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_wrong_missing_or_misshapen_keys_are_clear_errors(tmp_path, kind):
    load, write, _ = LOADERS[kind]
    path = write(tmp_path / "w.pth")
    state = torch.load(path, weights_only=True)
    last = [k for k in state if k.endswith("weight")][-1]
    renamed = {(k + "_x" if k == last else k): v for k, v in state.items()}
    missing = {k: v for k, v in state.items() if k != last}
    misshapen = {**state, last: torch.zeros(*state[last].shape[:-1], state[last].shape[-1] + 1)}
    for bad, expect in ((renamed, f"{last}_x"), (missing, "missing keys"), (misshapen, "size mismatch")):
        torch.save(bad, path)
        with pytest.raises(FaceWeightsError, match=expect) as err:
            load(path)
        assert str(path) in str(err.value)


def test_loading_is_weights_only_and_refuses_pickled_objects(tmp_path, weights, monkeypatch):
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    ir.load_arcface_r100(weights["arcface"])
    ir.load_magface_r100(weights["magface"])
    sx.load_sixdrepnet(weights["sixdrepnet"])
    assert len(calls) == 3 and all(kw.get("weights_only") is True for kw in calls)
    state = torch.load(weights["arcface"], weights_only=True)
    torch.save({"args": argparse.Namespace(lr=0.1), **state}, tmp_path / "pickled.pth")
    with pytest.raises(FaceWeightsError, match="refusing to unpickle .*pickled.pth"):
        ir.load_arcface_r100(tmp_path / "pickled.pth")


def test_magface_training_layout_is_unwrapped_with_magface_eps(tmp_path):
    native = ir.load_magface_r100(tiny.write_tiny_magface(tmp_path / "native.pth", seed=5, layout="magface"))
    plain = ir.load_magface_r100(tiny.write_tiny_magface(tmp_path / "plain.pth", seed=5))
    assert all(torch.equal(native.state_dict()[k], v) for k, v in plain.state_dict().items())
    assert native.bn1.eps == ir.MAGFACE_BN_EPS and plain.bn1.eps == ir.BN_EPS
    x = images(2)
    assert torch.allclose(native(x), plain(x), rtol=1e-3, atol=1e-3) and not torch.equal(native(x), plain(x))
    assert torch.allclose(ir.magface_quality(plain(x)), plain(x).norm(dim=1))
    wrapped = torch.load(tmp_path / "native.pth", weights_only=True)
    wrapped["state_dict"]["stray.weight"] = torch.zeros(1)
    torch.save(wrapped, tmp_path / "native.pth")
    with pytest.raises(FaceWeightsError, match="stray.weight"):
        ir.load_magface_r100(tmp_path / "native.pth")


def rotation_from_euler(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """The inverse of ``sixdrepnet.euler_from_rotation``: ``Rz(roll) @ Ry(yaw) @ Rx(pitch)`` for angles in
    degrees (tensors of shape ``(N,)``) -> ``(N, 3, 3)``."""
    p, y, r = (torch.deg2rad(torch.as_tensor(a, dtype=torch.float64)) for a in (pitch, yaw, roll))
    o, z = torch.ones_like(p), torch.zeros_like(p)
    rx = torch.stack([o, z, z, z, p.cos(), -p.sin(), z, p.sin(), p.cos()], -1).reshape(-1, 3, 3)
    ry = torch.stack([y.cos(), z, y.sin(), z, o, z, -y.sin(), z, y.cos()], -1).reshape(-1, 3, 3)
    rz = torch.stack([r.cos(), -r.sin(), z, r.sin(), r.cos(), z, z, z, o], -1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def test_euler_angles_recover_known_rotations():
    grid = torch.tensor([-170.0, -95.0, -45.0, -10.0, 0.0, 12.5, 60.0, 135.0])
    pitch, roll = (g.reshape(-1) for g in torch.meshgrid(grid, grid, indexing="ij"))
    for yaw_value in (-85.0, -30.0, 0.0, 7.0, 80.0):
        yaw = torch.full_like(pitch, yaw_value)
        got = sx.euler_from_rotation(rotation_from_euler(pitch, yaw, roll).float())
        assert torch.allclose(got, torch.stack([pitch, yaw, roll], 1), atol=2e-3)
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))  # yaw 30 by hand: rotation about the y axis
    hand = torch.tensor([[[c, 0, s], [0, 1, 0], [-s, 0, c]]], dtype=torch.float64)
    assert torch.allclose(rotation_from_euler(torch.zeros(1), torch.full((1,), 30.0), torch.zeros(1)), hand)
    lock = rotation_from_euler(torch.tensor([20.0]), torch.tensor([90.0]), torch.tensor([0.0])).float()
    assert torch.allclose(sx.euler_from_rotation(lock), torch.tensor([[20.0, 90.0, 0.0]]), atol=1e-2)


def test_rotation_from_6d_orthogonalises_two_columns():
    rot = rotation_from_euler(torch.tensor([10.0, -40.0]), torch.tensor([25.0, 70.0]), torch.tensor([-5.0, 100.0]))
    col0, col1 = rot[:, :, 0].float(), rot[:, :, 1].float()
    six = torch.cat([3.0 * col0, 0.5 * col1 + 0.2 * col0], dim=1)  # scaled, second column skewed
    assert torch.allclose(sx.rotation_from_6d(six), rot.float(), atol=1e-6)
    out = sx.rotation_from_6d(torch.randn(64, 6))
    assert torch.allclose(out @ out.transpose(1, 2), torch.eye(3).expand(64, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(out), torch.ones(64), atol=1e-5)


@pytest.mark.parametrize("preprocessing", ["vec2face", "sixdrepnet"])
def test_gradients_flow_from_yaw_and_features_to_the_image(weights, preprocessing):
    pose = sx.load_sixdrepnet(weights["sixdrepnet"])
    img = images(2).requires_grad_(True)
    sx.head_pose(pose, img, preprocessing)[:, 1].abs().sum().backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    for load, key in ((ir.load_arcface_r100, "arcface"), (ir.load_magface_r100, "magface")):
        img.grad = None
        ir.magface_quality(load(weights[key])(img)).sum().backward()
        assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0


def test_vec2face_pose_input_is_bgr_in_unit_range():
    img = images(1)
    out = sx.vec2face_pose_input(img)
    assert torch.allclose(out[:, 0], (img[:, 2] + 1) / 2) and torch.allclose(out[:, 2], (img[:, 0] + 1) / 2)
    assert sx.sixdrepnet_input(img).shape == (1, 3, 224, 224)


def test_torch_embedder_batches_equal_single_crops_and_survive_oom(weights, monkeypatch):
    crops = np.random.default_rng(0).integers(0, 256, (7, 112, 112, 3), dtype=np.uint8)
    emb = TorchArcFaceEmbedder(weights["arcface"], device="cpu", batch_size=3)
    batched = emb(crops)
    single = np.concatenate([emb.embed([c]) for c in crops])
    assert batched.shape == (7, 512) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)
    expected = emb.model(torch.from_numpy((crops.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2))
    np.testing.assert_allclose(batched, expected.detach().numpy(), rtol=1e-4, atol=1e-4)
    assert emb.embed(crops[:0]).shape == (0, 512)
    with pytest.raises(ValueError, match="112x112x3"):
        emb.embed(np.zeros((2, 64, 64, 3), np.uint8))
    for name in ("embed", "info", "preprocess", "__call__"):
        assert callable(getattr(ArcFaceEmbedder, name)) and callable(getattr(emb, name))
    assert emb.info()["embedder"] == ir.ARCFACE_FILE

    real_run, sizes = emb._run, []

    def flaky(blob):
        sizes.append(len(blob))
        if len(blob) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(blob)

    monkeypatch.setattr(emb, "_run", flaky)
    emb.batch_size = 8
    np.testing.assert_allclose(emb(crops), batched, rtol=1e-5, atol=1e-5)
    assert emb.batch_size == 2 and sizes[:3] == [7, 4, 2]
