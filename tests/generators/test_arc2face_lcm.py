"""Arc2Face fast mode: a tiny LoRA in the published LCM-LoRA's kohya format, fused through diffusers'
``load_lora_weights`` path, sampled with ``LCMScheduler`` (CPU, offline, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from test_arc2face import variant, vectors

from facefoundry.generators.arc2face import lcm_lora
from facefoundry.generators.arc2face.config import Arc2FaceConfig
from facefoundry.generators.arc2face.generator import Arc2FaceGenerator
from facefoundry.generators.arc2face.lcm_lora import LCM_TARGETS, LoraFileError, kohya_key, resolve_lora_file
from facefoundry.generators.arc2face.tiny import build_tiny_arc2face, tiny_lcm_lora_path

LCM = Arc2FaceConfig(sampler="lcm", steps=2, batch_size=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("models")
    model, base = build_tiny_arc2face(root, seed=0)
    return model, base, tiny_lcm_lora_path(root)


@pytest.fixture(scope="module")
def plain(tiny: tuple[Path, Path, Path]) -> Arc2FaceGenerator:
    g = Arc2FaceGenerator(Arc2FaceConfig(steps=2), str(tiny[0]), str(tiny[1]))
    g.setup(device="cpu")
    return g


@pytest.fixture(scope="module")
def fast(tiny: tuple[Path, Path, Path]) -> Arc2FaceGenerator:
    g = Arc2FaceGenerator(LCM, str(tiny[0]), str(tiny[1]), str(tiny[2]))
    g.setup(device="cpu")
    return g


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


# ---------------------------------------------------------------------------------- config
def test_config_defaults_and_nonsense_combinations() -> None:
    cfg = Arc2FaceConfig(sampler="lcm")
    assert (cfg.steps, cfg.guidance_scale, cfg.lcm_lora) == (4, 1.0, "latent-consistency/lcm-lora-sdv1-5")
    assert cfg.lcm_lora_weight_name == "pytorch_lora_weights.safetensors"
    assert (Arc2FaceConfig().steps, Arc2FaceConfig().guidance_scale) == (25, 3.0)  # dpm untouched
    assert Arc2FaceConfig(sampler="lcm", steps=2, guidance_scale=1.5).steps == 2
    with pytest.raises(ValidationError, match=r"generator.steps=25 with generator.sampler=lcm.*1-8 steps"):
        Arc2FaceConfig(sampler="lcm", steps=25)
    with pytest.raises(ValidationError, match=r"guidance_scale=3.0 with generator.sampler=lcm"):
        Arc2FaceConfig(sampler="lcm", guidance_scale=3.0)


# ------------------------------------------------------------------------------ file format
def test_tiny_lora_has_the_published_kohya_layout(tiny: tuple[Path, Path, Path], plain: Arc2FaceGenerator) -> None:
    sd = load_file(str(tiny[2]))
    modules = {k.split(".")[0] for k in sd}
    assert all(k.startswith("lora_unet_") for k in sd)
    for m in modules:  # exactly the kohya triple per module
        assert {k for k in sd if k.split(".")[0] == m} == {f"{m}.lora_down.weight", f"{m}.lora_up.weight",
                                                            f"{m}.alpha"}
        assert sd[f"{m}.alpha"].ndim == 0
    covered = {t for t in LCM_TARGETS for m in modules if m.endswith("_" + t.replace(".", "_"))}
    assert covered == set(LCM_TARGETS)  # every kind of adapted layer goes through the conversion
    names = {kohya_key(n) for n, _ in plain.unet.named_modules()}
    assert modules <= names


# ------------------------------------------------------------------------ loading and fusing
def test_setup_uses_lcm_scheduler_from_base_config(fast: Arc2FaceGenerator, plain: Arc2FaceGenerator) -> None:
    from diffusers import LCMScheduler

    assert isinstance(fast.scheduler, LCMScheduler)
    for key in ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps"):
        assert fast.scheduler.config[key] == plain.scheduler.config[key]


@torch.inference_mode()
def test_lora_is_fused_exactly_and_layers_removed(fast: Arc2FaceGenerator, plain: Arc2FaceGenerator,
                                                  tiny: tuple[Path, Path, Path]) -> None:
    from peft.tuners.lora import LoraLayer

    sd = load_file(str(tiny[2]))
    assert not any(isinstance(m, LoraLayer) for m in fast.unet.modules())
    ours, base = dict(fast.unet.named_parameters()), dict(plain.unet.named_parameters())
    checked = 0
    for name, module in plain.unet.named_modules():
        key = kohya_key(name)
        if f"{key}.lora_down.weight" not in sd:
            continue
        down, up = sd[f"{key}.lora_down.weight"].float(), sd[f"{key}.lora_up.weight"].float()
        scale = sd[f"{key}.alpha"].float() / down.shape[0]
        if isinstance(module, torch.nn.Linear):
            delta = scale * up @ down
        else:  # conv: (out, r, 1, 1) after (r, in, kh, kw)
            delta = scale * torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
        torch.testing.assert_close(ours[f"{name}.weight"] - base[f"{name}.weight"], delta, atol=1e-5, rtol=1e-4)
        checked += 1
    assert checked == len({k.split(".")[0] for k in sd}) > 50
    torch.testing.assert_close(ours["conv_in.weight"], base["conv_in.weight"], atol=0, rtol=0)  # not a target


@torch.inference_mode()
def test_lora_changes_unet_output(fast: Arc2FaceGenerator, plain: Arc2FaceGenerator) -> None:
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    cond = plain.encode_identities(torch.from_numpy(vectors(2)))
    a = plain.unet(x, 500, encoder_hidden_states=cond).sample
    b = fast.unet(x, 500, encoder_hidden_states=cond).sample
    assert (a - b).abs().mean() > 1e-2


# ------------------------------------------------------------------------------ generation
def test_lcm_images_depend_only_on_vector_and_seed(fast: Arc2FaceGenerator) -> None:
    v, seeds = vectors(3, seed=1), np.array([11, 22, 33])
    batch = variant(fast, batch_size=3).generate(v, seeds)
    assert all(close(x, y) for x, y in zip(batch, variant(fast, batch_size=3).generate(v, seeds), strict=True))
    alone = fast.generate(v[1:2], seeds[1:2])[0]
    assert batch[1].shape == (64, 64, 3) and close(batch[1], alone)
    split = variant(fast, batch_size=2).generate(v, seeds)
    assert all(close(x, y) for x, y in zip(batch, split, strict=True))
    reordered = variant(fast, batch_size=3).generate(v[::-1].copy(), seeds[::-1].copy())
    assert all(close(x, y) for x, y in zip(batch, reordered[::-1], strict=True))
    other_seed = fast.generate(v[1:2], np.array([99]))[0]
    assert np.abs(other_seed.astype(int) - alone.astype(int)).mean() > 2


def unet_batches(g: Arc2FaceGenerator, n: int) -> list[int]:
    sizes: list[int] = []
    hook = g.unet.register_forward_pre_hook(lambda _m, args: sizes.append(int(args[0].shape[0])))
    try:
        g.generate(vectors(n), np.arange(n))
    finally:
        hook.remove()
    return sizes


def test_guidance_one_runs_one_branch(fast: Arc2FaceGenerator) -> None:
    assert fast.cfg.guidance_scale == 1.0
    assert unet_batches(fast, 3) == [3, 3]  # 2 steps, no CFG doubling
    assert unet_batches(variant(fast, guidance_scale=1.5), 3) == [6, 6]


# -------------------------------------------------------------------------------- errors
def test_missing_lora_file_is_named(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    with pytest.raises(LoraFileError, match=r"pytorch_lora_weights\.safetensors does not exist.*generator\.lcm_lora"):
        Arc2FaceGenerator(LCM, str(tiny[0]), str(tiny[1]), str(tmp_path)).setup(device="cpu")
    with pytest.raises(LoraFileError, match="does not exist"):
        resolve_lora_file(str(tmp_path / "nowhere"), "pytorch_lora_weights.safetensors")
    assert resolve_lora_file(str(tiny[2].parent), "pytorch_lora_weights.safetensors") == tiny[2]
    assert resolve_lora_file(str(tiny[2]), "ignored.safetensors") == tiny[2]


def test_uncached_hub_lora_offline_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    import facefoundry.models as models

    monkeypatch.setattr(models, "offline", lambda: True)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(LoraFileError, match=r"pytorch_lora_weights\.safetensors not found in Hub repo "
                                            r"latent-consistency/lcm-lora-sdv1-5.*not cached"):
        resolve_lora_file("latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors")


def test_lora_for_another_unet_is_refused(plain: Arc2FaceGenerator, tiny: tuple[Path, Path, Path],
                                          tmp_path: Path) -> None:
    sd = load_file(str(tiny[2]))
    real, bogus = "lora_unet_down_blocks_1_attentions_0_proj_in", "lora_unet_down_blocks_7_attentions_0_proj_in"
    sd.update({f"{bogus}.{s}": sd[f"{real}.{s}"].clone() for s in ("lora_down.weight", "lora_up.weight", "alpha")})
    save_file(sd, str(tmp_path / "pytorch_lora_weights.safetensors"))
    g = Arc2FaceGenerator(LCM, str(tiny[0]), str(tiny[1]), str(tmp_path))
    with pytest.raises(LoraFileError, match="SD-1.5 LoRA"):
        g.setup(device="cpu")
    save_file({"text_model.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(LoraFileError, match="kohya format"):
        lcm_lora.lora_modules(tmp_path / "other.safetensors")
