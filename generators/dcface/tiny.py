"""Tiny random-weight DCFace release, ID set and style bank, written in the official formats.

``<root>/dcface/``:

* ``dcface_tiny.ckpt``: a PyTorch-Lightning 1.7.1-style checkpoint (``torch.save`` of ``epoch``, ``global_step``,
  ``pytorch-lightning_version``, ``state_dict``, ``hyper_parameters``) whose state dict has every prefix of the
  release: ``model.``, ``ema_model.averaged_model.`` (the UNet twice, different weights), ``label_mapping.``,
  ``recognition_model.backbone.``, ``recognition_model.center.weight``, ``recognition_model_eval.`` (a stand-in)
  and ``external_mapping.``. ``hyper_parameters`` holds a ``functools.partial`` and an object of a class, as the
  release holds OmegaConf objects, so that ``torch.load(weights_only=True)`` refuses the file as it refuses the
  real one. Widths are small (UNet 32-64 channels, IR stages 16-128), the style grid is 3x3 and the image 112 px.
* ``id_set.parquet``: ``count`` smooth random 112 px "ID images" with random unit vectors;
* ``style_bank/``: six smooth random 112 px PNG "style images".
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facefoundry.generators.dcface.generator import (
    EMA_PREFIX,
    HEAD_PREFIX,
    ID_PREFIX,
    LIVE_PREFIX,
    STYLE_PREFIX,
    DCFaceArch,
    DCFaceNetworks,
)
from facefoundry.generators.dcface.inputs import ALIGNED_SIZE, write_id_set
from facefoundry.generators.dcface.unet import GMIX_ARCH, ADMArch
from facefoundry.generators.tiny_weights import random_state_dict

FOLDER = "dcface"
CHECKPOINT = "dcface_tiny.ckpt"
ID_SET = "id_set.parquet"
STYLE_BANK = "style_bank"
STYLE_IMAGES = 6
MARKER = ".facefoundry-tiny-dcface.json"
FORMAT_VERSION = 2
TINY_ARCH = DCFaceArch(
    unet=ADMArch(image_size=GMIX_ARCH.image_size, model_channels=32, channel_mult=(1, 1, 1, 1, 2, 2),
                 skip_downsample_level=GMIX_ARCH.skip_downsample_level, context_channels=128),
    spatial_dim=3, id_depths=(16, 16, 32, 128), style_depths=(16, 16, 16, 16))

RESIDUAL_OUT_SCALE = "res_layer.5.weight"  # the BatchNorm scale closing each IR residual branch
ID_RESIDUAL_DAMPING = 0.2


class TrainerConfig:
    """Stands in for the OmegaConf objects in a released checkpoint's ``hyper_parameters`` (a pickled class)."""

    def __init__(self, **values):
        self.values = values


def tiny_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """The Lightning ``state_dict`` of a tiny build (deterministic in ``seed``)."""
    nets = DCFaceNetworks(TINY_ARCH)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for prefix, module, offset in ((LIVE_PREFIX, nets.unet, 0), (EMA_PREFIX, nets.unet, 1),
                                   (ID_PREFIX, nets.id_encoder, 2), (STYLE_PREFIX, nets.style_encoder, 3),
                                   (HEAD_PREFIX, nets.style_head, 4)):
        state.update((prefix + k, v) for k, v in random_state_dict(module, seed * 10 + offset).items())
    for key in [k for k in state if k.startswith(ID_PREFIX) and k.endswith(RESIDUAL_OUT_SCALE)]:
        # Random residual branches add up to ID tokens ~1e2 against layer-normalised style tokens ~1, and the
        # cross-attention then ignores the style; damped, both conditions reach the image as in a trained model.
        state[key] = state[key] * ID_RESIDUAL_DAMPING
    gen = torch.Generator().manual_seed(seed)
    state["recognition_model.center.weight"] = torch.randn(10, TINY_ARCH.id_depths[-1], generator=gen)
    state["recognition_model_eval.backbone.input_layer.0.weight"] = torch.randn(16, 3, 3, 3, generator=gen)
    return state


def smooth_noise(rng: np.random.Generator, size: int = ALIGNED_SIZE) -> np.ndarray:
    """A blurry random colour image (upsampled 8x8 noise), uint8 RGB."""
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def _is_complete(base: Path, seed: int, count: int) -> bool:
    try:
        return json.loads((base / MARKER).read_text()) == {"format": FORMAT_VERSION, "seed": seed, "count": count}
    except (OSError, ValueError):
        return False


def build_tiny_dcface(root: str | Path, seed: int = 0, count: int = 8) -> tuple[Path, Path, Path]:
    """Build (once) a tiny checkpoint, an ID set of ``count`` identities and a style bank under ``root/dcface``;
    return (checkpoint, ID set, style bank). Idempotent for the same arguments; written atomically."""
    base = Path(root) / FOLDER
    paths = base / CHECKPOINT, base / ID_SET, base / STYLE_BANK
    if _is_complete(base, seed, count):
        return paths
    base.mkdir(parents=True, exist_ok=True)
    (base / MARKER).unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=base))
    try:
        torch.save({"epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.7.1",
                    "state_dict": tiny_state_dict(seed),
                    "hyper_parameters": {"datamodule": functools.partial(dict, img_size=ALIGNED_SIZE),
                                         "external_mapping": TrainerConfig(spatial_dim=TINY_ARCH.spatial_dim)}},
                   tmp / CHECKPOINT)
        rng = np.random.default_rng(seed)
        vectors = rng.standard_normal((count, 512)).astype(np.float32)
        write_id_set(tmp / ID_SET, [smooth_noise(rng) for _ in range(count)], vectors,
                     [f"tiny:{i}" for i in range(count)], {"encoder": "none (tiny random build)", "source": "tiny"})
        (tmp / STYLE_BANK).mkdir()
        for i in range(STYLE_IMAGES):
            Image.fromarray(smooth_noise(rng)).save(tmp / STYLE_BANK / f"style_{i}.png")
        shutil.rmtree(base / STYLE_BANK, ignore_errors=True)
        for name in (CHECKPOINT, ID_SET, STYLE_BANK):
            os.replace(tmp / name, base / name)
        marker = tmp / MARKER
        marker.write_text(json.dumps({"format": FORMAT_VERSION, "seed": seed, "count": count}) + "\n")
        os.replace(marker, base / MARKER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
