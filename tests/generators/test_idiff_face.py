"""IDiff-Face: official layouts loaded strictly, forwards equal to independent restatements, the published
sampler, determinism, clear errors, and a run through ``facefoundry run``."""

from __future__ import annotations

import hashlib
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from facefoundry.config import validate_config
from facefoundry.generators.idiff_face.config import IDiffFaceConfig
from facefoundry.generators.idiff_face.generator import (
    DECODER_FILE,
    TRAIN_CONFIG,
    CheckpointError,
    CheckpointNotFoundError,
    IDiffFaceGenerator,
    ddim_timesteps,
)
from facefoundry.generators.idiff_face.model import (
    ConditionalUNet,
    UNetArch,
    VQArch,
    VQDecoder,
    arch_from_config,
    vq_arch_from_config,
)
from facefoundry.generators.idiff_face.tiny import (
    CHECKPOINT,
    build_tiny_idiff_face,
    first_stage_config,
    train_config,
)
from facefoundry.generators.tiny_weights import random_state_dict

ATOL = 1e-4


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, Path]:
    return build_tiny_idiff_face(tmp_path_factory.mktemp("idiff"), seed=0)


def generator(release: tuple[Path, Path], **settings) -> IDiffFaceGenerator:
    gen = IDiffFaceGenerator(IDiffFaceConfig(device="cpu", **settings), str(release[0]), str(release[1]))
    gen.setup()
    return gen


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to one level of rounding (float results differ in the last bits between batch sizes)."""
    return int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- architecture and layout
def test_released_architecture_has_the_published_size() -> None:
    """configs/model/unet_cond_ca_cpd25.yaml says "PARAMS: 216341187"; the ffhq256 VQ-f4 codebook is 8192 x 3."""
    with torch.device("meta"):
        unet = ConditionalUNet(UNetArch())
        decoder = VQDecoder(VQArch())
    assert sum(p.numel() for p in unet.parameters()) == 216_341_187
    state = decoder.state_dict()
    assert state["quantize.embedding.weight"].shape == (8192, 3)
    assert state["post_quant_conv.weight"].shape == (3, 3, 1, 1)
    assert state["decoder.conv_in.weight"].shape == (512, 3, 3, 3)  # ch 128 x ch_mult[-1] 4
    assert "decoder.up.0.block.0.nin_shortcut.weight" in state and "decoder.up.2.upsample.conv.weight" in state


def test_tiny_release_layout_is_official_and_reproducible(release: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, ae_dir = release
    config = yaml.safe_load((model_dir / TRAIN_CONFIG).read_text())
    assert config["model"]["input_channels"] == "${constants.input_channels}"  # saved unresolved, as Hydra does
    assert arch_from_config(config).unet.input_channels == 3
    state = torch.load(model_dir / CHECKPOINT, weights_only=True)
    assert {k for k in state if not k.startswith("eps_model.")} == {
        "betas", "alphas", "sigmas", "sqrt_alphas_inv", "alpha_bars", "sqrt_alpha_bars", "sqrt_one_minus_alpha_bars",
        "one_minus_alphas_over_sqrt_one_minus_alpha_bars"}
    assert torch.allclose(state["betas"][[0, -1]], torch.tensor([1e-4, 2e-2]))
    decoder = torch.load(ae_dir / DECODER_FILE, weights_only=True)
    assert {k.split(".")[0] for k in decoder} == {"decoder", "quantize", "post_quant_conv"}
    again = build_tiny_idiff_face(tmp_path, seed=0)
    for a, b in zip(release, again, strict=True):  # the same arguments give the same bytes
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and files
        assert all(hashlib.sha256((a / f).read_bytes()).digest() == hashlib.sha256((b / f).read_bytes()).digest()
                   for f in files)
    stamp = (model_dir / CHECKPOINT).stat().st_mtime_ns
    assert build_tiny_idiff_face(model_dir.parents[1], seed=0) == release  # complete build reused
    assert (model_dir / CHECKPOINT).stat().st_mtime_ns == stamp


# ----------------------------------------------------------------------------- independent restatements
def _conv(x, sd, p, **kw):
    return F.conv2d(x, sd[f"{p}.weight"], sd[f"{p}.bias"], **kw)


def _lin(x, sd, p):
    return F.linear(x, sd[f"{p}.weight"], sd[f"{p}.bias"])


def _gn(x, sd, p, eps=1e-5):
    return F.group_norm(x, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps)


def _official_mha(x, c, sd, p, heads):
    """models/diffusion/nn.py MultiHeadAttention + qkv_attention: q and k each scaled by d**-0.25, float softmax."""
    q = F.conv1d(x, sd[f"{p}.to_q.weight"], sd[f"{p}.to_q.bias"])
    k = F.conv1d(c, sd[f"{p}.to_k.weight"], sd[f"{p}.to_k.bias"])
    v = F.conv1d(c, sd[f"{p}.to_v.weight"], sd[f"{p}.to_v.bias"])
    bs, width, lq = q.shape
    ch = width // heads
    q, k, v = (a.reshape(bs * heads, ch, a.shape[-1]) for a in (q, k, v))
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
    out = torch.einsum("bts,bcs->bct", weight, v).reshape(bs, width, lq)
    return F.conv1d(out, sd[f"{p}.proj_out.weight"], sd[f"{p}.proj_out.bias"])


def _official_cross_block(x, c, sd, p, cfg):
    """SpatialEmbeddingCrossAttentionBlock.forward, restated from the official code."""
    b, n, h, w = x.shape
    heads = n // cfg["attention_head_channels"]
    x_in = x
    x = _conv(x, sd, f"{p}.x_proj_in").reshape(b, -1, h * w)
    c = _lin(c, sd, f"{p}.c_proj_in").reshape(b, cfg["context_channels"], -1)
    c = _gn(c, sd, f"{p}.c_norm")
    x = _official_mha(_gn(x, sd, f"{p}.x_norm"), _gn(x, sd, f"{p}.x_norm"), sd, f"{p}.self_attention", heads) + x
    x = _official_mha(_gn(x, sd, f"{p}.x_norm"), c, sd, f"{p}.cross_attention", heads) + x
    y = _gn(x, sd, f"{p}.x_norm").permute(0, 2, 1)
    y = _lin(F.gelu(_lin(y, sd, f"{p}.ff.0")), sd, f"{p}.ff.2")
    x = y.permute(0, 2, 1) + x
    return _conv(x.reshape(b, -1, h, w), sd, f"{p}.x_proj_out") + x_in


def _official_res_block(x, t, sd, p):
    """ResidualBlock.forward with condition_type 'CA' (AdaGN on the time embedding only)."""
    h = _conv(F.silu(_gn(x, sd, f"{p}.norm1")), sd, f"{p}.conv1", padding=1)
    emb = _lin(F.silu(t), sd, f"{p}.time_emb.1")
    scale, shift = _lin(emb, sd, f"{p}.scale_emb")[:, :, None, None], _lin(emb, sd, f"{p}.shift_emb")[:, :, None, None]
    h = (1 + scale) * _gn(h, sd, f"{p}.norm2.norm") + shift
    h = _conv(F.silu(h), sd, f"{p}.conv2", padding=1)
    return h + (_conv(x, sd, f"{p}.shortcut") if f"{p}.shortcut.weight" in sd else x)


def _official_unet(sd, cfg, x, t, context):
    """ConditionalUNet.forward, walking the modules in the order the official __init__ builds them."""
    ch, mults, attention = cfg["initial_channels"], cfg["channel_multipliers"], cfg["is_attention"]
    half = ch // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    temb = _lin(F.silu(_lin(torch.cat([torch.cos(args), torch.sin(args)], -1), sd, "time_emb.lin1")), sd,
                "time_emb.lin2")
    x = _conv(x, sd, "image_proj", padding=1)
    c = _lin(context, sd, "context_emb")

    def block(x, p, has_attention):
        x = _official_res_block(x, temb, sd, f"{p}.res")
        return _official_cross_block(x, c, sd, f"{p}.attn", cfg) if has_attention else x

    skips, i = [x], 0
    for level in range(len(mults)):
        for _ in range(cfg["n_blocks_per_resolution"]):
            x = block(x, f"down.{i}", attention[level])
            skips.append(x)
            i += 1
        if level < len(mults) - 1:
            x = _conv(x, sd, f"down.{i}.conv", stride=2, padding=1)
            skips.append(x)
            i += 1
    x = _official_res_block(x, temb, sd, "middle.res1")
    x = _official_cross_block(x, c, sd, "middle.attn", cfg)
    x = _official_res_block(x, temb, sd, "middle.res2")
    i = 0
    for level in reversed(range(len(mults))):
        for _ in range(cfg["n_blocks_per_resolution"] + 1):
            x = block(torch.cat((x, skips.pop()), dim=1), f"up.{i}", attention[level])
            i += 1
        if level > 0:
            x = F.conv_transpose2d(x, sd[f"up.{i}.conv.weight"], sd[f"up.{i}.conv.bias"], stride=2, padding=1)
            i += 1
    return _conv(F.silu(_gn(x, sd, "norm")), sd, "final", padding=1)


def test_unet_forward_equals_official_restatement() -> None:
    cfg = train_config()
    model_cfg = {**cfg["model"], "input_channels": 3}
    unet = ConditionalUNet(arch_from_config(cfg).unet)
    state = random_state_dict(unet, seed=3)
    unet.load_state_dict(state, strict=True)
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(3, 3, 16, 16, generator=gen), F.normalize(torch.randn(3, 512, generator=gen))
    t = torch.tensor([0, 517, 999])
    with torch.no_grad():
        ours, official = unet(x, t, ctx), _official_unet(state, model_cfg, x, t, ctx)
    diff = (ours - official).abs().max().item()
    print(f"UNet max |difference| {diff:.3g} (output scale {official.abs().max().item():.3g})")
    assert diff < ATOL * max(1.0, official.abs().max().item())


def _to_diffusers_vq(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """LDM VQ decoder keys -> diffusers VQModel keys (the mapping of diffusers' LDM conversion script)."""
    out = {}
    for key, value in state.items():
        k = key.replace("decoder.mid.block_1.", "decoder.mid_block.resnets.0.").replace(
            "decoder.mid.block_2.", "decoder.mid_block.resnets.1.").replace("nin_shortcut", "conv_shortcut")
        k = k.replace("decoder.norm_out.", "decoder.conv_norm_out.")
        if k.startswith("decoder.mid.attn_1."):
            name = k.split(".")[-2]
            new = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}[name]
            k = f"decoder.mid_block.attentions.0.{new}.{k.split('.')[-1]}"
            value = value.squeeze(-1).squeeze(-1) if value.ndim == 4 else value
        elif k.startswith("decoder.up."):
            parts = k.split(".")
            level = levels - 1 - int(parts[2])
            if parts[3] == "block":
                k = ".".join(["decoder.up_blocks", str(level), "resnets", *parts[4:]])
            else:  # upsample.conv
                k = ".".join(["decoder.up_blocks", str(level), "upsamplers.0", *parts[4:]])
        out[k] = value
    return out


