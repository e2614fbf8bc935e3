"""Tiny random-weight Arc2Face, saved in the official on-disk layout.

Tests and the offline ``smoke`` preset load these folders through exactly the same
``from_pretrained`` calls as a real run against ``FoivosPar/Arc2Face`` and SD-1.5::

    <root>/Arc2Face/arc2face/{config.json, diffusion_pytorch_model.safetensors}    UNet2DConditionModel
    <root>/Arc2Face/encoder/{config.json, model.safetensors}                       CLIPTextModel
    <root>/stable-diffusion-v1-5/tokenizer/{vocab.json, merges.txt, tokenizer_config.json,
                                            special_tokens_map.json}               CLIPTokenizer
    <root>/stable-diffusion-v1-5/vae/{config.json, diffusion_pytorch_model.safetensors}  AutoencoderKL
    <root>/stable-diffusion-v1-5/scheduler/scheduler_config.json                   SD-1.5 PNDM config
    <root>/stable-diffusion-v1-5/model_index.json
    <root>/lcm-lora-sdv1-5/pytorch_lora_weights.safetensors                       kohya-style UNet LoRA

The LoRA has the published LCM-LoRA's format (``lora_unet_*.lora_down.weight`` / ``.lora_up.weight`` /
``.alpha`` for every module of :data:`~facefoundry.generators.arc2face.lcm_lora.LCM_TARGETS`), so diffusers loads
it through the same kohya conversion as ``latent-consistency/lcm-lora-sdv1-5``.

:func:`build_tiny_arc2face_controlnet` adds, only when asked, the pose ControlNet in the published layout and
a few condition images (not touched by :func:`build_tiny_arc2face`, so the plain build's bytes do not depend
on it)::

    <root>/Arc2Face/controlnet/{config.json, diffusion_pytorch_model.safetensors}  ControlNetModel
    <root>/arc2face-pose-images/pose_{0,1,2}.png                                  normal-map-style conditions

The encoder keeps the real hidden size (768) so the 512-d identity vector is zero-padded exactly as
with the published weights; everything else is shrunk (64x64 images, 2 encoder layers).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facefoundry.generators.tiny_weights import build_is_complete, write_clip_tokenizer, write_json

MODEL_DIR = "Arc2Face"
BASE_DIR = "stable-diffusion-v1-5"
LCM_DIR = "lcm-lora-sdv1-5"
LORA_FILE = "pytorch_lora_weights.safetensors"
MARKER = ".facefoundry-tiny-arc2face.json"
CONTROLNET_MARKER = ".facefoundry-tiny-arc2face-controlnet.json"
POSE_DIR = "arc2face-pose-images"
EMBED_STD, ZERO_CONV_STD = 4.0, 0.3  # init of the parts a fresh ControlNet zeroes (see make_tiny_controlnet)
POSE_YAWS = (0.0, 0.5, -0.5)  # one condition image per entry: a head-like ellipsoid turned by this much
FORMAT_VERSION = 2
# Whole words of the vocabulary (each one BPE token); anything else falls back to byte-level pieces.
WORDS = ("photo", "of", "a", "id", "person", "face", "portrait", "smiling")
HIDDEN = 768

# SD-1.5's scheduler/scheduler_config.json: a PNDM config that Arc2Face reads as DPM-Solver.
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def make_tiny_components(vocab_size: int, seed: int = 0) -> dict[str, Any]:
    """Tiny random UNet, CLIP text encoder and VAE, deterministic in ``seed`` (global RNG untouched)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=HIDDEN,
            attention_head_dim=8, norm_num_groups=32,
        )
        encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        ))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=32, sample_size=64, scaling_factor=0.18215,
        )
    return {"unet": unet.eval(), "text_encoder": encoder.eval(), "vae": vae.eval()}


