"""IDiff-Face networks in the official key layout (``fdbtrs/IDiff-Face``, ICCV 2023).

Two files make a sampler:

* ``checkpoints/ema_averaged_model.ckpt`` of a trained model folder: the state dict of the official
  ``DenoisingDiffusionProbabilisticModel``, i.e. ``eps_model.*`` (the ``ConditionalUNet``) and eight
  schedule buffers (``betas``, ``alphas``, ``sigmas``, ...). The architecture is the model folder's
  ``.hydra/config.yaml`` (its ``model``, ``diffusion`` and ``constants`` sections), read by
  :func:`arch_from_config`.
* ``first_stage_decoder_state_dict.pt``: the decoder half of the CompVis ``ffhq256`` VQ-f4 autoencoder
  (``decoder.*``, ``quantize.embedding.weight``, ``post_quant_conv.*``), shaped by
  ``first_stage_config.yaml`` (embed_dim 3, n_embed 8192, ch 128, ch_mult [1, 2, 4]).

Only the released conditioning is built: cross-attention ("CA") on a projected 512-d identity embedding.
Attention runs through ``scaled_dot_product_attention``; the official code scales q and k by
``d**-0.25`` each and takes the softmax in float32, which is the same function.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SCHEDULE_BUFFERS = ("betas", "alphas", "sigmas", "sqrt_alphas_inv", "alpha_bars", "sqrt_alpha_bars",
                    "sqrt_one_minus_alpha_bars", "one_minus_alphas_over_sqrt_one_minus_alpha_bars")


class ArchitectureError(ValueError):
    """A model config describes something this reimplementation does not build (named in the message)."""


@dataclass(frozen=True)
class UNetArch:
    """The ``ConditionalUNet`` hyper-parameters of a training config's ``model`` section."""

    input_channels: int = 3
    initial_channels: int = 96
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 2)
    is_attention: tuple[bool, ...] = (False, True, True, True)
    attention_heads: int = -1
    attention_head_channels: int = 32
    n_blocks_per_resolution: int = 2
    context_input_channels: int = 512
    context_channels: int = 256
    learn_empty_context: bool = False


@dataclass(frozen=True)
class DiffusionArch:
    """A trained model folder's architecture: the UNet, the diffusion length and the latent image size."""

    unet: UNetArch
    timesteps: int = 1000
    schedule_type: str = "linear"
    image_size: int = 128  # pixels; the UNet runs on image_size / 4 latents (VQ-f4)
    latent_diffusion: bool = True


@dataclass(frozen=True)
class VQArch:
    """``first_stage_config.yaml``'s ``params`` (decoder side)."""

    embed_dim: int = 3
    n_embed: int = 8192
    z_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    out_ch: int = 3
    resolution: int = 256
    attn_resolutions: tuple[int, ...] = ()


_REF = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


def resolve_refs(node: Any, root: dict) -> Any:
    """Replace whole-value ``${a.b}`` interpolations (as Hydra saves them) with the referenced values."""
    if isinstance(node, dict):
        return {k: resolve_refs(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_refs(v, root) for v in node]
    if isinstance(node, str) and (m := _REF.match(node)):
        value: Any = root
        for part in m.group(1).split("."):
            if not isinstance(value, dict) or part not in value:
                raise ArchitectureError(f"config interpolation {node} names no value")
            value = value[part]
        return resolve_refs(value, root)
    return node


def arch_from_config(config: dict) -> DiffusionArch:
    """The architecture in a training config (``.hydra/config.yaml`` of a released model folder)."""
    cfg = resolve_refs(config, config)
    model, diffusion, constants = cfg.get("model"), cfg.get("diffusion") or {}, cfg.get("constants") or {}
    if not isinstance(model, dict):
        raise ArchitectureError("the config has no `model` section")
    target = str(model.get("_target_", ""))
    if not target.endswith("ConditionalUNet"):
        raise ArchitectureError(f"model._target_ is {target!r}; only models.diffusion.unet.ConditionalUNet is built")
    if str(model.get("condition_type", "")).lower() != "ca" or not model.get("is_context_conditional", False):
        raise ArchitectureError(f"model.condition_type={model.get('condition_type')!r}, is_context_conditional="
                                f"{model.get('is_context_conditional')!r}: only the released cross-attention "
                                "models (condition_type CA, is_context_conditional true) are built")
    if int(model.get("n_context_classes") or 0) != 0:
        raise ArchitectureError("n_context_classes > 0 (class-label conditioning) is not an identity model")
    if str(diffusion.get("schedule_type", "linear")).lower() != "linear":
        raise ArchitectureError(f"diffusion.schedule_type={diffusion.get('schedule_type')!r}: only the released "
                                "linear schedule is supported (the sampler reads the checkpoint's buffers)")
    names = UNetArch.__dataclass_fields__
    unet = UNetArch(**{k: tuple(v) if isinstance(v, list) else v for k, v in model.items() if k in names})
    if len(unet.channel_multipliers) != len(unet.is_attention):
        raise ArchitectureError("model.channel_multipliers and model.is_attention differ in length")
    return DiffusionArch(unet, int(diffusion.get("T", 1000)), "linear", int(constants.get("image_size", 128)),
                         bool(cfg.get("latent_diffusion", True)))


def vq_arch_from_config(config: dict) -> VQArch:
    """The decoder architecture in ``first_stage_config.yaml`` (``params.embed_dim``, ``n_embed``, ``ddconfig``)."""
    params = config.get("params", config)
    dd = params.get("ddconfig") or {}
    names = VQArch.__dataclass_fields__
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in dd.items() if k in names}
    return VQArch(embed_dim=int(params.get("embed_dim", 3)), n_embed=int(params.get("n_embed", 8192)), **values)


