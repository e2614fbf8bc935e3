"""DCFace's UNets in the official OpenAI guided-diffusion / ADM ``UNetModel`` key layout.

Source: ``mk-minchul/dcface`` (CVPR 2023), ``dcface/src/models/unet.py`` + ``nn.py`` (G_mix, the dual-condition
generator) and ``dcface/stage1/unconditional_generation/diffusion/unet.py`` (G_id, plain guided-diffusion, the
``ffhq_10m.pt`` FFHQ-256 model). Both are the ADM ``UNetModel`` with ``learn_sigma`` (6 output channels),
``num_res_blocks=1``, ``channel_mult=(1, 1, 2, 2, 4, 4)``, 128 base channels, 64 channels per attention head,
scale-shift (AdaGN) ResBlocks and ResBlock up/down-sampling. The state dicts (``ffhq_10m.pt``; the
``ema_model.averaged_model.*`` / ``model.*`` sub-dicts of ``dcface_{3x3,5x5}.ckpt``) share one key set and load
here with ``strict=True``.

Layout (keys): ``time_embed.{0,2}`` (Linear, SiLU, Linear); ``input_blocks.0.0`` (3x3 conv), then per level one
ResBlock (``input_blocks.N.0``, plus ``input_blocks.N.1`` = AttentionBlock where the downsample rate ``ds`` is in
``attention_resolutions``) and, except after the last level, a down-sampling ResBlock; ``middle_block.{0,1,2}``
(ResBlock, AttentionBlock, ResBlock); per level (reversed) ``num_res_blocks + 1`` output blocks
``output_blocks.N.{0,1,2}`` (ResBlock on ``cat([h, skip])``, optional AttentionBlock, and on the last block of every
level but level 0 an up-sampling ResBlock); ``out.{0,2}`` (GroupNorm, SiLU, 3x3 conv). ResBlock:
``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}``, ``skip_connection`` (1x1 conv, only when the channel
count changes). AttentionBlock: ``norm``, ``qkv`` (Conv1d k=1), ``proj_out`` (Conv1d k=1). Up/down-sampling is
parameter-free (nearest x2 / 2x2 average pool), so a resampling ResBlock has the same keys as a plain one.

Quirks kept:

* ``attention_resolutions`` are downsample rates ``ds`` (DCFace passes ``"16"`` through as ``ds=16``, i.e. 7x7 at
  112 px; guided-diffusion converts ``"16"`` to ``image_size // 16`` which is also 16 at 256 px).
* DCFace's ``skip_downsample_level = 4``: the level-4 "down" ResBlock (``input_blocks.10`` at 112 px) does not
  downsample and the level-5 "up" ResBlock (``output_blocks.1.1``) does not upsample, so 112 px bottoms out at 7x7.
  ``ds`` still doubles/halves there (attention stays at ``ds == 16``: ``input_blocks.9.1``, ``middle_block.1``,
  ``output_blocks.2.1``, ``output_blocks.3.1``).
* GroupNorm(32, C) is computed in float32 and cast back (``GroupNorm32``).
* Sinusoidal timestep embedding is ``[cos, sin]`` (cos first), frequencies ``exp(-ln(10000) * i / half)``.
* Legacy QKV attention: the ``qkv`` output is split heads-first (per head ``[q | k | v]``). DCFace's context
  ``cross_attn`` ``[B, context_channels, L]`` is laid out per head as ``[k | v]`` and its keys/values are
  concatenated *before* the self keys/values into one softmax; no projection of the context happens inside the UNet
  (the ``encoder_kv`` conv of ADM is commented out in DCFace). The official ``q*d**-0.25 . k*d**-0.25`` with a
  float32 softmax is computed here with ``scaled_dot_product_attention`` (same function).
* DCFace adds ``stylemod`` (the ID feature token, ``[B, 512]``) to the time embedding after ``time_embed``;
  ``timesteps`` of shape ``[1]`` broadcast over the batch. The official G_mix returns ``out[:, :3]`` (epsilon) and
  ``out[:, 3:]`` (variance); here the full 6-channel output is returned.
* Dropout (0 in both configs) is omitted: ``out_layers.2`` is an identity placeholder keeping the indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ADMArch:
    """Hyper-parameters of an ADM ``UNetModel`` (``attention_resolutions`` are downsample rates)."""

    image_size: int
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 6
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (16,)
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    skip_downsample_level: int | None = None
    context_channels: int | None = None

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels


GMIX_ARCH = ADMArch(image_size=112, skip_downsample_level=4, context_channels=1024)
"""DCFace G_mix (``dcface_3x3.ckpt`` / ``dcface_5x5.ckpt`` UNet): 112 px, level 4 not resampled, 1024-ch context."""

GID_ARCH = ADMArch(image_size=256)
"""DCFace G_id = ``ffhq_10m.pt``: plain guided-diffusion ADM, FFHQ 256 px, unconditional."""


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """ADM sinusoidal embedding ``[cos(t f), sin(t f)]`` in float32, shape ``[N, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 whatever the input/parameter dtype, result cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


class _Resample(nn.Module):
    """Parameter-free x2 nearest upsampling or 2x2 average pooling (``h_upd`` / ``x_upd``)."""

    def __init__(self, up: bool):
        super().__init__()
        self.up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResBlock(nn.Module):
    """ADM residual block, conditioned on the embedding by scale-shift (AdaGN) or addition; optional up/down."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 use_scale_shift_norm: bool = True, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if self.updown:
            self.h_upd = _Resample(up)
            self.x_upd = _Resample(up)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Identity(),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """ADM spatial self-attention (legacy heads-first QKV), with DCFace's optional context keys/values prepended."""

    def __init__(self, channels: int, num_head_channels: int):
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(f"attention channels {channels} not divisible by num_head_channels {num_head_channels}")
        self.channels = channels
        self.num_heads = channels // num_head_channels
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        heads, ch = self.num_heads, c // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(b, heads, 3 * ch, -1)
        q, k, v = qkv.split(ch, dim=2)  # each [b, heads, ch, T]
        if context is not None:
            if context.shape[1] != 2 * c:
                raise ValueError(f"context has {context.shape[1]} channels, attention at {c} channels needs {2 * c}")
            ek, ev = context.to(x.dtype).reshape(b, heads, 2 * ch, -1).split(ch, dim=2)
            k = torch.cat([ek, k], dim=-1)
            v = torch.cat([ev, v], dim=-1)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = self.proj_out(a.transpose(-1, -2).reshape(b, c, -1))
        return (x + h).reshape(b, c, *spatial)


class _Block(nn.Sequential):
    """``TimestepEmbedSequential``: ResBlocks get the embedding, AttentionBlocks the context."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ADMUNet(nn.Module):
    """ADM ``UNetModel`` (guided-diffusion, as modified by DCFace) built from an :class:`ADMArch`.

    ``forward(x, timesteps, stylemod=None, cross_attn=None)`` returns all ``out_channels`` channels
    (``[:, :3]`` is epsilon, ``[:, 3:]`` the learned variance interpolation for ``learn_sigma`` models).
    """

    def __init__(self, arch: ADMArch):
        super().__init__()
        if not arch.resblock_updown:
            raise ValueError("only resblock_updown=True (the DCFace / ffhq_10m configuration) is implemented")
        self.arch = arch
        mc, emb_dim = arch.model_channels, arch.time_embed_dim
        skip = arch.skip_downsample_level
        attn_channels: set[int] = set()

        def res(cin: int, cout: int, **kw) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, use_scale_shift_norm=arch.use_scale_shift_norm, **kw)

        def attn(c: int) -> AttentionBlock:
            attn_channels.add(c)
            return AttentionBlock(c, arch.num_head_channels)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = input_ch = int(arch.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([_Block(nn.Conv2d(arch.in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        last = len(arch.channel_mult) - 1
        for level, mult in enumerate(arch.channel_mult):
            for _ in range(arch.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in arch.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(_Block(*layers))
                skip_chans.append(ch)
            if level != last:
                self.input_blocks.append(_Block(res(ch, ch, down=level != skip)))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = _Block(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(arch.channel_mult))):
            for i in range(arch.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in arch.attention_resolutions:
                    layers.append(attn(ch))
                if level and i == arch.num_res_blocks:
                    layers.append(res(ch, ch, up=skip is None or level != skip + 1))
                    ds //= 2
                self.output_blocks.append(_Block(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(input_ch, arch.out_channels, 3, padding=1))
        if arch.context_channels is not None and {2 * c for c in attn_channels} != {arch.context_channels}:
            raise ValueError(f"context_channels {arch.context_channels} must be 2 x the attention width "
                             f"(attention at {sorted(attn_channels)} channels)")

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | int | float, stylemod: torch.Tensor | None = None,
                cross_attn: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ``[B, out_channels, H, W]`` (in ``x``'s dtype) for ``x`` ``[B, in_channels, H, W]``.

        ``timesteps``: scalar, ``[1]`` (broadcast) or ``[B]``. ``stylemod``: ``[B or 1, time_embed_dim]`` added to the
        time embedding. ``cross_attn``: ``[B or 1, context_channels, L]`` prepended to every attention's keys/values.
        """
        batch = x.shape[0]
        dtype = self.time_embed[0].weight.dtype
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], device=x.device)
        timesteps = timesteps.to(x.device).reshape(-1)
        if timesteps.shape[0] not in (1, batch):
            raise ValueError(f"timesteps of shape {tuple(timesteps.shape)} for a batch of {batch}")
        emb = self.time_embed(timestep_embedding(timesteps, self.arch.model_channels).to(dtype))
        if stylemod is not None:
            emb = emb + stylemod.to(device=emb.device, dtype=dtype)
        if emb.shape[0] != batch:
            emb = emb.expand(batch, -1)
        if cross_attn is not None:
            if self.arch.context_channels is None:
                raise ValueError("this architecture has no context (context_channels is None)")
            if cross_attn.ndim != 3 or cross_attn.shape[1] != self.arch.context_channels:
                raise ValueError(f"cross_attn must be [B, {self.arch.context_channels}, L], "
                                 f"got {tuple(cross_attn.shape)}")
            if cross_attn.shape[0] != batch:
                if cross_attn.shape[0] != 1:
                    raise ValueError(f"cross_attn batch {cross_attn.shape[0]} for a batch of {batch}")
                cross_attn = cross_attn.expand(batch, -1, -1)
            cross_attn = cross_attn.to(device=x.device, dtype=dtype)
        h = x.to(dtype)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb, cross_attn)
            hs.append(h)
        h = self.middle_block(h, emb, cross_attn)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, cross_attn)
        return self.out(h).to(x.dtype)


def adm_arch_from_state(state: dict[str, torch.Tensor], prefix: str = "", **fixed) -> ADMArch:
    """An :class:`ADMArch` from a state dict's shapes: the base width and the channel multipliers (one ResBlock
    per level: input block 0 is the stem, then a ResBlock at each odd index); ``fixed`` sets the other fields.
    Raises ``KeyError`` naming a key the layout needs."""
    width = int(state[f"{prefix}input_blocks.0.0.weight"].shape[0])
    blocks = {int(k[len(prefix):].split(".")[1]) for k in state if k.startswith(f"{prefix}input_blocks.")}
    mult = tuple(int(state[f"{prefix}input_blocks.{i}.0.out_layers.3.weight"].shape[0]) // width
                 for i in range(1, len(blocks), 2))
    return ADMArch(**{"model_channels": width, "channel_mult": mult, **fixed})
