"""Vec2Face generator: official key layout, safe loading, seeded token masks, on tiny random weights (CPU)."""

from __future__ import annotations

import argparse
import hashlib
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facefoundry.generators.base import Generator
from facefoundry.generators.vec2face.generator import (
    CheckpointError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
    Vec2FaceGenerator,
    Vec2FaceSettings,
    draw_image_mask,
    parse_token_mask,
)
from facefoundry.generators.vec2face.model import (
    BASE_ARCH,
    DROPPED,
    KEEP,
    MASKED,
    TINY_ARCH,
    ResnetBlock,
    Vec2FaceModel,
    build_model,
    token_mask_from_noise,
)
from facefoundry.generators.vec2face.tiny import CHECKPOINT, MARKER, build_tiny_vec2face, tiny_state_dict

SETTINGS = Vec2FaceSettings(tiny=True, batch_size=4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vec2face(tmp_path_factory.mktemp("v2f"), seed=0)


@pytest.fixture(scope="module")
def gen(ckpt: Path) -> Vec2FaceGenerator:
    g = Vec2FaceGenerator(SETTINGS, ckpt)
    g.setup(device="cpu")
    return g


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True) * 22.0  # raw ArcFace-R100-Glint360K scale


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- published layout
def test_full_size_key_set_on_meta() -> None:
    """The published ``model_vec2face`` layout (HaiyuWu/Vec2Face model_vec2face.py, im_decoder.py, vqgan.yaml)."""
    sd = build_model(BASE_ARCH, device="meta").state_dict()
    assert len(sd) == 349
    assert sum(v.numel() for v in sd.values() if v.is_floating_point()) == 174_126_998
    shapes = {
        "latent_prior_proj_f.weight": (768, 512),
        "feature_token.weight": (49, 1),
        "center_token.weight": (49, 768),
        "token_emb.position_ids": (1, 50),
        "token_emb.position_embeddings.weight": (50, 768),
        "token_emb.LayerNorm.weight": (768,),
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "blocks.11.attn.qkv.weight": (2304, 768),
        "blocks.0.mlp.fc1.weight": (3072, 768),
        "decoder_pos_embed_learned": (1, 50, 768),
        "decoder_blocks.7.mlp.fc2.weight": (768, 3072),
        "im_decoder_proj.weight": (256, 768),
        "im_decoder.conv_in.weight": (512, 256, 3, 3),
        "im_decoder.mid.block_2.conv2.weight": (512, 512, 3, 3),
        "im_decoder.up.4.block.1.conv1.weight": (512, 512, 3, 3),  # 7x7, 512 channels
        "im_decoder.up.3.block.0.conv1.weight": (256, 512, 3, 3),
        "im_decoder.up.3.block.0.nin_shortcut.weight": (256, 256, 1, 1),  # out -> out: applied to h
        "im_decoder.up.1.block.0.nin_shortcut.weight": (128, 128, 1, 1),
        "im_decoder.up.0.block.1.conv2.weight": (128, 128, 3, 3),  # 112x112, 128 channels
        "im_decoder.up.1.upsample.conv.weight": (128, 128, 3, 3),
        "im_decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert sd["token_emb.position_ids"].dtype == torch.int64
    assert "blocks.11.norm2.bias" in sd and "blocks.12.norm1.weight" not in sd
    assert "decoder_blocks.7.attn.proj.bias" in sd and "decoder_blocks.8.norm1.weight" not in sd
    assert "im_decoder.up.0.upsample.conv.weight" not in sd and "im_decoder.conv_out.bias" in sd
    assert not [k for k in sd if "temb_proj" in k or ".attn_" in k or "conv_shortcut" in k]
    assert not [k for k in sd if k.startswith("im_decoder.") and ".block" in k and "conv" in k and k.endswith("bias")]
    assert len([k for k in sd if "nin_shortcut" in k]) == 2
    assert list(build_model(TINY_ARCH, device="meta").state_dict()) == list(sd)  # same names, smaller shapes


def test_resnet_block_channel_change_matches_independent_reference() -> None:
    """With a channel change the block returns nin_shortcut(h) + h and discards its input."""
    torch.manual_seed(0)
    block = ResnetBlock(64, 32).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 64, 7, 7)

    def swish(t: torch.Tensor) -> torch.Tensor:
        return t * torch.sigmoid(t)

    h = F.group_norm(x, 32, block.norm1.weight, block.norm1.bias, eps=1e-6)
    h = F.conv2d(swish(h), block.conv1.weight, padding=1)
    h = F.group_norm(h, 32, block.norm2.weight, block.norm2.bias, eps=1e-6)
    h = F.conv2d(swish(h), block.conv2.weight, padding=1)
    expected = F.conv2d(h, block.nin_shortcut.weight) + h
    with torch.no_grad():
        assert torch.allclose(block(x), expected, atol=1e-5)
    assert block.conv1.bias is None and block.conv2.bias is None and block.nin_shortcut.bias is None


