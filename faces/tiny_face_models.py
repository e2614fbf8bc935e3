"""Tiny random-weight face models written in the exact on-disk format of Vec2Face's published files.

Each writer builds the real class (:class:`~facefoundry.faces.iresnet.IResNet`,
:class:`~facefoundry.faces.sixdrepnet.SixDRepNet`) at a small depth and width, randomises it from a seed and
saves ``model.state_dict()`` with ``torch.save``: the same key names, nesting and (absent) wrapping as
``weights/arcface-r100-glint360k.pth``, ``weights/magface-r100-glint360k.pth`` and
``weights/6DRepNet_300W_LP_AFLW2000.pth`` in ``BooBooWu/Vec2Face``, so tests and the smoke preset go through
the real loaders. ``write_tiny_magface(..., layout="magface")`` writes MagFace's own training layout instead.
The attribute estimators get the same treatment: ``write_tiny_genderage`` exports an ONNX graph with the
interface of InsightFace's ``genderage.onnx`` and ``write_tiny_fairface`` saves a narrow ResNet-34 state dict
laid out as FairFace's ``res34_fair_align_multi_7_20190809.pt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from facefoundry.faces.iresnet import ARCFACE_FILE, MAGFACE_FILE, IResNet
from facefoundry.faces.sixdrepnet import SIXDREPNET_FILE, SixDRepNet

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


# --- attribute estimators (genderage.onnx, FairFace) ---------------------------------------------------------

TINY_FAIRFACE_WIDTHS = (4, 4, 8, 8, 16)  # stem, layer1..4; ResNet-34 block counts (3, 4, 6, 3) kept


class _TinyGenderAge(nn.Module):
    """``bn_data`` (input normalisation, as the assumed MXNet-converted original) -> 3 convs -> fc to 3."""

    def __init__(self):
        super().__init__()
        self.bn_data = nn.BatchNorm2d(3, eps=2e-5)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.PReLU(8),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.PReLU(16),
            nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.fc1 = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.body(self.bn_data(x)))


def write_tiny_genderage(path: str | Path, seed: int = 0, batch: int | None = None) -> Path:
    """Write a tiny ``genderage.onnx``: input ``data`` [N, 3, 96, 96] float32 (RGB pixels 0..255) -> [N, 3].

    The first node is a BatchNormalization named ``bn_data`` that maps pixels to about [-1, 1], so InsightFace's
    rule gives mean 0 / std 1, as assumed for the published file (:mod:`facefoundry.faces.genderage`).
    ``batch=None``: dynamic batch axis; an int fixes it (e.g. 1, as some exports do).
    """
    import warnings

    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _randomise(_TinyGenderAge())
        with torch.no_grad():
            net.bn_data.weight.fill_(1.0)
            net.bn_data.bias.zero_()
            net.bn_data.running_mean.fill_(127.5)
            net.bn_data.running_var.fill_(128.0**2)
            net.fc1.bias.copy_(torch.tensor([0.0, 0.0, 0.3]))  # ages around 30 for a random face
    dynamic = {"data": {0: "batch"}, "fc1": {0: "batch"}} if batch is None else None
    with warnings.catch_warnings():  # the TorchScript exporter (dynamo=False) is deprecated but what we want
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(batch or 2, 3, 96, 96),), str(path), dynamo=False,
                          input_names=["data"], output_names=["fc1"], dynamic_axes=dynamic)
    model = onnx.load(str(path))
    first = model.graph.node[0]
    if first.op_type != "BatchNormalization":
        raise RuntimeError(f"tiny genderage export: expected BatchNormalization first, got {first.op_type}")
    first.name = "bn_data"  # MXNet-converted graphs keep the symbol's name; the exporter writes a module path
    onnx.save(model, str(path))
    return path


def tiny_fairface(seed: int = 0, widths: Sequence[int] = TINY_FAIRFACE_WIDTHS) -> nn.Module:
    """A narrow FairFace ResNet-34 (same block counts and key names) with seeded random weights."""
    from facefoundry.faces.fairface import RESNET34_BLOCKS, FairFaceResNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _randomise(FairFaceResNet(RESNET34_BLOCKS, widths))


def write_tiny_fairface(path: str | Path, seed: int = 0, widths: Sequence[int] = TINY_FAIRFACE_WIDTHS) -> Path:
    """Write a tiny ``res34_fair_align_multi_7_20190809.pt``: a bare ResNet-34-layout state dict, fc 18-way."""
    return _save(tiny_fairface(seed, widths).state_dict(), path)
