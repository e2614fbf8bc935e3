"""Arc2Face's pose ControlNet on a tiny random ControlNet in the published layout (CPU, offline, seconds)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError
from test_arc2face import vectors

from facefoundry.config import validate_config
from facefoundry.generators.arc2face.config import Arc2FaceConfig
from facefoundry.generators.arc2face.generator import Arc2FaceGenerator, ModelFilesError, list_pose_images
from facefoundry.generators.arc2face.tiny import (
    CONTROLNET_MARKER,
    POSE_DIR,
    POSE_YAWS,
    build_tiny_arc2face,
    build_tiny_arc2face_controlnet,
    tiny_lcm_lora_path,
)
from facefoundry.generators.base import IMAGE_INDEX

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CN = Arc2FaceConfig(steps=2, guidance_scale=3.0, batch_size=4, controlnet=True, tiny=True)
N_POSES = len(POSE_YAWS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    root = tmp_path_factory.mktemp("models")
    model, base, poses = build_tiny_arc2face_controlnet(root, seed=0)
    return root, model, base, poses


@pytest.fixture(scope="module")
def gen(tiny: tuple[Path, Path, Path, Path]) -> Arc2FaceGenerator:
    g = Arc2FaceGenerator(CN, str(tiny[1]), str(tiny[2]))
    g.setup(device="cpu")
    return g


def variant(g: Arc2FaceGenerator, **updates: object) -> Arc2FaceGenerator:
    """Same loaded components (ControlNet included where the config asks for it), another config."""
    cfg = g.cfg.model_copy(update=updates)
    other = Arc2FaceGenerator(cfg, g.model, g.base)
    other.set_components(g.unet, g.text_encoder, g.tokenizer, g.vae, g.scheduler, device="cpu",
                         controlnet=g.controlnet if cfg.controlnet else None)
    return other


def at(*indices: int) -> list[dict[str, int]]:
    return [{IMAGE_INDEX: k} for k in indices]


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------- layout and loading
def test_layout_loads_and_leaves_the_plain_build_alone(tiny: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    from diffusers import ControlNetModel, UNet2DConditionModel

    root, model, _, poses = tiny
    files = digests(root)
    marker = json.loads((root / CONTROLNET_MARKER).read_text())
    assert marker["files"] == ["Arc2Face/controlnet/config.json",
                               "Arc2Face/controlnet/diffusion_pytorch_model.safetensors",
                               *(f"{POSE_DIR}/pose_{k}.png" for k in range(N_POSES))]
    net = ControlNetModel.from_pretrained(model, subfolder="controlnet")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="arc2face")
    for key in ("block_out_channels", "cross_attention_dim", "down_block_types", "in_channels", "layers_per_block"):
        assert net.config[key] == unet.config[key], key
    assert len(list_pose_images(poses)) == N_POSES
    plain = tmp_path / "plain"
    build_tiny_arc2face(plain, seed=0)  # the plain build's files and bytes are unchanged
    assert {k: v for k, v in files.items() if k not in {CONTROLNET_MARKER, *marker["files"]}} == digests(plain)
    build_tiny_arc2face_controlnet(root, seed=0)
    assert digests(root) == files  # rerun rewrites nothing
    build_tiny_arc2face_controlnet(plain, seed=0)
    assert digests(plain) == files  # same seed, same bytes, on top of an existing plain build


def test_model_files_and_missing_weights_named(tiny: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    _, model, base, poses = tiny
    listed = Arc2FaceGenerator.model_files(CN, str(model), str(base))
    groups = [g for f in listed for g in f.groups]
    assert ("controlnet/config.json",) in groups
    assert ("controlnet/diffusion_pytorch_model.safetensors", "controlnet/diffusion_pytorch_model.bin") in groups
    assert listed[-1].source == str(poses) and not listed[-1].hub
    assert all("controlnet" not in n for f in Arc2FaceGenerator.model_files(Arc2FaceConfig()) for g in f.groups
               for n in g)
    copy = tmp_path / "Arc2Face"
    shutil.copytree(model, copy)
    shutil.copytree(poses, tmp_path / POSE_DIR)
    (copy / "controlnet" / "diffusion_pytorch_model.safetensors").rename(copy / "controlnet" / "weights.safetensors")
    with pytest.raises(ModelFilesError, match=r"controlnet/diffusion_pytorch_model\.safetensors.*FoivosPar/Arc2Face"):
        Arc2FaceGenerator(CN, str(copy), str(base)).setup(device="cpu")
    shutil.rmtree(copy / "controlnet")
    with pytest.raises(ModelFilesError, match=r"controlnet/config\.json"):
        Arc2FaceGenerator(CN, str(copy), str(base)).setup(device="cpu")


def test_pose_folder_errors_and_natural_order(tiny: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    poses = tiny[3]
    with pytest.raises(ModelFilesError, match="does not exist"):
        list_pose_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(ModelFilesError, match="holds no"):
        list_pose_images(tmp_path / "empty")
    folder = tmp_path / "named"
    folder.mkdir()
    for name in ("pose_10.png", "pose_2.PNG", "pose_1.jpg", "readme.md"):
        shutil.copy(poses / "pose_0.png", folder / name)
    assert [f.name for f in list_pose_images(folder)] == ["pose_1.jpg", "pose_2.PNG", "pose_10.png"]


# ------------------------------------------------------------------------------------- generation
def test_the_condition_matters(gen: Arc2FaceGenerator) -> None:
    v, seeds = vectors(2, seed=3), np.array([7, 8])
    with_cn = gen.generate(v, seeds, at(0, 0))
    without = variant(gen, controlnet=False, tiny=False).generate(v, seeds)
    assert all(mean_diff(a, b) > 1.0 for a, b in zip(with_cn, without, strict=True))
    # Scale 0: the ControlNet adds nothing, and the pipeline path samples exactly like the plain one.
    zero = variant(gen, controlnet_scale=0.0).generate(v, seeds, at(0, 0))
    assert all(np.array_equal(a, b) for a, b in zip(zero, without, strict=True))
    assert mean_diff(variant(gen, controlnet_scale=0.5).generate(v, seeds, at(0, 0))[0], with_cn[0]) > 0.5
    # Same vector and seed, another condition image: another image.
    same = np.repeat(v[:1], 2, axis=0)
    a, b = gen.generate(same, np.array([7, 7]), at(1, 2))
    assert mean_diff(a, b) > 1.0


@pytest.mark.slow
def test_condition_follows_image_index_not_batch_position(gen: Arc2FaceGenerator) -> None:
    v, seeds, idx = vectors(4, seed=5), np.array([1, 2, 3, 4]), [5, 0, 3, 1]
    out = gen.generate_output(v, seeds, at(*idx))
    assert out.columns == {"pose_condition": [f"pose_{k % N_POSES}.png" for k in idx]}
    assert out.arrays(gen.extra_fields())["pose_condition"].to_pylist() == out.columns["pose_condition"]
    for i in range(4):  # one at a time, as batch position 0 every time
        alone = gen.generate_output(v[i:i + 1], seeds[i:i + 1], at(idx[i]))
        assert close(alone.images[0], out.images[i])
        assert alone.columns["pose_condition"] == [out.columns["pose_condition"][i]]
    order = [2, 0, 3, 1]
    shuffled = variant(gen, batch_size=3).generate(v[order], seeds[order], at(*(idx[i] for i in order)))
    assert all(close(shuffled[j], out.images[i]) for j, i in enumerate(order))
    # index 3 and index 0 use the same file: same image for the same vector and seed
    a, b = gen.generate(np.repeat(v[:1], 2, axis=0), np.array([1, 1]), at(0, N_POSES))
    assert close(a, b)


def test_any_size_and_mode_is_converted(gen: Arc2FaceGenerator, tmp_path: Path) -> None:
    from PIL import Image

    src = Image.open(tiny_pose(gen, 1))
    src.resize((128, 128), Image.Resampling.BICUBIC).convert("RGBA").save(tmp_path / "a_big_rgba.png")
    src.convert("L").save(tmp_path / "b_gray.jpg")
    other = variant(gen, pose_images=str(tmp_path))
    out = other.generate_output(np.repeat(vectors(1), 3, axis=0), np.array([2, 2, 2]), at(0, 1, 2))
    assert [im.shape for im in out.images] == [(64, 64, 3)] * 3
    assert out.columns["pose_condition"] == ["a_big_rgba.png", "b_gray.jpg", "a_big_rgba.png"]
    assert close(out.images[0], out.images[2]) and mean_diff(out.images[0], out.images[1]) > 1.0
    # a 2x copy resized back by the pipeline's processor stays close to the native-size file's image
    native = gen.generate(vectors(1), np.array([2]), at(1))[0]
    assert mean_diff(out.images[0], native) < 2.0


def tiny_pose(g: Arc2FaceGenerator, k: int) -> Path:
    return Path(str(g.pose_images)) / f"pose_{k}.png"

def test_columns_and_missing_image_index(gen: Arc2FaceGenerator) -> None:
    assert gen.extra_fields() == [pa.field("pose_condition", pa.string())]
    assert variant(gen, controlnet=False, tiny=False).extra_fields() == []
    with pytest.raises(ValueError, match="image_index"):
        gen.generate(vectors(1), np.array([0]))
    with pytest.raises(ValueError, match="image_index"):
        gen.generate(vectors(2), np.array([0, 1]), [{IMAGE_INDEX: 0}, {}])
    parts = (gen.unet, gen.text_encoder, gen.tokenizer, gen.vae, gen.scheduler, "cpu")
    with pytest.raises(ValueError, match="needs a ControlNet"):
        Arc2FaceGenerator(CN).set_components(*parts)
    with pytest.raises(ValueError, match="controlnet is false"):
        Arc2FaceGenerator(Arc2FaceConfig()).set_components(*parts, controlnet=gen.controlnet)


def test_lcm_with_controlnet(tiny: tuple[Path, Path, Path, Path]) -> None:
    root, model, base, _ = tiny
    cfg = CN.model_copy(update={"sampler": "lcm", "guidance_scale": 1.0})
    g = Arc2FaceGenerator(cfg, str(model), str(base), str(tiny_lcm_lora_path(root)))
    g.setup(device="cpu")
    a, b = g.generate(np.repeat(vectors(1), 2, axis=0), np.array([4, 4]), at(1, 2))
    assert a.shape == (64, 64, 3) and mean_diff(a, b) > 1.0


# ------------------------------------------------------------------------------------------ config
def test_config_rules_and_hash_of_runs_without_controlnet() -> None:
    with pytest.raises(ValidationError, match=r"controlnet=true needs generator.pose_images"):
        Arc2FaceConfig(controlnet=True)
    with pytest.raises(ValidationError, match=r"pose_images='poses' without generator.controlnet=true"):
        Arc2FaceConfig(pose_images="poses")
    with pytest.raises(ValidationError, match=r"controlnet_scale=0.5 without generator.controlnet=true"):
        Arc2FaceConfig(controlnet_scale=0.5)
    with pytest.raises(ValidationError):
        Arc2FaceConfig(controlnet=True, pose_images="poses", controlnet_scale=-1.0)
    cfg = Arc2FaceConfig(controlnet=True, pose_images="poses", sampler="lcm")  # allowed: the official demo does it
    assert (cfg.controlnet_scale, cfg.steps, cfg.guidance_scale) == (1.0, 4, 1.0)
    assert Arc2FaceConfig(controlnet=True, tiny=True).pose_images is None
    minimal = {"identities": {"count": 4}, "images": {"per_identity": 2}, "generator": {"kind": "arc2face"}}
    plain = validate_config(minimal)
    spelled = validate_config({**minimal, "generator": {"kind": "arc2face", "controlnet": False,
                                                        "controlnet_scale": 1.0}})
    on = validate_config({**minimal, "generator": {"kind": "arc2face", "controlnet": True, "pose_images": "p"}})
    assert plain.config_hash() == spelled.config_hash() != on.config_hash()
    assert on.generator.model_dump()["pose_images"] == "p"
    assert torch.get_num_threads() == 1
