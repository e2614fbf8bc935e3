"""6DRepNet head-pose network (RepVGG-B1g2 backbone, deploy/fused mode) and its rotation maths, in torch.

Vec2Face ships ``weights/6DRepNet_300W_LP_AFLW2000.pth`` (``BooBooWu/Vec2Face``), the file 6DRepNet publishes:
a plain state dict of ``SixDRepNet(backbone_name="RepVGG-B1g2", deploy=True, pretrained=False)``. Deploy mode
means each RepVGG block is one fused 3x3 conv with bias (``rbr_reparam``) followed by ReLU. Keys:
``layer0.rbr_reparam.*``, ``layer1.0..3``, ``layer2.0..5``, ``layer3.0..15``, ``layer4.0`` (``.rbr_reparam.*``)
and ``linear_reg.*``; blocks 2, 4, ..., 26 (counted from the first block of layer1) are 2-group convs.

The network outputs 6 numbers, turned into a rotation matrix by Gram-Schmidt (:func:`rotation_from_6d`); the
angles follow ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (:func:`euler_from_rotation`, degrees). Vec2Face's AttrOP
feeds the generator's 112x112 output as BGR in [0, 1] without resizing or ImageNet normalisation
(:func:`vec2face_pose_input`); 6DRepNet's own demo uses RGB, 224x224, ImageNet mean/std
(:func:`sixdrepnet_input`). Everything here is differentiable (AttrOP back-propagates through the yaw).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from facefoundry.faces.face_weights import (
    FaceWeightsError,
    key_index_counts,
    load_strict,
    read_checkpoint,
    resolve_weights,
    tensor_dict,
)

SIXDREPNET_FILE = "6DRepNet_300W_LP_AFLW2000.pth"
B1G2_BLOCKS = (4, 6, 16, 1)
B1G2_WIDTHS = (64, 128, 256, 512, 2048)  # layer0, then layer1..4 (RepVGG-B1: multipliers 2, 2, 2, 4)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def repvgg_g2_groups(num_blocks: Sequence[int]) -> tuple[int, ...]:
    """Groups of each block of layer1..4: RepVGG's ``g2_map`` (2 at even block numbers 2..26, counted from 1)."""
    return tuple(2 if i % 2 == 0 and i <= 26 else 1 for i in range(1, sum(num_blocks) + 1))