def linear_schedule(T: int) -> dict[str, torch.Tensor]:
    """The official linear beta schedule (1e-4 .. 2e-2, scaled by 1000 / T) and its derived buffers."""
    scale = 1000 / T
    betas = torch.linspace(scale * 0.0001, scale * 0.02, T, dtype=torch.float32)
    alphas = 1 - betas
    alpha_bars = torch.cumsum(torch.log(alphas), dim=0).exp()
    sqrt_one_minus = (1 - alpha_bars).sqrt()
    return {"betas": betas, "alphas": alphas, "sigmas": betas.sqrt(), "sqrt_alphas_inv": 1 / alphas.sqrt(),
            "alpha_bars": alpha_bars, "sqrt_alpha_bars": alpha_bars.sqrt(), "sqrt_one_minus_alpha_bars": sqrt_one_minus,
            "one_minus_alphas_over_sqrt_one_minus_alpha_bars": (1 - alphas) / sqrt_one_minus}


# ----------------------------------------------------------------------------- UNet
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on channel-first tensors (B, heads * d, L): channels split head-major."""
    b, width, lq = q.shape
    d = width // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, heads, d, x.shape[-1]).transpose(-1, -2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(-1, -2).reshape(b, width, lq)


class MultiHeadAttention(nn.Module):
    def __init__(self, in_channels: int, key_value_channels: int | None, n_heads: int, head_channels: int):
        super().__init__()
        inner = n_heads * head_channels
        kv = in_channels if key_value_channels is None else key_value_channels
        self.n_heads = n_heads
        self.to_q = nn.Conv1d(in_channels, inner, 1)
        self.to_k = nn.Conv1d(kv, inner, 1)
        self.to_v = nn.Conv1d(kv, inner, 1)
        self.proj_out = nn.Conv1d(inner, in_channels, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        c = x if c is None else c
        return self.proj_out(_attention(self.to_q(x), self.to_k(c), self.to_v(c), self.n_heads))


class CrossAttentionBlock(nn.Module):
    """``SpatialEmbeddingCrossAttentionBlock``: self-attention over pixels, then cross-attention to the
    context vector expanded into ``head_channels`` tokens of ``context_dim`` channels, then a feed-forward."""

    def __init__(self, in_channels: int, context_dim: int, n_heads: int, head_channels: int):
        super().__init__()
        if n_heads <= 0:
            n_heads = in_channels // head_channels
        inner = n_heads * head_channels
        self.context_dim = context_dim
        self.x_proj_in = nn.Conv2d(in_channels, inner, 1)
        self.x_proj_out = nn.Conv2d(inner, in_channels, 1)
        self.self_attention = MultiHeadAttention(inner, None, n_heads, head_channels)
        self.c_proj_in = nn.Linear(context_dim, context_dim * head_channels)
        self.cross_attention = MultiHeadAttention(inner, context_dim, n_heads, head_channels)
        self.x_norm = nn.GroupNorm(32, inner)
        self.c_norm = nn.GroupNorm(32, context_dim)
        self.ff = nn.Sequential(nn.Linear(inner, inner * 4), nn.GELU(), nn.Linear(inner * 4, inner))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x_in = x
        x = self.x_proj_in(x).flatten(2)
        c = self.c_norm(self.c_proj_in(c).reshape(b, self.context_dim, -1))
        x = self.self_attention(self.x_norm(x)) + x
        x = self.cross_attention(self.x_norm(x), c) + x
        x = self.ff(self.x_norm(x).transpose(1, 2)).transpose(1, 2) + x
        return self.x_proj_out(x.reshape(b, -1, h, w)) + x_in


class AdaptiveGroupNorm(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return (1 + scale) * self.norm(x) + shift


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions; the time embedding scales and shifts the second GroupNorm (AdaGN)."""

    def __init__(self, in_channels: int, out_channels: int, time_channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb = nn.Sequential(nn.SiLU(), nn.Linear(time_channels, out_channels))
        self.scale_emb = nn.Linear(out_channels, out_channels)
        self.shift_emb = nn.Linear(out_channels, out_channels)
        self.norm2 = AdaptiveGroupNorm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        emb = self.time_emb(t)
        h = self.norm2(h, self.scale_emb(emb)[:, :, None, None], self.shift_emb(emb)[:, :, None, None])
        return self.conv2(F.silu(h)) + self.shortcut(x)


class ResolutionBlock(nn.Module):
    """The official ``DownBlock``/``UpBlock``: a residual block, then cross-attention where enabled."""

    def __init__(self, in_channels: int, out_channels: int, arch: UNetArch, attention: bool):
        super().__init__()
        self.res = ResidualBlock(in_channels, out_channels, arch.initial_channels * 4)
        self.attn = (CrossAttentionBlock(out_channels, arch.context_channels, arch.attention_heads,
                                         arch.attention_head_channels) if attention else None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = self.res(x, t)
        return x if self.attn is None else self.attn(x, c)


class MiddleBlock(nn.Module):
    def __init__(self, channels: int, arch: UNetArch):
        super().__init__()
        self.res1 = ResidualBlock(channels, channels, arch.initial_channels * 4)
        self.attn = CrossAttentionBlock(channels, arch.context_channels, arch.attention_heads,
                                        arch.attention_head_channels)
        self.res2 = ResidualBlock(channels, channels, arch.initial_channels * 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.res2(self.attn(self.res1(x, t), c), t)


class Resample(nn.Module):
    """Stride-2 3x3 convolution (down) or 4x4 transposed convolution (up), under the official ``conv`` key."""

    def __init__(self, channels: int, up: bool):
        super().__init__()
        self.conv = (nn.ConvTranspose2d(channels, channels, 4, 2, 1) if up else nn.Conv2d(channels, channels, 3, 2, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding (cosines first) of ``channels / 4`` features, then Linear-SiLU-Linear."""

    def __init__(self, channels: int, max_period: int = 10000):
        super().__init__()
        self.max_period = max_period
        self.lin1 = nn.Linear(channels // 4, channels)
        self.lin2 = nn.Linear(channels, channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.lin1.in_features // 2
        frequencies = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device) / half)
        args = t[:, None].float() * frequencies[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.lin1.weight.dtype)
        return self.lin2(F.silu(self.lin1(emb)))


class ConditionalUNet(nn.Module):
    """The epsilon model: latents, timesteps and 512-d identity embeddings -> predicted noise."""

    def __init__(self, arch: UNetArch):
        super().__init__()
        self.arch = arch
        ch, mults = arch.initial_channels, arch.channel_multipliers
        self.image_proj = nn.Conv2d(arch.input_channels, ch, 3, padding=1)
        self.time_emb = TimeEmbedding(ch * 4)
        self.context_emb = nn.Linear(arch.context_input_channels, arch.context_channels)
        if arch.learn_empty_context:  # else the empty context is zeros (not stored)
            self.empty_context_embedding = nn.Parameter(torch.zeros(arch.context_channels))
        down: list[nn.Module] = []
        in_ch = out_ch = ch
        for i, mult in enumerate(mults):
            out_ch = in_ch * mult
            for _ in range(arch.n_blocks_per_resolution):
                down.append(ResolutionBlock(in_ch, out_ch, arch, arch.is_attention[i]))
                in_ch = out_ch
            if i < len(mults) - 1:
                down.append(Resample(in_ch, up=False))
        self.down = nn.ModuleList(down)
        self.middle = MiddleBlock(out_ch, arch)
        up: list[nn.Module] = []
        in_ch = out_ch
        for i in reversed(range(len(mults))):
            for _ in range(arch.n_blocks_per_resolution):
                up.append(ResolutionBlock(in_ch + in_ch, in_ch, arch, arch.is_attention[i]))
            out_ch = in_ch // mults[i]
            up.append(ResolutionBlock(in_ch + out_ch, out_ch, arch, arch.is_attention[i]))
            in_ch = out_ch
            if i > 0:
                up.append(Resample(in_ch, up=True))
        self.up = nn.ModuleList(up)
        self.norm = nn.GroupNorm(32, ch)
        self.final = nn.Conv2d(in_ch, arch.input_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """``context`` None: the empty-context embedding (classifier-free guidance's unconditional pass)."""
        t_emb = self.time_emb(t)
        x = self.image_proj(x)
        if context is None:
            c = (self.empty_context_embedding.to(x.dtype).expand(len(x), -1) if self.arch.learn_empty_context
                 else x.new_zeros(len(x), self.arch.context_channels))
        else:
            c = self.context_emb(context)
        skips = [x]
        for m in self.down:
            x = m(x, t_emb, c)
            skips.append(x)
        x = self.middle(x, t_emb, c)
        for m in self.up:
            if not isinstance(m, Resample):
                x = torch.cat((x, skips.pop()), dim=1)
            x = m(x, t_emb, c)
        return self.final(F.silu(self.norm(x)))


class DiffusionModel(nn.Module):
    """The official ``DenoisingDiffusionProbabilisticModel`` as stored: ``eps_model`` and the schedule buffers."""

    def __init__(self, arch: DiffusionArch):
        super().__init__()
        self.arch = arch
        self.eps_model = ConditionalUNet(arch.unet)
        for name, value in linear_schedule(arch.timesteps).items():
            self.register_buffer(name, value)


# ----------------------------------------------------------------------------- VQ-f4 decoder
def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class VQResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class VQAttention(nn.Module):
    """Single-head self-attention over pixels with 1x1-convolution projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        out = _attention(self.q(n).flatten(2), self.k(n).flatten(2), self.v(n).flatten(2), heads=1)
        return x + self.proj_out(out.reshape(b, c, h, w))


class VQUpsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class VQDecoderNet(nn.Module):
    """The LDM ``Decoder`` (``conv_in``, ``mid``, ``up[level].block/attn/upsample``, ``norm_out``, ``conv_out``)."""

    def __init__(self, arch: VQArch):
        super().__init__()
        levels = len(arch.ch_mult)
        block_in = arch.ch * arch.ch_mult[-1]
        res = arch.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(arch.z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = VQResnetBlock(block_in, block_in)
        self.mid.attn_1 = VQAttention(block_in)
        self.mid.block_2 = VQResnetBlock(block_in, block_in)
        ups: list[nn.Module] = []
        for level in reversed(range(levels)):
            up = nn.Module()
            block_out = arch.ch * arch.ch_mult[level]
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            for _ in range(arch.num_res_blocks + 1):
                up.block.append(VQResnetBlock(block_in, block_out))
                block_in = block_out
                if res in arch.attn_resolutions:
                    up.attn.append(VQAttention(block_in))
            if level != 0:
                up.upsample = VQUpsample(block_in)
                res *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, arch.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if level != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantisation (``VectorQuantizer2`` at inference)."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        codebook = self.embedding.weight
        dist = (flat**2).sum(1, keepdim=True) + (codebook**2).sum(1) - 2 * flat @ codebook.t()
        return codebook[dist.argmin(1)].reshape(b, h, w, c).permute(0, 3, 1, 2)


class VQDecoder(nn.Module):
    """``VQDecoderInterface``: quantise the latent, ``post_quant_conv``, decode to [-1, 1] pixels."""

    def __init__(self, arch: VQArch):
        super().__init__()
        self.arch = arch
        self.decoder = VQDecoderNet(arch)
        self.quantize = VectorQuantizer(arch.n_embed, arch.embed_dim)
        self.post_quant_conv = nn.Conv2d(arch.embed_dim, arch.z_channels, 1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize(latents)))
