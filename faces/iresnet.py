"""IResNet (insightface ``arcface_torch`` layout) and the two IResNet-100 models Vec2Face ships.

``weights/arcface-r100-glint360k.pth`` (identity) and ``weights/magface-r100-glint360k.pth`` (quality) in
``BooBooWu/Vec2Face`` are plain state dicts of the same iresnet100 class (Vec2Face builds ``iresnet("100")`` and
loads each file strictly). Input: ``(N, 3, 112, 112)`` RGB in [-1, 1] (``(pixel / 255 - 0.5) / 0.5``; during
AttrOP the generator's clipped output goes in as is). Output: raw ``(N, 512)`` features (ArcFace norm ~22);
the L2 norm of the MagFace feature is its quality score. Module names: conv1, bn1, prelu, layer1..4 of
:class:`IBasicBlock` (bn1, conv1, bn2, prelu, conv2, bn3, downsample.0/.1), bn2, dropout, fc, features.
Loaded models are in eval mode with frozen parameters; gradients still flow to the input image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from facefoundry.faces.face_weights import (
    FaceWeightsError,
    key_index_counts,
    load_strict,
    read_checkpoint,
    resolve_weights,
    tensor_dict,
)

IRESNET100_LAYERS = (3, 13, 30, 3)
STANDARD_WIDTHS = (64, 128, 256, 512)
ARCFACE_FILE = "arcface-r100-glint360k.pth"
MAGFACE_FILE = "magface-r100-glint360k.pth"
BN_EPS = 1e-5  # arcface_torch (and Vec2Face's copy of it)
MAGFACE_BN_EPS = 2e-5  # MagFace's own iresnet, used for checkpoints in MagFace's training layout
MAGFACE_PREFIXES = ("features.module.", "module.features.")  # DataParallel / DDP wrapping in MagFace's trainer


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN, conv3x3, BN, PReLU, conv3x3 (strided), BN, plus shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 eps: float = BN_EPS):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=eps)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)  # the stride sits on the second conv in arcface_torch
        self.bn3 = nn.BatchNorm2d(planes, eps=eps)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IResNet for 112x112 faces; ``layers`` blocks per stage, ``widths`` channels per stage (stem = widths[0]).

    ``fp16`` runs the convolutions under CUDA autocast and the head in float32, like ``arcface_torch``'s flag.
    """

    def __init__(self, layers: Sequence[int] = IRESNET100_LAYERS, widths: Sequence[int] = STANDARD_WIDTHS,
                 num_features: int = 512, dropout: float = 0.0, fp16: bool = False, eps: float = BN_EPS):
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"IResNet needs 4 stages, got layers={list(layers)} widths={list(widths)}")
        self.layers, self.widths, self.fp16 = tuple(layers), tuple(widths), fp16
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=eps)
        self.prelu = nn.PReLU(widths[0])
        inplanes = widths[0]
        for i, (blocks, planes) in enumerate(zip(layers, widths, strict=True), start=1):
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes, kernel_size=1, stride=2, bias=False),
                                       nn.BatchNorm2d(planes, eps=eps))
            stage = [IBasicBlock(inplanes, planes, 2, downsample, eps)]
            stage += [IBasicBlock(planes, planes, eps=eps) for _ in range(1, blocks)]
            self.add_module(f"layer{i}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(widths[3], eps=eps)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(widths[3] * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 112, 112)`` RGB in [-1, 1] -> raw ``(N, num_features)`` features."""
        with torch.autocast("cuda", enabled=self.fp16 and x.device.type == "cuda"):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x.float()))


def iresnet(depth: int | str = 100, **kwargs) -> IResNet:
    """The standard IResNet depths of ``arcface_torch`` (18, 34, 50, 100, 200)."""
    table = {"18": (2, 2, 2, 2), "34": (3, 4, 6, 3), "50": (3, 4, 14, 3), "100": IRESNET100_LAYERS,
             "200": (6, 26, 60, 6)}
    if str(depth) not in table:
        raise ValueError(f"unknown IResNet depth {depth}; choose one of {sorted(table, key=int)}")
    return IResNet(table[str(depth)], **kwargs)