def reference_tokens(model: Vec2FaceModel, rep: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Independent per-image reading of the official token logic (uses the model's blocks only)."""
    outs = []
    for b in range(rep.shape[0]):
        f = model.latent_prior_proj_f(rep[b])
        w, bias = model.feature_token.weight[:, 0], model.feature_token.bias
        seq = [f] + [f if int(codes[b, j]) != KEEP else f * w[j] + bias[j] for j in range(49)]
        x = torch.stack(seq) + model.token_emb.position_embeddings.weight
        x = model.token_emb.LayerNorm(x)
        kept = [0] + [j + 1 for j in range(49) if int(codes[b, j]) != DROPPED]
        y = x[kept][None]
        for blk in model.blocks:
            y = blk(y)
        y = model.decoder_embed(model.norm(y))[0]
        slot = {p: i for i, p in enumerate(kept)}
        full = torch.stack([y[slot[p]] if p == 0 or int(codes[b, p - 1]) == KEEP else y[0] for p in range(50)])
        z = full[None] + model.decoder_pos_embed_learned
        for blk in model.decoder_blocks:
            z = blk(z)
        outs.append(model.decoder_norm(z)[0])
    return torch.stack(outs)


def test_token_logic_matches_reference_and_unused_keys_are_unused(gen: Vec2FaceGenerator) -> None:
    model = gen.model
    rep = torch.from_numpy(vectors(2))
    codes = token_mask_from_noise(torch.rand(2, 49, generator=torch.Generator().manual_seed(1)), [0.1, 0.6], 0.1)
    with torch.inference_mode():
        got = model.decode_tokens(model.encode(rep, codes), codes)
        assert torch.allclose(got, reference_tokens(model, rep, codes), atol=1e-4)
        rep, codes = rep[:1], codes[:1]
        before = model(rep, codes)
        saved = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("patch_embed", "center_token"))}
        for k in saved:
            model.get_parameter(k).add_(1.0)
        after = model(rep, codes)
        for k, v in saved.items():
            model.get_parameter(k).copy_(v)
    assert torch.equal(before, after)


def test_official_masking_rule() -> None:
    noise = torch.rand(4, 49, generator=torch.Generator().manual_seed(0))
    codes = token_mask_from_noise(noise, [0.1, 0.15, 0.5, 1.0], mask_ratio_min=0.1)
    assert ((codes == DROPPED).sum(1) == 5).all()  # ceil(49 x 0.1)
    assert (codes != KEEP).sum(1).tolist() == [5, 8, 25, 49]  # ceil(49 x ratio)
    for row, nz in zip(codes, noise, strict=True):
        masked, kept = nz[row != KEEP], nz[row == KEEP]
        dropped, only_masked = nz[row == DROPPED], nz[row == MASKED]
        assert kept.numel() == 0 or masked.max() < kept.min()  # lowest noise is masked
        assert only_masked.numel() == 0 or dropped.max() < only_masked.min()  # and the very lowest dropped


def test_mask_ratio_distribution() -> None:
    s = Vec2FaceSettings()
    ratios = np.array([draw_image_mask(seed, s)[0] for seed in range(3000)])
    assert ratios.min() >= 0.1 and ratios.max() <= 1.0
    a, b = (0.1 - 0.15) / 0.25, (1.0 - 0.15) / 0.25
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    mean = 0.15 + 0.25 * (pdf(a) - pdf(b)) / (cdf(b) - cdf(a))
    assert abs(ratios.mean() - mean) < 0.01
    below_mu = (cdf(0.0) - cdf(a)) / (cdf(b) - cdf(a))  # ~0.137
    assert abs(np.mean(ratios < 0.15) - below_mu) < 0.02


