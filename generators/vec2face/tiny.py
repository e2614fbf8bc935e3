"""Tiny random-weight Vec2Face, saved in the official on-disk format.

``<root>/weights/vec2face_generator.pth`` is a ``torch.save`` dict whose ``model_vec2face`` entry is
the state dict: the same 349 key names as the published ``BooBooWu/Vec2Face`` file (unused
``patch_embed``/``center_token`` and the ``token_emb.position_ids`` buffer included), with small
widths (:data:`~facefoundry.generators.vec2face.model.TINY_ARCH`: 64-d tokens, 32-channel image
decoder) so a 112x112 image takes milliseconds on a CPU. ``training=True`` writes a training-style
checkpoint instead (discriminator, EMA, optimizer and grad-scaler states, ``epoch`` and an
``argparse.Namespace`` under ``args``), the shape of ``util/misc.py::save_model`` in the official
repository, to exercise the safe-globals path of the loader.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from facefoundry.generators.vec2face.model import TINY_ARCH, Vec2FaceArch, build_model

CHECKPOINT = "weights/vec2face_generator.pth"
MARKER = ".facefoundry-tiny-vec2face.json"
FORMAT_VERSION = 1


def tiny_state_dict(seed: int = 0, arch: Vec2FaceArch = TINY_ARCH) -> dict[str, torch.Tensor]:
    """Random weights for ``arch``, deterministic in ``seed`` (global RNG untouched).

    Weights ~ N(0, 1/fan_in), biases and embeddings ~ N(0, 0.02^2), norm scales ~ 1 + N(0, 0.1^2).
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, ref in build_model(arch, device="meta").state_dict().items():
        if name.endswith("position_ids"):
            out[name] = torch.arange(ref.shape[1]).unsqueeze(0)
            continue
        noise = torch.randn(ref.shape, generator=gen)
        if name.endswith(".weight") and ref.ndim == 1:  # LayerNorm / GroupNorm scales
            out[name] = 1.0 + 0.1 * noise
        elif name.endswith(".weight") and "position_embeddings" not in name:  # linear / conv
            out[name] = noise / ref[0].numel() ** 0.5
        else:
            out[name] = 0.02 * noise
    return out


def _training_extras(state: dict[str, torch.Tensor], seed: int) -> dict[str, Any]:
    """What the official trainer saves next to ``model_vec2face`` (small stand-ins for the big parts)."""
    gen = torch.Generator().manual_seed(seed + 1)
    disc = {"main.0.weight": torch.randn(8, 3, 4, 4, generator=gen), "main.0.bias": torch.zeros(8),
            "main.2.weight": torch.randn(1, 8, 4, 4, generator=gen), "main.2.bias": torch.zeros(1)}

    def adamw(params: dict[str, torch.Tensor]) -> dict[str, Any]:
        floats = [v for v in params.values() if v.is_floating_point()]
        return {
            "state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)}
                      for i, v in enumerate(floats[:4])},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False,
                              "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                              "fused": None, "params": list(range(len(floats)))}],
        }

    args = argparse.Namespace(model="vec2face_vit_base_patch16", batch_size=8, epochs=2000, lr=4e-4,
                              mask_ratio_min=0.1, mask_ratio_max=1.0, mask_ratio_mu=0.15, mask_ratio_std=0.25,
                              use_rep=True, rep_dim=512, output_dir="./workspace", device="cuda",
                              distributed=False, resume="")
    return {
        "model_disc": disc,
        "model_ema": {k: v.clone() for k, v in state.items()},
        "optimizer_vec2face": adamw(state),
        "optimizer_disc": adamw(disc),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                   "_growth_tracker": 0},
        "args": args,
    }


def _is_complete(root: Path, seed: int, training: bool) -> bool:
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (marker.get("format") == FORMAT_VERSION and marker.get("seed") == seed
            and marker.get("training") == training and (root / CHECKPOINT).is_file())


def build_tiny_vec2face(root: str | Path, seed: int = 0, training: bool = False) -> Path:
    """Build (once) a tiny random checkpoint under ``root``; return the path of the ``.pth`` file.

    Idempotent: a complete build with the same seed and kind (its marker is written last) is reused.
    Otherwise the file is written in a temporary folder inside ``root`` (under its final name, which
    ``torch.save`` records in the archive) and moved into place. The same arguments give the same bytes.
    """
    root = Path(root)
    target = root / CHECKPOINT
    if _is_complete(root, seed, training):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root))
    try:
        state = tiny_state_dict(seed)
        payload: dict[str, Any] = {"model_vec2face": state, "epoch": 0}
        if training:
            payload.update(_training_extras(state, seed))
        staged = tmp / CHECKPOINT
        staged.parent.mkdir(parents=True)
        torch.save(payload, staged)
        (root / MARKER).unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
        marker = tmp / MARKER
        marker.write_text(json.dumps({"format": FORMAT_VERSION, "seed": seed, "training": training,
                                      "files": [CHECKPOINT]}, indent=2, sort_keys=True) + "\n")
        os.replace(marker, root / MARKER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