def test_vq_decoder_equals_diffusers_vqmodel() -> None:
    """An independent implementation of the same network: diffusers' VQModel, weights converted by key."""
    from diffusers import VQModel

    vq_cfg = first_stage_config()
    arch = vq_arch_from_config(vq_cfg)
    ours = VQDecoder(arch).eval()
    state = random_state_dict(ours, seed=5)
    ours.load_state_dict(state, strict=True)
    chans = tuple(arch.ch * m for m in arch.ch_mult)
    ref = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(chans),
                  up_block_types=("UpDecoderBlock2D",) * len(chans), block_out_channels=chans,
                  layers_per_block=arch.num_res_blocks, latent_channels=arch.z_channels,
                  num_vq_embeddings=arch.n_embed, vq_embed_dim=arch.embed_dim, norm_num_groups=32).eval()
    converted = _to_diffusers_vq(state, len(chans))
    missing, unexpected = ref.load_state_dict(converted, strict=False)
    assert not unexpected and all(k.startswith(("encoder.", "quant_conv.")) for k in missing)
    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(latents), ref.decode(latents).sample
    diff = (a - b).abs().max().item()
    print(f"VQ decoder max |difference| vs diffusers VQModel {diff:.3g}")
    assert a.shape == (2, 3, 32, 32) and diff < ATOL


