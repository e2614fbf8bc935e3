"""Tiny random-weight face models written in the exact on-disk format of Vec2Face's published files.

Each writer builds the real class (:class:`~facefoundry.filters.iresnet.IResNet`,
:class:`~facefoundry.filters.sixdrepnet.SixDRepNet`) at a small depth and width, randomises it from a seed and
saves ``model.state_dict()`` with ``torch.save``: the same key names, nesting and (absent) wrapping as
``weights/arcface-r100-glint360k.pth``, ``weights/magface-r100-glint360k.pth`` and
``weights/6DRepNet_300W_LP_AFLW2000.pth`` in ``BooBooWu/Vec2Face``, so tests and the smoke preset go through
the real loaders. ``write_tiny_magface(..., layout="magface")`` writes MagFace's own training layout instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from facefoundry.filters.iresnet import ARCFACE_FILE, MAGFACE_FILE, IResNet
from facefoundry.filters.sixdrepnet import SIXDREPNET_FILE, SixDRepNet

TINY_IRESNET_LAYERS = (1, 1, 1, 1)
TINY_IRESNET_WIDTHS = (8, 16, 16, 32)
TINY_REPVGG_BLOCKS = (1, 2, 2, 1)
TINY_REPVGG_WIDTHS = (8, 16, 16, 16, 64)


def _randomise(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, PReLU slopes and biases (convs keep torch's init)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.0, 0.1)
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        elif isinstance(m, nn.PReLU):
            m.weight.data.uniform_(0.0, 0.5)
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.data.normal_(0.0, 0.05)
    return model.eval()


def tiny_iresnet(seed: int = 0, layers: Sequence[int] = TINY_IRESNET_LAYERS,
                 widths: Sequence[int] = TINY_IRESNET_WIDTHS, num_features: int = 512) -> IResNet:
    """A small IResNet (same module and parameter names as iresnet100) with seeded random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _randomise(IResNet(layers, widths, num_features=num_features))


def tiny_sixdrepnet(seed: int = 0, num_blocks: Sequence[int] = TINY_REPVGG_BLOCKS,
                    widths: Sequence[int] = TINY_REPVGG_WIDTHS) -> SixDRepNet:
    """A small deploy-mode 6DRepNet (RepVGG g2 grouping rule, same parameter names) with seeded random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _randomise(SixDRepNet(num_blocks, widths))


def _save(obj: object, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def write_tiny_arcface(path: str | Path, seed: int = 0, **arch) -> Path:
    """Write a tiny ``arcface-r100-glint360k.pth``: a plain IResNet state dict."""
    return _save(tiny_iresnet(seed, **arch).state_dict(), path)


def write_tiny_magface(path: str | Path, seed: int = 1, layout: str = "vec2face", **arch) -> Path:
    """Write a tiny ``magface-r100-glint360k.pth``.

    ``layout="vec2face"``: a plain IResNet state dict (the published file). ``layout="magface"``: MagFace's
    trainer checkpoint, ``{"epoch", "arch", "state_dict"}`` with the backbone under ``features.module.`` and a
    MagLinear head ``fc.weight`` of shape (512, classes).
    """
    state = tiny_iresnet(seed, **arch).state_dict()
    if layout == "vec2face":
        return _save(state, path)
    if layout != "magface":
        raise ValueError(f"layout must be 'vec2face' or 'magface', got {layout!r}")
    wrapped = {f"features.module.{k}": v for k, v in state.items()}
    wrapped["fc.weight"] = torch.randn(state["fc.weight"].shape[0], 10, generator=torch.Generator().manual_seed(seed))
    return _save({"epoch": 1, "arch": "iresnet100", "state_dict": wrapped}, path)


def write_tiny_sixdrepnet(path: str | Path, seed: int = 2, **arch) -> Path:
    """Write a tiny ``6DRepNet_300W_LP_AFLW2000.pth``: a plain deploy-mode SixDRepNet state dict."""
    return _save(tiny_sixdrepnet(seed, **arch).state_dict(), path)


def write_tiny_face_models(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """All three tiny files under ``folder/weights/`` with the official file names (for the smoke preset)."""
    weights = Path(folder) / "weights"
    return {
        "arcface": write_tiny_arcface(weights / ARCFACE_FILE, seed=seed),
        "magface": write_tiny_magface(weights / MAGFACE_FILE, seed=seed + 1),
        "sixdrepnet": write_tiny_sixdrepnet(weights / SIXDREPNET_FILE, seed=seed + 2),
    }