class RepVGGBlock(nn.Module):
    """A fused (deploy-mode) RepVGG block: 3x3 conv with bias, identity SE slot, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.rbr_reparam = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, groups=groups, bias=True)
        self.se = nn.Identity()
        self.nonlinearity = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinearity(self.se(self.rbr_reparam(x)))


class SixDRepNet(nn.Module):
    """RepVGG stages ``layer0..4``, global average pooling, ``linear_reg`` (6 outputs) -> ``(N, 3, 3)`` rotations.

    ``widths``: output channels of layer0 and of layer1..4; ``groups``: one entry per block of layer1..4.
    """

    def __init__(self, num_blocks: Sequence[int] = B1G2_BLOCKS, widths: Sequence[int] = B1G2_WIDTHS,
                 groups: Sequence[int] | None = None):
        super().__init__()
        groups = tuple(groups) if groups is not None else repvgg_g2_groups(num_blocks)
        if len(num_blocks) != 4 or len(widths) != 5 or len(groups) != sum(num_blocks):
            raise ValueError(f"bad RepVGG layout: blocks {list(num_blocks)}, widths {list(widths)}, groups {groups}")
        self.num_blocks, self.widths, self.groups = tuple(num_blocks), tuple(widths), groups
        self.layer0 = RepVGGBlock(3, widths[0], stride=2)
        cin, k = widths[0], 0
        for i, (blocks, cout) in enumerate(zip(num_blocks, widths[1:], strict=True), start=1):
            stage = []
            for j in range(blocks):
                stage.append(RepVGGBlock(cin, cout, stride=2 if j == 0 else 1, groups=groups[k]))
                cin, k = cout, k + 1
            self.add_module(f"layer{i}", nn.Sequential(*stage))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear_reg = nn.Linear(widths[4], 6)

    def forward_6d(self, x: torch.Tensor) -> torch.Tensor:
        """The raw ``(N, 6)`` regression output (two rotation columns before orthogonalisation)."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.layer0(x)))))
        return self.linear_reg(torch.flatten(self.gap(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``(N, 3, H, W)`` images -> ``(N, 3, 3)`` rotation matrices."""
        return rotation_from_6d(self.forward_6d(x))


def rotation_from_6d(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(N, 6)`` -> ``(N, 3, 3)``: column 0 = normalised x[:, :3], column 2 = normalised (col0 x x[:, 3:]),
    column 1 = col2 x col0."""
    col0 = x[:, 0:3] / torch.linalg.vector_norm(x[:, 0:3], dim=1, keepdim=True).clamp_min(eps)
    col2 = torch.linalg.cross(col0, x[:, 3:6], dim=1)
    col2 = col2 / torch.linalg.vector_norm(col2, dim=1, keepdim=True).clamp_min(eps)
    col1 = torch.linalg.cross(col2, col0, dim=1)
    return torch.stack((col0, col1, col2), dim=2)


def euler_from_rotation(rot: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 3)`` rotation matrices -> ``(N, 3)`` (pitch, yaw, roll) in degrees, ``R = Rz(r) Ry(y) Rx(p)``.

    Near gimbal lock (``sqrt(R00^2 + R10^2) < 1e-6``) roll is set to 0 and pitch read from the second row, as
    6DRepNet does; the unused branch gets safe arguments so gradients stay finite.
    """
    r00, r10, r20 = rot[:, 0, 0], rot[:, 1, 0], rot[:, 2, 0]
    sy = torch.sqrt((r00 * r00 + r10 * r10).clamp_min(1e-24))
    singular = sy < 1e-6
    one = torch.ones_like(sy)
    pitch = torch.where(singular, torch.atan2(-rot[:, 1, 2], torch.where(singular, rot[:, 1, 1], one)),
                        torch.atan2(rot[:, 2, 1], torch.where(singular, one, rot[:, 2, 2])))
    yaw = torch.atan2(-r20, sy)
    roll = torch.where(singular, torch.zeros_like(sy), torch.atan2(r10, torch.where(singular, one, r00)))
    return torch.rad2deg(torch.stack((pitch, yaw, roll), dim=1))


def vec2face_pose_input(images: torch.Tensor) -> torch.Tensor:
    """Vec2Face's AttrOP pose input: RGB images in [-1, 1] -> BGR in [0, 1], size unchanged."""
    return (images[:, [2, 1, 0]] + 1) / 2


def sixdrepnet_input(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """6DRepNet's own input: RGB in [-1, 1] -> bilinear ``size`` x ``size``, [0, 1], ImageNet mean/std."""
    x = (images + 1) / 2
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return (x - mean) / x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)


def demo_crop(image: np.ndarray, box) -> np.ndarray:
    """The face crop of 6DRepNet's ``demo.py``: the detector box widened by 0.2 x its *height* on the left and right
    and 0.2 x its *width* above and below (as written there), clipped at the top-left image border only."""
    x0, y0, x1, y1 = (int(v) for v in box[:4])
    w, h = abs(x1 - x0), abs(y1 - y0)
    x0, y0 = max(0, x0 - int(0.2 * h)), max(0, y0 - int(0.2 * w))
    x1, y1 = x1 + int(0.2 * h), y1 + int(0.2 * w)
    return image[y0:y1, x0:x1]


def demo_input(crops: list[np.ndarray], size: int = 224) -> torch.Tensor:
    """6DRepNet's demo transform of RGB uint8 crops: ``Resize(224)`` (shorter side, bilinear, antialiased as
    torchvision does on PIL images), ``CenterCrop(224)``, ``ToTensor``, ImageNet mean/std. (The demo feeds the
    BGR frame of OpenCV as if it were RGB; training read RGB images, which is what this takes.)"""
    out = torch.zeros(len(crops), 3, size, size)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for i, crop in enumerate(crops):
        h, w = crop.shape[:2]
        long = int(size * max(h, w) / min(h, w))  # torchvision: the longer side truncated
        resized = Image.fromarray(np.ascontiguousarray(crop)).resize(
            (long, size) if w >= h else (size, long), Image.Resampling.BILINEAR)
        left, top = int(round((resized.width - size) / 2.0)), int(round((resized.height - size) / 2.0))  # CenterCrop
        patch = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        out[i] = (torch.from_numpy(patch).permute(2, 0, 1) - mean) / std
    return out


def head_pose(model: SixDRepNet, images: torch.Tensor, preprocessing: str = "vec2face") -> torch.Tensor:
    """``(N, 3)`` (pitch, yaw, roll) degrees of RGB images in [-1, 1]; ``preprocessing``: vec2face | sixdrepnet."""
    prep = {"vec2face": vec2face_pose_input, "sixdrepnet": sixdrepnet_input}
    if preprocessing not in prep:
        raise ValueError(f"preprocessing must be one of {sorted(prep)}, got {preprocessing!r}")
    return euler_from_rotation(model(prep[preprocessing](images)))


def sixdrepnet_arch(state: Mapping[str, torch.Tensor], path: Path) -> dict:
    """``num_blocks``, ``widths`` and ``groups`` read off a deploy-mode state dict; full width must be B1g2."""
    name, keys = "6DRepNet", list(state)
    if any(".rbr_dense." in k for k in keys):
        raise FaceWeightsError(f"{name} weights {path} are a training-mode (unfused) RepVGG checkpoint; Vec2Face's "
                               "file is deploy-mode (rbr_reparam): fuse it first (6DRepNet's convert.py)")
    try:
        num_blocks = tuple(key_index_counts(keys, f"layer{i}.") for i in range(1, 5))
        convs = [state["layer0.rbr_reparam.weight"]]
        convs += [state[f"layer{i}.{j}.rbr_reparam.weight"] for i in range(1, 5) for j in range(num_blocks[i - 1])]
    except KeyError as exc:
        raise FaceWeightsError(f"{name} weights {path} are not a deploy-mode 6DRepNet state dict (no key {exc}; "
                               f"keys start {keys[:4]})") from exc
    groups, cin = [], int(convs[0].shape[0])
    for w in convs[1:]:
        groups.append(max(1, cin // int(w.shape[1])))
        cin = int(w.shape[0])
    starts = [0, *[sum(num_blocks[:i]) for i in range(1, 4)]]
    widths = (int(convs[0].shape[0]), *(int(convs[1 + s].shape[0]) for s in starts))
    arch = {"num_blocks": num_blocks, "widths": widths, "groups": tuple(groups)}
    standard = {"num_blocks": B1G2_BLOCKS, "widths": B1G2_WIDTHS, "groups": repvgg_g2_groups(B1G2_BLOCKS)}
    if widths[0] == B1G2_WIDTHS[0] and arch != standard:
        raise FaceWeightsError(f"{name} weights {path}: expected RepVGG-B1g2 {standard}, found {arch}")
    return arch


def load_sixdrepnet(path: str | Path, device: str | torch.device = "cpu") -> SixDRepNet:
    """Vec2Face's 6DRepNet (``weights/6DRepNet_300W_LP_AFLW2000.pth``), eval mode, frozen parameters.

    ``path``: the file, or a folder holding ``weights/<file>`` or ``<file>``. A ``{"model_state_dict": ...}``
    wrapper (6DRepNet's training snapshots) is unwrapped; the state dict itself must match strictly.
    """
    name = "6DRepNet"
    path = resolve_weights(path, SIXDREPNET_FILE, name)
    obj = read_checkpoint(path, name)
    if isinstance(obj, Mapping) and isinstance(obj.get("model_state_dict"), Mapping):
        obj = obj["model_state_dict"]
    state = tensor_dict(obj, path, name)
    model = SixDRepNet(**sixdrepnet_arch(state, path))
    load_strict(model, state, path, name)
    model.requires_grad_(False)
    model.source = str(path)
    return model.eval().to(device)
