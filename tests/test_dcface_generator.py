"""DCFace mixing generator: the release layout loaded strictly without unpickling code, the released DDIM
restated, conditions composed as the official conditioner, inputs, determinism and clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from facefoundry.config import DCFaceConfig
from facefoundry.dataset.schema import image_struct
from facefoundry.generators.base import IDENTITY_INDEX, IDENTITY_VECTOR, IMAGE_INDEX
from facefoundry.generators.dcface import (
    CheckpointError,
    CheckpointNotFoundError,
    DCFaceGenerator,
    arch_from_state,
    load_networks,
)
from facefoundry.generators.dcface_inputs import IdSet, ImageBank, InputError, write_id_set
from facefoundry.generators.tiny_dcface import TINY_ARCH, build_tiny_dcface, smooth_noise, tiny_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, Path, Path]:
    return build_tiny_dcface(tmp_path_factory.mktemp("dcface"), seed=0, count=4)


@pytest.fixture(scope="module")
def gen(release) -> DCFaceGenerator:
    g = DCFaceGenerator(DCFaceConfig(tiny=True, steps=3, device="cpu", batch_size=4), *map(str, release))
    g.setup()
    return g


def variations(n: int, per: int = 1) -> list[dict]:
    return [{IDENTITY_INDEX: i // per, IMAGE_INDEX: i % per, IDENTITY_VECTOR: np.ones(512, np.float32)}
            for i in range(n)]


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


# ----------------------------------------------------------------------------- loading
def test_release_layout_needs_the_restricted_reader(release):
    checkpoint = release[0]
    with pytest.raises(pickle.UnpicklingError):
        torch.load(checkpoint, weights_only=True)  # hyper_parameters pickle a partial and a class, as the release
    nets = load_networks(checkpoint)
    assert nets.arch == TINY_ARCH and nets.arch.spatial_dim == 3
    state = tiny_state_dict(0)
    assert torch.equal(nets.unet.out[2].weight, state["ema_model.averaged_model.out.2.weight"])
    live = load_networks(checkpoint, use_ema=False)
    assert torch.equal(live.unet.out[2].weight, state["model.out.2.weight"])
    assert not torch.equal(live.unet.out[2].weight, nets.unet.out[2].weight)


def _save(path: Path, state: dict) -> Path:
    torch.save({"state_dict": state, "hyper_parameters": {"note": "test"}}, path)
    return path


def test_wrong_keys_are_named(tmp_path):
    good = tiny_state_dict(0)
    key = "ema_model.averaged_model.out.2.weight"
    cases = {
        "renamed": ({("ema_model.averaged_model.out.3.weight" if k == key else k): v for k, v in good.items()},
                    r"missing keys \(e\.g\. ema_model\.averaged_model\.out\.2\.weight\).*unexpected keys "
                    r"\(e\.g\. ema_model\.averaged_model\.out\.3\.weight\)"),
        "missing": ({k: v for k, v in good.items() if k != "label_mapping.scaler.0"},
                    r"1 missing keys \(e\.g\. label_mapping\.scaler\.0\)"),
        "unknown prefix": ({**good, "discriminator.weight": torch.zeros(1)},
                           r"1 unexpected keys \(e\.g\. discriminator\.weight\)"),
        "shape": ({**good, "external_mapping.ln_0.bias": torch.zeros(7)},
                  r"shape mismatches \(e\.g\. external_mapping\.ln_0\.bias"),
    }
    for name, (state, message) in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_networks(_save(tmp_path / f"{name}.ckpt", state))
    extra = {**good, "recognition_model_eval.backbone.body.0.res_layer.1.weight": torch.zeros(2)}
    assert load_networks(_save(tmp_path / "ignored.ckpt", extra)).arch == TINY_ARCH  # an unused release prefix
    with pytest.raises(CheckpointNotFoundError, match="nowhere.ckpt does not exist.*mk-minchul/dcface"):
        load_networks(tmp_path / "nowhere.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.ckpt"):
        load_networks(tmp_path / "text.ckpt")
    with pytest.raises(CheckpointError, match="not a DCFace state dict"):
        arch_from_state({"model.x": torch.zeros(1)}, "ema_model.averaged_model.")


# ----------------------------------------------------------------------------- the official computation
def test_conditions_are_the_official_composition(gen):
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(np.stack([smooth_noise(rng) for _ in range(2)])).permute(0, 3, 1, 2).float() / 127.5 - 1
    styles = torch.flip(ids, dims=[0])
    with torch.no_grad():
        stylemod, context = gen.nets.conditions(ids, styles)
        id_feat, id_tokens = gen.nets.id_encoder(ids)
        _, spatial = gen.nets.style_encoder(styles)
        ext = gen.nets.style_head(spatial)
        expected = gen.nets.style_head.cross_attn_adapter(torch.cat([id_tokens, ext], dim=1).transpose(1, 2))
    assert torch.equal(stylemod, id_feat) and torch.allclose(context, expected)
    assert context.shape == (2, TINY_ARCH.unet.context_channels, 49 + 1 + 3 * 3)


def _official_ddim(unet, stylemod, context, seeds, steps, eta, clip=True):
    """diffusers 0.3's DDIMScheduler.step (set_alpha_to_one, clip_sample) as the release calls it, restated."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float32)
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = torch.stack([torch.randn((3, 112, 112), generator=g) for g in gens])
    for t in (np.arange(0, steps) * (1000 // steps))[::-1]:
        eps = unet(x, torch.tensor([int(t)]), stylemod, context)[:, :3]
        prev = t - 1000 // steps
        a_t = float(alphas_cumprod[t])
        a_prev = float(alphas_cumprod[prev]) if prev >= 0 else 1.0
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        if clip:
            x0 = x0.clamp(-1, 1)
        std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        if eta > 0:
            x = x + std * torch.stack([torch.randn((3, 112, 112), generator=g) for g in gens])
    return x


def test_sampler_is_the_released_ddim(gen):
    torch.manual_seed(0)
    stylemod, context = torch.randn(2, 128) * 0.1, torch.randn(2, TINY_ARCH.unet.context_channels, 59)
    seeds = np.array([3, 4])
    with torch.no_grad():
        ours = gen.sample(stylemod, context, seeds)
        official = _official_ddim(gen.nets.unet, stylemod, context, seeds, 3, 1.0)
        unclipped = _official_ddim(gen.nets.unet, stylemod, context, seeds, 3, 1.0, clip=False)
    diff = (ours - official).abs().max().item()
    print(f"DDIM max |difference| {diff:.3g}")
    assert diff < 1e-4 and (ours - unclipped).abs().max().item() > 1e-3  # the x0 clip matters here


def test_images_depend_only_on_identity_style_and_seed(release, gen):
    seeds = np.arange(10, 14)
    first = gen.generate_output(np.ones((4, 512), np.float32), seeds, variations(4, per=2))
    other = DCFaceGenerator(DCFaceConfig(tiny=True, steps=3, device="cpu", batch_size=1), *map(str, release))
    other.setup()
    again = other.generate_output(np.ones((4, 512), np.float32), seeds, variations(4, per=2))
    assert first.images[0].shape == (112, 112, 3) and first.images[0].dtype == np.uint8
    assert all(close(a, b) for a, b in zip(first.images, again.images, strict=True))  # batch 4 vs batch 1
    assert first.columns["style_source"] == again.columns["style_source"]
    assert first.columns["id_source"] == ["tiny:0", "tiny:0", "tiny:1", "tiny:1"]
    bank = {p.name for p in release[2].iterdir()}
    assert set(first.columns["style_source"]) <= bank
    assert all(np.array_equal(a, b) for a, b in zip(first.images, gen.generate(np.ones((4, 512), np.float32), seeds,
                                                                                variations(4, per=2)), strict=True))


def test_style_sampling(release):
    listed = DCFaceGenerator(DCFaceConfig(tiny=True, steps=1, device="cpu", style_sampling="list"),
                             *map(str, release))
    listed.setup()
    names = [listed.styles.name(i) for i in range(len(listed.styles))]
    out = listed.generate_output(np.ones((8, 512), np.float32), np.arange(8), variations(8, per=8))
    assert out.columns["style_source"] == [names[k % len(names)] for k in range(8)]  # image k takes style k
    random = DCFaceGenerator(DCFaceConfig(tiny=True, steps=1, device="cpu"), *map(str, release))
    random.setup()
    picks = random.style_indices(np.array([5, 5, 6, 7, 8, 9, 10, 11]), variations(8))
    assert picks[0] == picks[1] and len(set(picks.tolist())) > 1  # a function of the seed alone


def test_output_size(release):
    small = DCFaceGenerator(DCFaceConfig(tiny=True, steps=1, device="cpu", output_size=64), *map(str, release))
    assert small.generate(np.ones((1, 512), np.float32), np.array([0]), variations(1))[0].shape == (64, 64, 3)


# ----------------------------------------------------------------------------- identities and inputs
def test_identities_are_found_in_the_id_set_by_vector(release, tmp_path):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((3, 512)).astype(np.float32)
    id_set = write_id_set(tmp_path / "ids.parquet", [smooth_noise(rng) for _ in range(3)], vectors,
                          ["a", "b", "c"], {"encoder": "test"})
    cfg = DCFaceConfig(checkpoint=str(release[0]), id_set=str(id_set), style_bank=str(release[2]), steps=1,
                       device="cpu")
    real = DCFaceGenerator(cfg)
    real.setup()
    order = [2, 0, 1]
    given = vectors[order] * 3.0  # scaled (unit or not, the direction names the identity)
    out = real.generate_output(given, np.arange(3), [{IDENTITY_VECTOR: v} for v in given])
    assert out.columns["id_source"] == ["c", "a", "b"]
    stranger = rng.standard_normal((1, 512)).astype(np.float32)
    with pytest.raises(InputError, match="not in the ID set.*identities.file"):
        real.generate_output(stranger, np.arange(1), [{IDENTITY_VECTOR: stranger[0]}])


def test_image_banks(tmp_path):
    folder = tmp_path / "bank"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("img10.png", "img2.png", "img1.png"):
        Image.fromarray(smooth_noise(rng)).save(folder / name)
    assert [ImageBank(folder).name(i) for i in range(3)] == ["img1.png", "img2.png", "img10.png"]
    Image.fromarray(smooth_noise(rng, 100)).save(folder / "img3.png")
    with pytest.raises(InputError, match=r"img3.png is 100x100.*112x112"):
        ImageBank(folder).array(2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        ImageBank(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        ImageBank(tmp_path / "nowhere")
    data = [(folder / n).read_bytes() for n in ("img1.png", "img2.png")]
    pq.write_table(pa.table({"image": image_struct(data, ["x.png", "y.png"])}), tmp_path / "bank.parquet")
    bank = ImageBank(tmp_path / "bank.parquet")
    assert len(bank) == 2 and bank.name(1) == "bank.parquet:1:y.png"
    assert np.array_equal(bank.array(0), np.asarray(Image.open(folder / "img1.png")))
    with pytest.raises(InputError, match="ID set .* must be a Parquet file"):
        IdSet(folder)


def test_config_rules():
    with pytest.raises(ValueError, match="dcface-ids"):
        DCFaceConfig()
    assert DCFaceConfig(tiny=True).id_set is None
