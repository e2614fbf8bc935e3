"""Tiny random-weight IDiff-Face, written in the official release layout.

``<root>/idiff-face/`` gets what a user downloads, with small widths so that a 128x128 image takes
milliseconds per step on a CPU:

* ``unet-cond-ca-tiny/.hydra/config.yaml``: a training config as Hydra saves it (unresolved
  ``${constants.*}`` interpolations, ``_target_`` entries, the ``model``/``diffusion``/``constants``
  sections of ``configs/train_config.yaml`` + ``configs/model/unet_cond_ca_cpd25.yaml``);
* ``unet-cond-ca-tiny/checkpoints/ema_averaged_model.ckpt``: the DDPM module's state dict
  (``eps_model.*`` and the eight schedule buffers), saved with ``torch.save`` as the official trainer does;
* ``autoencoder/first_stage_decoder_state_dict.pt`` and ``first_stage_config.yaml``: the VQ decoder half
  (``decoder.*``, ``quantize.embedding.weight``, ``post_quant_conv.*``) and its config.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from facefoundry.generators.idiff_face.generator import DECODER_CONFIG, DECODER_FILE, TRAIN_CONFIG
from facefoundry.generators.idiff_face.model import (
    SCHEDULE_BUFFERS,
    DiffusionModel,
    VQDecoder,
    arch_from_config,
    vq_arch_from_config,
)
from facefoundry.generators.tiny_weights import random_state_dict

FOLDER = "idiff-face"
MODEL_DIR = "unet-cond-ca-tiny"
AUTOENCODER_DIR = "autoencoder"
CHECKPOINT = "checkpoints/ema_averaged_model.ckpt"
MARKER = ".facefoundry-tiny-idiff-face.json"
FORMAT_VERSION = 1


def train_config(timesteps: int = 1000, initial_channels: int = 32, context_channels: int = 32) -> dict:
    """A Hydra-saved training config of the released shape (CA conditioning, CPD 25 %), small widths."""
    return {
        "constants": {"seed": 0, "image_size": 128, "input_channels": 3, "n_classes": 0},
        "latent_diffusion": True,
        "diffusion": {"_target_": "diffusion.ddpm.DenoisingDiffusionProbabilisticModel", "eps_model": "${model}",
                      "T": timesteps, "schedule_type": "linear", "schedule_k": 1, "schedule_beta_min": 0.0,
                      "schedule_beta_max": 0.1, "criterion": {"_target_": "torch.nn.MSELoss"}},
        "model": {"_target_": "models.diffusion.unet.ConditionalUNet",
                  "input_channels": "${constants.input_channels}", "initial_channels": initial_channels,
                  "channel_multipliers": [1, 1, 2, 1], "is_attention": [False, True, True, True],
                  "attention_heads": -1, "attention_head_channels": 32, "n_blocks_per_resolution": 2,
                  "condition_type": "CA", "is_context_conditional": True,
                  "n_context_classes": "${constants.n_classes}", "context_input_channels": 512,
                  "context_channels": context_channels, "learn_empty_context": False,
                  "context_dropout_probability": 0.25},
    }


def first_stage_config() -> dict:
    """``models/autoencoder/first_stage_config.yaml`` of the official repository, with small widths."""
    return {"target": "ldm.models.autoencoder.VQModelInterface",
            "params": {"embed_dim": 3, "n_embed": 64,
                       "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 256, "in_channels": 3,
                                    "out_ch": 3, "ch": 32, "ch_mult": [1, 2, 4], "num_res_blocks": 2,
                                    "attn_resolutions": [], "dropout": 0.0},
                       "lossconfig": {"target": "torch.nn.Identity"}}}


def tiny_checkpoints(seed: int = 0, timesteps: int = 1000) -> tuple[dict, dict[str, torch.Tensor], dict,
                                                                   dict[str, torch.Tensor]]:
    """(training config, DDPM state dict, first-stage config, decoder state dict) of a tiny build."""
    cfg, vq_cfg = train_config(timesteps), first_stage_config()
    diffusion = DiffusionModel(arch_from_config(cfg))
    state = random_state_dict(diffusion.eps_model, seed)
    ddpm = {f"eps_model.{k}": v for k, v in state.items()}
    ddpm |= {k: getattr(diffusion, k).clone() for k in SCHEDULE_BUFFERS}
    decoder = random_state_dict(VQDecoder(vq_arch_from_config(vq_cfg)), seed + 1)
    return cfg, ddpm, vq_cfg, decoder


def _is_complete(root: Path, seed: int, timesteps: int) -> bool:
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == {"format": FORMAT_VERSION, "seed": seed, "timesteps": timesteps}


def build_tiny_idiff_face(root: str | Path, seed: int = 0, timesteps: int = 1000) -> tuple[Path, Path]:
    """Build (once) a tiny release under ``root/idiff-face``; return (model folder, autoencoder folder).

    Idempotent: a complete build with the same arguments (its marker is written last) is reused; otherwise
    everything is written in a temporary folder and moved into place. The same arguments give the same bytes.
    """
    base = Path(root) / FOLDER
    model_dir, ae_dir = base / MODEL_DIR, base / AUTOENCODER_DIR
    if _is_complete(base, seed, timesteps):
        return model_dir, ae_dir
    base.mkdir(parents=True, exist_ok=True)
    (base / MARKER).unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=base))
    try:
        cfg, ddpm, vq_cfg, decoder = tiny_checkpoints(seed, timesteps)
        files = {f"{MODEL_DIR}/{TRAIN_CONFIG}": cfg, f"{MODEL_DIR}/{CHECKPOINT}": ddpm,
                 f"{AUTOENCODER_DIR}/{DECODER_CONFIG}": vq_cfg, f"{AUTOENCODER_DIR}/{DECODER_FILE}": decoder}
        for rel, content in files.items():
            staged = tmp / rel
            staged.parent.mkdir(parents=True, exist_ok=True)
            if rel.endswith(".yaml"):
                staged.write_text(yaml.safe_dump(content, sort_keys=False))
            else:
                torch.save(content, staged)
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, base / rel)
        marker = tmp / MARKER
        marker.write_text(json.dumps({"format": FORMAT_VERSION, "seed": seed, "timesteps": timesteps}) + "\n")
        os.replace(marker, base / MARKER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir, ae_dir