# ----------------------------------------------------------------------------- sampling
@pytest.mark.slow
def test_ddpm_follows_the_official_loop(tmp_path: Path) -> None:
    """diffusion/ddpm.py::sample, restated: x_{i-1} = sqrt_alphas_inv[i] (x_i - eps coef[i]) + sigmas[i] z, with
    z = 0 at i <= 1; the image's own generator draws x_T first, then z for i = T-1 .. 2."""
    release = build_tiny_idiff_face(tmp_path, seed=1, timesteps=50)  # T < 50 makes betas > 1 (scale 1000 / T)
    gen = generator(release, sampler="ddpm", batch_size=2)
    vectors, seeds = unit_vectors(2, seed=4), np.array([11, 12])
    latents = gen.sample_latents(vectors, seeds)
    state = torch.load(release[0] / CHECKPOINT, weights_only=True)
    rngs = [torch.Generator().manual_seed(int(s)) for s in seeds]
    shape = (3, 32, 32)
    x = torch.stack([torch.randn(shape, generator=g) for g in rngs])
    ctx = torch.from_numpy(vectors)
    with torch.no_grad():
        for i in reversed(range(50)):
            z = torch.stack([torch.randn(shape, generator=g) for g in rngs]) if i > 1 else 0
            eps = gen.diffusion.eps_model(x, torch.full((2,), i), ctx)
            x = state["sqrt_alphas_inv"][i] * (x - eps * state["one_minus_alphas_over_sqrt_one_minus_alpha_bars"][i]) \
                + state["sigmas"][i] * z
    assert torch.isfinite(x).all() and (latents - x).abs().max().item() < 1e-4
    # decoding as the official script: quantise, decode, clamp to [-1, 1], save_image's rounding to uint8
    images = gen.decode(latents)  # what generate() does with the latents it sampled
    with torch.no_grad():
        pixels = ((gen.decoder(x).clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    assert images[0].shape == (128, 128, 3)
    assert all(close(a, b) for a, b in zip(images, pixels.permute(0, 2, 3, 1).numpy(), strict=True))


def test_ddim_timesteps() -> None:
    assert ddim_timesteps(1000, 5) == [999, 749, 500, 250, 0]
    assert ddim_timesteps(6, 50) == [5, 4, 3, 2, 1, 0]


def test_reruns_are_byte_identical_and_the_input_is_normalised(release: tuple[Path, Path]) -> None:
    """(Batch independence: tests/generators/test_contract.py.)"""
    gen = generator(release, sampler="ddim", steps=1, batch_size=2)
    vectors, seeds = unit_vectors(3), np.array([5, 6, 7])
    images = gen.generate(vectors, seeds)  # micro-batches [0, 1] and [2]
    # the same batch composition gives the same bytes (a rerun)
    assert all(np.array_equal(a, b) for a, b in zip(gen.generate(vectors, seeds), images, strict=True))
    scaled = gen.generate(vectors[:1] * 22.0, seeds[:1])  # the model's input is the L2-normalised vector
    assert close(scaled[0], images[0])


def test_guidance_scale_one_is_the_conditional_model(release: tuple[Path, Path]) -> None:
    vectors, seeds = unit_vectors(1), np.array([3])
    plain = generator(release, sampler="ddim", steps=2).generate(vectors, seeds)[0]
    assert np.array_equal(generator(release, sampler="ddim", steps=2, guidance_scale=1.0).generate(vectors, seeds)[0],
                          plain)
    assert not np.array_equal(
        generator(release, sampler="ddim", steps=2, guidance_scale=3.0).generate(vectors, seeds)[0], plain)


def test_output_size(release: tuple[Path, Path]) -> None:
    gen = generator(release, sampler="ddim", steps=1, output_size=112)
    assert gen.generate(unit_vectors(1), np.array([0]))[0].shape == (112, 112, 3)


# ----------------------------------------------------------------------------- errors
def _copy_release(release: tuple[Path, Path], root: Path) -> tuple[Path, Path]:
    import shutil

    model, ae = root / "model", root / "ae"
    shutil.copytree(release[0], model)
    shutil.copytree(release[1], ae)
    return model, ae


def test_strict_loading_names_the_wrong_key(release: tuple[Path, Path], tmp_path: Path) -> None:
    model, ae = _copy_release(release, tmp_path)
    good = torch.load(model / CHECKPOINT, weights_only=True)
    cases = {
        "renamed": ({("eps_model.image_proj.conv.weight" if k == "eps_model.image_proj.weight" else k): v
                     for k, v in good.items()}, r"1 missing keys \(e\.g\. eps_model\.image_proj\.weight\).*"
                                                r"1 unexpected keys \(e\.g\. eps_model\.image_proj\.conv\.weight\)"),
        "missing": ({k: v for k, v in good.items() if k != "sigmas"}, r"1 missing keys \(e\.g\. sigmas\)"),
        "extra": ({**good, "eps_model.extra.weight": torch.zeros(1)}, r"1 unexpected keys \(e\.g\. eps_model\.extra"),
        "shape": ({**good, "eps_model.final.bias": torch.zeros(4)},
                  r"shape mismatches \(e\.g\. eps_model\.final\.bias"),
        "ddp": ({f"module.{k}": v for k, v in good.items()}, "strip the DistributedDataParallel prefix"),
    }
    for name, (state, message) in cases.items():
        torch.save(state, model / CHECKPOINT)
        with pytest.raises(CheckpointError, match=message):
            generator((model, ae))
        print(name, "refused")
    torch.save(good, model / CHECKPOINT)
    decoder = torch.load(ae / DECODER_FILE, weights_only=True)
    torch.save({k: v for k, v in decoder.items() if k != "quantize.embedding.weight"}, ae / DECODER_FILE)
    with pytest.raises(CheckpointError, match=r"VQ-f4 decoder.*missing keys \(e\.g\. quantize\.embedding\.weight\)"):
        generator((model, ae))


@pytest.mark.slow
def test_a_checkpoint_saved_through_lightning_lite_loads(release: tuple[Path, Path], tmp_path: Path) -> None:
    """The official main.py trains through PyTorch Lightning 1.7's LightningLite, whose wrapper (``_LiteModule``)
    registers the module twice, as ``_forward_module`` (or its DDP wrapper) and ``_original_module``: a state dict
    saved from it (the non-EMA ``checkpoints/model.ckpt``) holds every key under both prefixes. It loads as the
    module's own; a file where only some keys are wrapped is refused."""
    class LiteModule(torch.nn.Module):  # the two attributes PL 1.7's _LiteModule registers
        def __init__(self, forward_module: torch.nn.Module, original_module: torch.nn.Module | None = None):
            super().__init__()
            self._forward_module = forward_module
            self._original_module = original_module or forward_module

    class DDP(torch.nn.Module):  # DistributedDataParallel's own attribute
        def __init__(self, module: torch.nn.Module):
            super().__init__()
            self.module = module

    model, ae = _copy_release(release, tmp_path)
    reference = generator((model, ae), sampler="ddim", steps=1)
    vectors, seeds = unit_vectors(2), np.array([3, 4])
    expected = reference.generate(vectors, seeds)
    inner = reference.diffusion
    for wrapper in (LiteModule(inner), LiteModule(DDP(inner), inner)):
        state = wrapper.state_dict()
        assert any(k.startswith("_forward_module.") for k in state) and any(k.startswith("_original_module.")
                                                                             for k in state)
        torch.save(state, model / "checkpoints" / "model.ckpt")
        lite = generator((model, ae), sampler="ddim", steps=1, checkpoint_file="checkpoints/model.ckpt")
        assert all(np.array_equal(a, b) for a, b in zip(lite.generate(vectors, seeds), expected, strict=True))
    mixed = {**{f"_original_module.{k}": v for k, v in inner.state_dict().items()}, "sigmas": torch.zeros(1)}
    torch.save(mixed, model / "checkpoints" / "model.ckpt")
    with pytest.raises(CheckpointError, match="some keys carry Lightning's wrapper prefixes"):
        generator((model, ae), checkpoint_file="checkpoints/model.ckpt")


def test_files_that_are_not_plain_state_dicts_are_refused(release: tuple[Path, Path], tmp_path: Path) -> None:
    model, ae = _copy_release(release, tmp_path)
    with open(model / CHECKPOINT, "wb") as f:
        pickle.dump({"weights": Path("x")}, f, protocol=2)  # needs a global: weights_only refuses it
    with pytest.raises(CheckpointError, match="weights-only"):
        generator((model, ae))
    (model / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read IDiff-Face checkpoint"):
        generator((model, ae))


def test_missing_files_and_unsupported_configs(release: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"nowhere/\.hydra/config\.yaml.*request form"):
        generator((tmp_path / "nowhere", release[1]))
    with pytest.raises(CheckpointNotFoundError, match=f"empty/{DECODER_FILE}"):
        generator((release[0], tmp_path / "empty"))
    model, ae = _copy_release(release, tmp_path)
    config = yaml.safe_load((model / TRAIN_CONFIG).read_text())
    config["model"]["condition_type"] = "AdaGN"
    (model / TRAIN_CONFIG).write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match="condition_type='AdaGN'.*only the released cross-attention"):
        generator((model, ae))
    config["model"]["condition_type"], config["model"]["input_channels"] = "CA", "${constants.nothing}"
    (model / TRAIN_CONFIG).write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match=r"\$\{constants\.nothing\} names no value"):
        generator((model, ae))


def test_bad_vectors_are_refused(release: tuple[Path, Path]) -> None:
    gen = generator(release, sampler="ddim", steps=1)
    bad = unit_vectors(2)
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(rows \[1\]\)"):
        gen.generate(bad, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\(N, 512\)"):
        gen.generate(np.ones((1, 128), np.float32), np.array([0]))
    with pytest.raises(ValueError, match="non-zero"):
        gen.generate(np.zeros((1, 512), np.float32), np.array([0]))


def test_config_rules() -> None:
    with pytest.raises(ValueError, match="generator.sampler=ddim to use fewer"):
        IDiffFaceConfig(steps=50)
    base = {"identities": {"count": 2}, "images": {"per_identity": 1}}
    with pytest.raises(ValueError, match="identities.space must be 'unit'"):
        validate_config({**base, "identities": {"count": 2, "space": "raw", "norm": 22.0},
                         "generator": {"kind": "idiff_face"}})
    cfg = validate_config({**base, "generator": {"kind": "idiff_face", "sampler": "ddim"}})
    assert cfg.generator.kind == "idiff_face" and cfg.generator.steps is None
