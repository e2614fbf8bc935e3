"""DCFace encoders (Kim et al., CVPR 2023), re-implemented with the official state-dict key names.

Source: github.com/mk-minchul/dcface at 1d2c523, ``dcface/src/recognition/tface_model.py`` (``Backbone``, the
face.evoLVe / TFace IR network), ``recognition_helper.py`` (``RecognitionModel``), ``label_mapping.py``
(``ImageEmbedder`` v4, the ID encoder), ``external_mapping.py`` (``ExternalMappingV4Dropout``, the style head) and
``dcface/src/models/conditioner.py`` (how the two token sets are joined). Only the inference path is kept.

Where the modules live in a released ``dcface_{3x3,5x5}.ckpt`` ``state_dict`` (prefix -> class here):

* ``label_mapping.`` -> :class:`IDEncoder` (``backbone.backbone.*`` = trained IR-50, ``pos_emb.0``, ``scaler.0``);
* ``recognition_model.backbone.`` -> :class:`IRBackbone` ``(50)`` (frozen AdaFace IR-50, the style backbone; wrap it
  in a :class:`RecognitionEncoder` ``(50, (2,))``, whose keys are then ``backbone.*``);
* ``recognition_model_eval.backbone.`` -> :class:`IRBackbone` ``(100)`` (evaluation only);
* ``external_mapping.`` -> :class:`StyleHead` ``(S)`` with S = 3 or 5.

Faithfulness notes (official behaviour kept on purpose):

* the recognition wrapper takes RGB in [-1, 1] at 112x112 and flips it to BGR before the IR network;
* the "feature" it returns is not unit length: it is ``(x / norm) * norm`` with ``norm = clip(||x||, 1e-5)``
  (``normalize_feature`` False), i.e. the raw output-layer vector up to rounding;
* the ID tokens are the feature followed by the 49 positions of body block 21 (512x7x7) in row-major order, plus a
  learned position table; the first token times a learned scalar is the "stylemod" vector added to the UNet's time
  embedding;
* the style head resizes the 56x56 map of body block 2 with ``F.interpolate``'s default nearest mode when 56 is not
  divisible by S (S=3 -> 54x54, S=5 -> 55x55), applies PReLU (one shared slope) *before* the 1x1 convolution and the
  BatchNorm, and computes its "variance" as ``mean - E[x^2]`` (sic, not ``E[x^2] - mean^2``) for the whole map and
  for each of the S*S row-major patches; each (mean, var) pair is mixed by a per-channel weight pair;
* the 1x1 ``cross_attn_adapter`` (512 -> 1024) belongs to the style head's parameters but is applied to the joined
  ID + style tokens (:meth:`StyleHead.condition`).

Dropout layers are kept where the official modules have them (they are the identity in eval mode and own no
parameters), so that ``nn.Sequential`` indices and therefore key names match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlockIR",
    "IDEncoder",
    "IRBackbone",
    "RecognitionEncoder",
    "StyleHead",
    "sinusoid_table",
]

# units per stage (depths 64, 128, 256, 512) of the IR networks with BasicBlockIR units
_IR_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
_IR_DEPTHS = (64, 128, 256, 512)
_INPUT_SIZE = 112


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """The official ``positionalencoding1d``: sin on even, cos on odd channels, (length, dim)."""
    if dim % 2:
        raise ValueError(f"sinusoid_table needs an even dim, got {dim}")
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angle = torch.arange(length, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table


class BasicBlockIR(nn.Module):
    """IR unit: ``res_layer`` (BN, conv3x3, BN, PReLU, conv3x3 with the stride, BN) plus ``shortcut_layer``."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRBackbone(nn.Module):
    """The TFace / face.evoLVe ``Backbone(input_size=(112, 112), num_layers, mode='ir')`` (IR-50 / IR-101 = 100).

    ``forward(x, return_spatial)`` returns ``(x / norm, norm, spatials)`` where ``norm = clip(||x||_2, 1e-5)`` of the
    512-d output-layer vector and ``spatials`` holds the outputs of the body blocks whose index is in
    ``return_spatial`` (in body order). The input is expected already BGR-ordered and normalised to [-1, 1].
    """

    def __init__(self, num_layers: int, depths: Sequence[int] = _IR_DEPTHS) -> None:
        """``depths``: the four stage widths (official 64, 128, 256, 512; smaller ones make tiny test builds)."""
        super().__init__()
        if num_layers not in _IR_UNITS:
            raise ValueError(f"IRBackbone supports num_layers in {sorted(_IR_UNITS)}, got {num_layers}")
        self.num_layers = num_layers
        first, last = depths[0], depths[-1]
        self.input_layer = nn.Sequential(nn.Conv2d(3, first, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(first),
                                         nn.PReLU(first))
        blocks: list[nn.Module] = []
        in_channel = first
        for depth, units in zip(depths, _IR_UNITS[num_layers], strict=True):
            for unit in range(units):
                blocks.append(BasicBlockIR(in_channel, depth, 2 if unit == 0 else 1))
                in_channel = depth
        self.body = nn.Sequential(*blocks)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(last),
            nn.Dropout(0.4),
            nn.Flatten(),
            nn.Linear(last * 7 * 7, last),
            nn.BatchNorm1d(last, affine=False),
        )

    def forward(
        self, x: torch.Tensor, return_spatial: Sequence[int] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        wanted = set(return_spatial)
        x = self.input_layer(x)
        spatials: list[torch.Tensor] = []
        for idx, block in enumerate(self.body):
            x = block(x)
            if idx in wanted:
                spatials.append(x)
        x = self.output_layer(x)
        norm = torch.clip(torch.norm(x, 2, 1, True), 1e-5)
        return torch.div(x, norm), norm, spatials


class RecognitionEncoder(nn.Module):
    """The official ``RecognitionModel`` inference path with ``normalize_feature`` False.

    Input: RGB in [-1, 1], 112x112 (the official resize fallback for other sizes is not reproduced: other sizes
    raise). The image is flipped to BGR, run through :attr:`backbone`, and ``(feature * norm, spatials)`` is
    returned: the un-normalised 512-d feature and the requested body-block outputs.
    """

    def __init__(self, num_layers: int = 50, return_spatial: Sequence[int] = (),
                 depths: Sequence[int] = _IR_DEPTHS) -> None:
        super().__init__()
        self.backbone = IRBackbone(num_layers, depths)
        self.return_spatial = tuple(int(i) for i in return_spatial)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != _INPUT_SIZE or x.shape[3] != _INPUT_SIZE:
            raise ValueError(f"RecognitionEncoder expects (B, 3, 112, 112) RGB in [-1, 1], got {tuple(x.shape)}")
        x = torch.flip(x, dims=[1])
        feature, norm, spatials = self.backbone(x, return_spatial=self.return_spatial)
        return feature * norm, spatials


class IDEncoder(nn.Module):
    """DCFace ID encoder, the official ``label_mapping`` (``ImageEmbedder`` v4).

    ``forward(id_img)`` with ``id_img`` RGB in [-1, 1] at 112x112 returns ``(stylemod, id_tokens)``:
    ``stylemod`` (B, 512) is token 0 (the raw feature plus its position row) times :attr:`scaler`;
    ``id_tokens`` (B, 49, 512) are the 7x7 positions of body block 21, row-major, plus their position rows.
    """

    num_tokens = 50

    def __init__(self, depths: Sequence[int] = _IR_DEPTHS) -> None:
        super().__init__()
        self.width = depths[-1]  # 512: the ID feature, added to the UNet's time embedding
        self.backbone = RecognitionEncoder(50, (21,), depths)
        self.pos_emb = nn.ParameterList([nn.Parameter(sinusoid_table(self.num_tokens, self.width) - 0.5)])
        self.scaler = nn.ParameterList([nn.Parameter(torch.ones(1) * 0.001)])

    def forward(self, id_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature, spatials = self.backbone(id_img)
        spatial = spatials[0]
        spatial = spatial.reshape(spatial.shape[0], spatial.shape[1], -1)
        tokens = torch.cat([feature.unsqueeze(2), spatial], dim=2).transpose(1, 2)
        tokens = tokens + self.pos_emb[0][None, :, :]
        return tokens[:, 0, :] * self.scaler[0], tokens[:, 1:, :]


class StyleHead(nn.Module):
    """DCFace style head, the official ``ExternalMappingV4Dropout(return_spatial=[2], out_size=(S, S), 512)``.

    ``forward([feature])`` takes the one-element list of body-block-2 outputs of the frozen style IR-50
    ((B, 64, 56, 56)) and returns the style tokens (B, 1 + S*S, 512): one whole-map token then S*S row-major patch
    tokens, each a per-channel mix of (mean, mean - E[x^2]) plus a position row, layer-normalised.
    :meth:`condition` joins ID and style tokens and applies :attr:`cross_attn_adapter` -> (B, 1024, L).
    """

    def __init__(self, spatial_dim: int, dropout_prob: float = 0.3, in_channels: int = 64, out_channel: int = 512,
                 context_channels: int = 1024) -> None:
        """Official widths by default: body block 2 has 64 channels, tokens 512, the UNet context 1024."""
        super().__init__()
        if spatial_dim < 1:
            raise ValueError(f"StyleHead needs spatial_dim >= 1, got {spatial_dim}")
        self.spatial_dim = int(spatial_dim)
        self.in_channels, self.out_channel = in_channels, out_channel
        c = self.out_channel
        self.conv_0 = nn.Conv2d(self.in_channels, c, kernel_size=1, stride=1)
        self.norm_0 = nn.BatchNorm2d(c)
        self.relu_0 = nn.PReLU()
        self.channel_weight_0 = nn.ParameterList([nn.Parameter(torch.full((c, 2), 0.5))])
        self.dropout_0 = nn.Dropout(dropout_prob)
        self.pos_emb_0 = nn.ParameterList([nn.Parameter(sinusoid_table(self.spatial_dim**2 + 1, c) - 0.5)])
        self.ln_0 = nn.LayerNorm(c)
        self.cross_attn_adapter = nn.Conv1d(in_channels=c, out_channels=context_channels, kernel_size=1)

    @property
    def num_tokens(self) -> int:
        return 1 + self.spatial_dim**2

    def forward(self, spatials: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(spatials) != 1:
            raise ValueError(f"StyleHead takes a list of exactly one feature map, got {len(spatials)}")
        feature = spatials[0]
        s = self.spatial_dim
        divisible = feature.shape[-1] // s * s
        if divisible != feature.shape[-1]:
            # official: F.interpolate's default mode, 'nearest'
            feature = F.interpolate(feature, size=(divisible, divisible))
        feature = self.dropout_0(feature)
        feature = self.norm_0(self.conv_0(self.relu_0(feature)))
        side = feature.shape[-1]
        patch = side // s
        b, c = feature.shape[0], feature.shape[1]
        squared = feature**2
        global_mean = F.avg_pool2d(feature, side, side).view(b, c, -1)
        global_var = global_mean - F.avg_pool2d(squared, side, side).view(b, c, -1)  # sic
        patch_mean = F.avg_pool2d(feature, patch, patch).view(b, c, -1)
        patch_var = patch_mean - F.avg_pool2d(squared, patch, patch).view(b, c, -1)  # sic
        weight = self.channel_weight_0[0][None, :, :, None]
        global_info = (torch.stack([global_mean, global_var], dim=2) * weight).sum(2)
        patch_info = (torch.stack([patch_mean, patch_var], dim=2) * weight).sum(2)
        info = torch.cat([global_info, patch_info], dim=2).transpose(1, 2)
        info = info + self.pos_emb_0[0][None, :, :]
        return self.ln_0(info)

    def condition(self, id_tokens: torch.Tensor, style_tokens: torch.Tensor) -> torch.Tensor:
        """The UNet cross-attention context: adapter(cat([id, style], 1).T) -> (B, 1024, L), as conditioner.py."""
        joined = torch.cat([id_tokens, style_tokens], dim=1).transpose(1, 2)
        return self.cross_attn_adapter(joined)