def iresnet_arch(state: Mapping[str, torch.Tensor], path: Path, model_name: str) -> dict:
    """``layers``, ``widths`` and ``num_features`` read off an IResNet state dict's keys and shapes.

    A full-width file (64-channel stem) must be exactly iresnet100; narrower ones are tiny test models.
    """
    keys = list(state)
    try:
        layers = tuple(key_index_counts(keys, f"layer{i}.") for i in range(1, 5))
        widths = tuple(int(state[f"layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5))
        stem, num_features = int(state["conv1.weight"].shape[0]), int(state["fc.weight"].shape[0])
    except (KeyError, IndexError) as exc:
        raise FaceWeightsError(f"{model_name} weights {path} are not an IResNet state dict (no key {exc}; "
                               f"keys start {keys[:4]})") from exc
    if stem != widths[0]:
        raise FaceWeightsError(f"{model_name} weights {path}: stem width {stem} != layer1 width {widths[0]}")
    if stem == STANDARD_WIDTHS[0] and (layers, widths, num_features) != (IRESNET100_LAYERS, STANDARD_WIDTHS, 512):
        raise FaceWeightsError(
            f"{model_name} weights {path}: expected iresnet100 (blocks {list(IRESNET100_LAYERS)}, widths "
            f"{list(STANDARD_WIDTHS)}, 512 features), found blocks {list(layers)}, widths {list(widths)}, "
            f"{num_features} features"
        )
    return {"layers": layers, "widths": widths, "num_features": num_features}


def _build_loaded(state: dict, path: Path, model_name: str, device: str | torch.device, eps: float) -> IResNet:
    model = IResNet(**iresnet_arch(state, path, model_name), eps=eps)
    load_strict(model, state, path, model_name)
    model.requires_grad_(False)
    model.source = str(path)
    return model.eval().to(device)


def load_arcface_r100(path: str | Path, device: str | torch.device = "cpu", fp16: bool = False) -> IResNet:
    """An ``arcface_torch`` IResNet-100 state dict, eval mode, frozen: Vec2Face's ArcFace-R100 (Glint360K,
    ``weights/arcface-r100-glint360k.pth``) or another file in its layout (ID-Booth's MS1MV3 one, loaded with
    ``fp16`` as its ``get_model("r100", fp16=True)``: convolutions under CUDA autocast).

    ``path``: the file, or a folder holding ``weights/<file>`` or ``<file>`` (Vec2Face's file name). Input
    ``(N, 3, 112, 112)`` RGB in [-1, 1]; output raw ``(N, 512)`` features (not L2-normalised).
    """
    name = "ArcFace-R100"
    path = resolve_weights(path, ARCFACE_FILE, name)
    state = tensor_dict(read_checkpoint(path, name), path, name)
    model = _build_loaded(state, path, name, device, BN_EPS)
    model.fp16 = fp16
    return model


def magface_backbone_state(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(IResNet state dict, whether the file is in MagFace's own training layout) of a MagFace checkpoint.

    Vec2Face's file is a plain IResNet state dict. MagFace's trainer saves ``{"state_dict": ...}`` with the
    backbone under ``features.module.`` (or ``module.features.``) next to its MagLinear head ``fc.*``.
    """
    name = "MagFace-R100"
    native = isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping)
    state = tensor_dict(obj["state_dict"] if native else obj, path, name)
    for prefix in MAGFACE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            head_prefix = prefix.replace("features.", "fc.") if prefix.startswith("module.") else "fc."
            others = [k for k in state if not k.startswith(prefix) and not k.startswith(head_prefix)]
            if others:
                raise FaceWeightsError(f"{name} weights {path}: keys outside the backbone ({prefix}*) and the "
                                       f"MagLinear head ({head_prefix}*): {others[:5]}")
            return backbone, True
    if native:
        raise FaceWeightsError(f"{name} weights {path}: 'state_dict' has no keys under {' or '.join(MAGFACE_PREFIXES)}")
    return state, False


def load_magface_r100(path: str | Path, device: str | torch.device = "cpu") -> IResNet:
    """Vec2Face's MagFace-R100 quality model from ``weights/magface-r100-glint360k.pth``, eval mode, frozen.

    Same input as :func:`load_arcface_r100`; :func:`magface_quality` of the output is the quality score
    (Vec2Face's AttrOP targets a norm of 27 by default). Also reads checkpoints in MagFace's own training
    layout (see :func:`magface_backbone_state`), run with MagFace's BatchNorm eps of 2e-5.
    """
    name = "MagFace-R100"
    path = resolve_weights(path, MAGFACE_FILE, name)
    state, native = magface_backbone_state(read_checkpoint(path, name), path)
    return _build_loaded(state, path, name, device, MAGFACE_BN_EPS if native else BN_EPS)


def magface_quality(features: torch.Tensor) -> torch.Tensor:
    """MagFace quality: the L2 norm of each raw feature row, ``(N,)``."""
    return torch.linalg.vector_norm(features.float(), dim=1)