def make_tiny_lcm_lora(unet: torch.nn.Module, rank: int = 4, alpha: float = 2.0, seed: int = 0
                       ) -> dict[str, torch.Tensor]:
    """A random LoRA for ``unet`` in the published LCM-LoRA's kohya format (float16 tensors).

    Linear: ``lora_down`` (rank, in), ``lora_up`` (out, rank). Conv: ``lora_down`` (rank, in, kh, kw),
    ``lora_up`` (out, rank, 1, 1). ``alpha`` is a 0-d tensor; the applied update is alpha/rank * up @ down.
    """
    from facefoundry.generators.arc2face.lcm_lora import is_target, kohya_key

    out: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in unet.named_modules():
            if not is_target(name):
                continue
            if isinstance(module, torch.nn.Linear):
                down = torch.randn(rank, module.in_features) / module.in_features**0.5
                up = torch.randn(module.out_features, rank) * 0.1
            elif isinstance(module, torch.nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                down = torch.randn(rank, module.in_channels, *module.kernel_size) / fan_in**0.5
                up = torch.randn(module.out_channels, rank, 1, 1) * 0.1
            else:
                continue
            key = kohya_key(name)
            out[f"{key}.lora_down.weight"] = down.half()
            out[f"{key}.lora_up.weight"] = up.half()
            out[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    return out


def tiny_lcm_lora_path(root: Path) -> Path:
    """The tiny LCM-LoRA file of a :func:`build_tiny_arc2face` build under ``root``."""
    return Path(root) / LCM_DIR / LORA_FILE


def _model_index() -> dict[str, Any]:
    return {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
        "feature_extractor": [None, None], "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": [None, None],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def build_tiny_arc2face(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Build (once) tiny random Arc2Face weights under ``root``; return ``(model_path, base_path)``
    (the LCM-LoRA file is at :func:`tiny_lcm_lora_path`).

    Idempotent: if a complete build with the same seed exists (its marker is written last) nothing is
    rewritten. Otherwise everything is built in a temporary folder inside ``root`` and moved into place.
    The same seed gives byte-identical files.
    """
    root = Path(root)
    model_path, base_path = root / MODEL_DIR, root / BASE_DIR
    if build_is_complete(root, MARKER, seed, FORMAT_VERSION):
        return model_path, base_path
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root))
    try:
        vocab = write_clip_tokenizer(tmp / BASE_DIR / "tokenizer", WORDS)
        parts = make_tiny_components(len(vocab), seed)
        parts["unet"].save_pretrained(tmp / MODEL_DIR / "arc2face")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a tiny save needs no "Writing model shards" bar
        parts["text_encoder"].save_pretrained(tmp / MODEL_DIR / "encoder")
        parts["vae"].save_pretrained(tmp / BASE_DIR / "vae")
        write_json(tmp / BASE_DIR / "scheduler" / "scheduler_config.json", SD15_SCHEDULER)
        write_json(tmp / BASE_DIR / "model_index.json", _model_index())
        from safetensors.torch import save_file

        (tmp / LCM_DIR).mkdir()
        save_file(make_tiny_lcm_lora(parts["unet"], seed=seed + 1), str(tmp / LCM_DIR / LORA_FILE))
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        (root / MARKER).unlink(missing_ok=True)
        for name in (MODEL_DIR, BASE_DIR, LCM_DIR):
            if (root / name).exists():
                shutil.rmtree(root / name)
            os.replace(tmp / name, root / name)
        marker_tmp = tmp / MARKER
        write_json(marker_tmp, {"format": FORMAT_VERSION, "seed": seed, "files": files})
        os.replace(marker_tmp, root / MARKER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_path, base_path


def make_tiny_controlnet(unet: Any, seed: int = 0, vae_scale_factor: int = 2) -> Any:
    """A ControlNet for the tiny ``unet`` (``ControlNetModel.from_unet``: same blocks, UNet weights copied).

    The conditioning embedding downsamples by ``vae_scale_factor`` (image side / latent side: 2 for the tiny
    VAE), as the published one does by SD's 8.
    The parts a fresh ControlNet zero-initialises get random weights (the embedding's last conv: std
    :data:`EMBED_STD`; the zero convs: std :data:`ZERO_CONV_STD`; biases zero), deterministic in ``seed`` like
    the rest: a fresh ControlNet adds exactly nothing, and the tests need the condition image to matter.
    """
    from diffusers import ControlNetModel

    channels = tuple(16 * 2**i for i in range(vae_scale_factor.bit_length()))  # one stride-2 conv per halving
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)  # the conditioning embedding's other convs are initialised at random here
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
        net.controlnet_cond_embedding.conv_out.weight.normal_(0.0, EMBED_STD)
        net.controlnet_cond_embedding.conv_out.bias.zero_()
        for conv in (*net.controlnet_down_blocks, net.controlnet_mid_block):
            conv.weight.normal_(0.0, ZERO_CONV_STD)
            conv.bias.zero_()
    return net.eval()


def make_pose_image(yaw: float, size: int = 64) -> np.ndarray:
    """A size x size uint8 RGB normal map of an ellipsoid turned by ``yaw`` (radians), black background.

    Encoded the way Arc2Face's ControlNet demo encodes the rendered normals: ``(n * 0.5 + 0.5) * 255``.
    """
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(coords, coords, indexing="ij")
    a, b = 0.6, 0.8  # half-width, half-height
    inside = (x / a) ** 2 + (y / b) ** 2 < 1.0
    z = np.sqrt(np.clip(1.0 - (x / a) ** 2 - (y / b) ** 2, 0.0, None))
    normal = np.stack([x / a**2, -y / b**2, z], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-12
    c, s = np.cos(yaw), np.sin(yaw)
    turned = normal @ np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]]).T
    rgb = np.round((turned * 0.5 + 0.5) * 255.0).astype(np.uint8)
    return np.where(inside[..., None], rgb, 0).astype(np.uint8)


def tiny_pose_images_path(root: Path) -> Path:
    """The condition-image folder of a :func:`build_tiny_arc2face_controlnet` build under ``root``."""
    return Path(root) / POSE_DIR


def build_tiny_arc2face_controlnet(root: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """Build (once) the tiny Arc2Face plus its pose ControlNet and condition images under ``root``; return
    ``(model_path, base_path, pose_images_path)``.

    Calls :func:`build_tiny_arc2face` first (whose files are unchanged), then writes ``<model>/controlnet/``
    (a :func:`make_tiny_controlnet` of the saved tiny UNet, ``save_pretrained``) and one 64 x 64 PNG per
    :data:`POSE_YAWS` entry. Idempotent like the plain build (its own marker, written last); the same seed gives
    byte-identical files.
    """
    from diffusers import UNet2DConditionModel
    from PIL import Image

    root = Path(root)
    model_path, base_path = build_tiny_arc2face(root, seed)
    poses = tiny_pose_images_path(root)
    if build_is_complete(root, CONTROLNET_MARKER, seed, FORMAT_VERSION):
        return model_path, base_path, poses
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root))
    try:
        unet = UNet2DConditionModel.from_pretrained(model_path, subfolder="arc2face")
        vae_blocks = json.loads((base_path / "vae" / "config.json").read_text())["block_out_channels"]
        make_tiny_controlnet(unet, seed + 2, 2 ** (len(vae_blocks) - 1)).save_pretrained(tmp / "controlnet")
        (tmp / POSE_DIR).mkdir()
        for k, yaw in enumerate(POSE_YAWS):
            Image.fromarray(make_pose_image(yaw)).save(tmp / POSE_DIR / f"pose_{k}.png")
        (root / CONTROLNET_MARKER).unlink(missing_ok=True)
        files = []
        for src, dst in ((tmp / "controlnet", model_path / "controlnet"), (tmp / POSE_DIR, poses)):
            files += [(dst / p.relative_to(src)).relative_to(root).as_posix() for p in src.rglob("*") if p.is_file()]
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(src, dst)
        marker_tmp = tmp / CONTROLNET_MARKER
        write_json(marker_tmp, {"format": FORMAT_VERSION, "seed": seed, "files": sorted(files)})
        os.replace(marker_tmp, root / CONTROLNET_MARKER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_path, base_path, poses