# ----------------------------------------------------------------------------- files and loading
def test_tiny_build_official_format_and_idempotent(ckpt: Path, tmp_path: Path) -> None:
    root = ckpt.parents[1]
    assert ckpt == root / CHECKPOINT and (root / MARKER).is_file()
    obj = torch.load(ckpt, weights_only=True)
    assert set(obj) == {"model_vec2face", "epoch"} and len(obj["model_vec2face"]) == 349
    digest, mtime = sha(ckpt), ckpt.stat().st_mtime_ns
    assert build_tiny_vec2face(root, seed=0) == ckpt and ckpt.stat().st_mtime_ns == mtime  # nothing rewritten
    assert sha(build_tiny_vec2face(tmp_path / "again", seed=0)) == digest  # same seed, same bytes
    assert sha(build_tiny_vec2face(tmp_path / "other", seed=1)) != digest
    assert not [p for p in root.iterdir() if p.name.startswith(".tiny-build-")]


def test_strict_round_trip_and_protocol(gen: Vec2FaceGenerator, ckpt: Path) -> None:
    assert isinstance(gen, Generator) and gen.name == "vec2face" and gen.image_size == 112
    saved = torch.load(ckpt, weights_only=True)["model_vec2face"]
    loaded = gen.model.state_dict()
    assert list(loaded) == list(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert all(p.dtype == torch.float32 for p in gen.model.parameters())  # fp32 only
    ims = gen.generate(vectors(2), np.array([1, 2]))
    assert len(ims) == 2 and ims[0].shape == (112, 112, 3) and ims[0].dtype == np.uint8


def test_training_checkpoint_needs_only_namespace(tmp_path: Path, gen: Vec2FaceGenerator) -> None:
    path = build_tiny_vec2face(tmp_path, seed=0, training=True)
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
        torch.load(path, weights_only=True)  # it really carries an argparse.Namespace
    other = Vec2FaceGenerator(SETTINGS, path)
    other.setup(device="cpu")
    assert argparse.Namespace not in torch.serialization.get_safe_globals()  # allowed only while loading
    v, seeds = vectors(2), np.array([5, 6])
    assert all(np.array_equal(a, b) for a, b in zip(other.generate(v, seeds), gen.generate(v, seeds), strict=True))


class _Payload:
    """Would run code at unpickling time if the loader allowed arbitrary globals."""

    ran = False

    def __reduce__(self):  # noqa: ANN204
        return (_mark_ran, ())


def _mark_ran() -> None:
    _Payload.ran = True


def test_disallowed_globals_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model_vec2face": tiny_state_dict(0), "extra": _Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="_mark_ran"):
        Vec2FaceGenerator(SETTINGS, path).setup(device="cpu")
    assert _Payload.ran is False


def test_missing_files_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        Vec2FaceGenerator(SETTINGS, tmp_path / "nope.pth").setup(device="cpu")
    with pytest.raises(CheckpointNotFoundError, match="weights/vec2face_generator.pth"):
        Vec2FaceGenerator(Vec2FaceSettings(checkpoint=str(tmp_path), tiny=True)).setup(device="cpu")
    with pytest.raises(CheckpointNotFoundError, match="Hub repo"):  # HF_HUB_OFFLINE=1 in conftest
        Vec2FaceGenerator(Vec2FaceSettings(checkpoint="nobody-here/no-such-vec2face", tiny=True)).setup("cpu")


def test_wrong_keys_and_shapes_raise_clear_errors(tmp_path: Path, ckpt: Path) -> None:
    state = tiny_state_dict(0)
    state.pop("center_token.bias")
    state["im_decoder.mid.attn_1.q.weight"] = torch.zeros(1)
    torch.save({"model_vec2face": state}, tmp_path / "keys.pth")
    with pytest.raises(CheckpointError, match=r"1 missing keys \(e\.g\. center_token\.bias\).*attn_1"):
        Vec2FaceGenerator(SETTINGS, tmp_path / "keys.pth").setup(device="cpu")
    torch.save({"model": tiny_state_dict(0)}, tmp_path / "entry.pth")
    with pytest.raises(CheckpointError, match="no 'model_vec2face' entry"):
        Vec2FaceGenerator(SETTINGS, tmp_path / "entry.pth").setup(device="cpu")
    with pytest.raises(CheckpointError, match="shape mismatches.*generator.tiny"):
        Vec2FaceGenerator(Vec2FaceSettings(tiny=False), ckpt).setup(device="cpu")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        Vec2FaceGenerator(SETTINGS, tmp_path / "junk.pth").setup(device="cpu")


def test_float32_only(ckpt: Path) -> None:
    with pytest.raises(ValueError, match="float32 only"):
        Vec2FaceGenerator(SETTINGS, ckpt).setup(device="cpu", dtype=torch.float16)


# ----------------------------------------------------------------------------- seeds and masks
def test_deterministic_per_seed_and_masks_recorded(gen: Vec2FaceGenerator) -> None:
    v, seeds = vectors(3), np.array([11, 12, 13])
    a, info_a = gen.generate_with_info(v, seeds)
    b = gen.generate(v, seeds)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert gen.last_info == info_a
    for rec in info_a:
        codes = parse_token_mask(rec["token_mask"])
        assert (codes == DROPPED).sum() == 5
        assert (codes != KEEP).sum() == math.ceil(49 * rec["mask_ratio"])


def test_different_seeds_give_different_masks_and_images(gen: Vec2FaceGenerator) -> None:
    v = np.repeat(vectors(1), 6, axis=0)
    ims, info = gen.generate_with_info(v, np.arange(6))
    assert len({rec["token_mask"] for rec in info}) == 6
    assert len({im.tobytes() for im in ims}) == 6


def test_explicit_masks_reproduce(gen: Vec2FaceGenerator) -> None:
    v, seeds = vectors(2, seed=7), np.array([21, 22])
    ims, info = gen.generate_with_info(v, seeds)
    # the recorded 49-code mask reproduces the image under any seed
    again = gen.generate(v, np.array([999, 1000]), [{"token_mask": rec["token_mask"]} for rec in info])
    assert all(np.array_equal(x, y) for x, y in zip(ims, again, strict=True))
    # a boolean mask with the same seed picks the same dropped tokens (lowest seeded noise)
    bools = [{"mask": parse_token_mask(rec["token_mask"]) != KEEP} for rec in info]
    assert all(np.array_equal(x, y) for x, y in zip(ims, gen.generate(v, seeds, bools), strict=True))
    assert [r["token_mask"] for r in gen.last_info] == [r["token_mask"] for r in info]
    # a larger explicit ratio masks a superset of the same seed's tokens
    _, big = gen.generate_with_info(v[:1], seeds[:1], [{"mask_ratio": 0.9}])
    low, high = parse_token_mask(info[0]["token_mask"]), parse_token_mask(big[0]["token_mask"])
    assert ((low != KEEP) <= (high != KEEP)).all() and (high != KEEP).sum() == math.ceil(49 * 0.9)
    with pytest.raises(ValueError, match="drop exactly 5"):
        gen.generate(v[:1], seeds[:1], [{"token_mask": "1" * 49}])
    with pytest.raises(ValueError, match="49 codes"):
        gen.generate(v[:1], seeds[:1], [{"token_mask": "0" * 48}])


def test_bad_vectors_raise(gen: Vec2FaceGenerator) -> None:
    v = vectors(2)
    v[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gen.generate(v, np.array([1, 2]))
    with pytest.raises(ValueError, match=r"\(N, 512\)"):
        gen.generate(np.zeros((2, 128), np.float32), np.array([1, 2]))
    with pytest.raises(ValueError, match="seeds"):
        gen.generate(vectors(2), np.array([1]))


def test_output_size(ckpt: Path, gen: Vec2FaceGenerator) -> None:
    small = Vec2FaceGenerator(Vec2FaceSettings(tiny=True, output_size=64), ckpt)
    small.set_model(gen.model, device="cpu")
    assert small.generate(vectors(1), np.array([1]))[0].shape == (64, 64, 3)
