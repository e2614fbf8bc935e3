"""The Vec2Face network (HaiyuWu/Vec2Face), re-implemented with the official module and parameter names.

A 512-d raw ArcFace feature is projected to the token width and spread over a 7x7 grid of tokens
(``feature_token``: one learned scale and offset per token) behind a class-like token holding the
projected feature itself. A token mask says, for each of the 49 grid tokens, whether it is

* ``KEEP`` (0): the encoder sees the token as computed;
* ``MASKED`` (1): the encoder sees the projected feature in its place, the decoder sees token 0;
* ``DROPPED`` (2): removed from the encoder sequence; the decoder sees token 0.

Encoder (ViT, ``blocks``) -> ``decoder_embed`` -> decoder (ViT, ``decoder_blocks``) -> the 49 grid
tokens as a 7x7 map -> ``im_decoder_proj`` -> a convolutional image decoder (``im_decoder``,
7x7 -> 112x112 RGB, roughly in [-1, 1] and not clipped here).

The official forward draws the mask itself (one truncated-normal mask ratio per batch, uniform noise
ranking the tokens); here the mask is an input, and :func:`token_mask_from_noise` reproduces the
official rule from a noise vector and a ratio, so a seeded draw per image gives reproducible images.

Faithfulness notes (official behaviour kept on purpose): attention scores are computed in float32 and
the row maximum is subtracted before the softmax; the image decoder's ResNet blocks have bias-free
convolutions and, where the channel count changes, return ``nin_shortcut(h) + h`` (the shortcut is
applied to the residual branch and the block input is discarded); the decoder has no attention
blocks. ``patch_embed`` and ``center_token`` exist only so the published state dict loads strictly;
the forward never uses them. Dropout layers (p 0.1 in the transformer blocks) are omitted: this
module only runs inference, where they are the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

KEEP, MASKED, DROPPED = 0, 1, 2


@dataclass(frozen=True)
class Vec2FaceArch:
    """Sizes of the network. The defaults are the published ``vec2face_vit_base_patch16``."""

    rep_dim: int = 512
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 768
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    grid: int = 7  # tokens per side of the feature map
    patch_size: int = 16  # only shapes the unused patch_embed
    in_chans: int = 3
    z_channels: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    out_ch: int = 3

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def image_size(self) -> int:
        return self.grid * 2 ** (len(self.ch_mult) - 1)


BASE_ARCH = Vec2FaceArch()
# Same module tree and key names as the published model (349 keys), with small widths.
TINY_ARCH = Vec2FaceArch(embed_dim=64, num_heads=4, decoder_embed_dim=64, decoder_num_heads=4, z_channels=32, ch=32)


# ----------------------------------------------------------------------------- token masks
def num_dropped_tokens(mask_ratio_min: float, num_tokens: int = 49) -> int:
    """Tokens removed from the encoder in every image: ``ceil(num_tokens * mask_ratio_min)`` (5 for 0.1)."""
    return int(math.ceil(num_tokens * mask_ratio_min))


def num_masked_tokens(mask_ratio: float, num_tokens: int = 49) -> int:
    """Tokens masked (dropped ones included) for a mask ratio: ``ceil(num_tokens * mask_ratio)``."""
    return int(math.ceil(num_tokens * float(mask_ratio)))


def token_mask_from_noise(noise: torch.Tensor, mask_ratio: float | Sequence[float] | torch.Tensor,
                          mask_ratio_min: float) -> torch.Tensor:
    """The official masking rule: the tokens with the smallest noise are masked, the very smallest dropped.

    ``noise`` is (B, T); ``mask_ratio`` one value or one per row. Returns int8 codes (B, T). Ties are
    broken by position (the official code redraws the noise instead; ties have probability ~0).
    """
    if noise.ndim != 2:
        raise ValueError(f"noise must be (batch, tokens), got {tuple(noise.shape)}")
    bsz, seq = noise.shape
    ratios = torch.as_tensor(mask_ratio, dtype=torch.float64).reshape(-1).expand(bsz).tolist()
    n_drop = num_dropped_tokens(mask_ratio_min, seq)
    n_mask = torch.tensor([num_masked_tokens(r, seq) for r in ratios]).reshape(bsz, 1)
    if (n_mask < n_drop).any() or (n_mask > seq).any():
        raise ValueError(f"mask ratios {ratios} must mask between {n_drop} and {seq} of {seq} tokens")
    order = torch.argsort(noise.cpu(), dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(seq).expand(bsz, seq).contiguous())
    codes = torch.full((bsz, seq), KEEP, dtype=torch.int8)
    codes[rank < n_mask] = MASKED
    codes[rank < n_drop] = DROPPED
    return codes


def check_token_mask(codes: torch.Tensor, num_tokens: int) -> int:
    """Validate (B, T) codes; return the number of dropped tokens, which every row must share."""
    if codes.ndim != 2 or codes.shape[1] != num_tokens:
        raise ValueError(f"token mask must be (batch, {num_tokens}), got {tuple(codes.shape)}")
    if ((codes < KEEP) | (codes > DROPPED)).any():
        raise ValueError("token mask codes must be 0 (keep), 1 (masked) or 2 (dropped)")
    drops = (codes == DROPPED).sum(dim=1)
    if (drops != drops[0]).any():
        raise ValueError(f"every image of a batch must drop the same number of tokens, got {drops.tolist()}")
    return int(drops[0])


# ----------------------------------------------------------------------------- transformer
class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, seq, dim = x.shape
        heads = self.qkv(x).reshape(bsz, seq, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = heads.unbind(0)
        scores = (q.float() @ k.float().transpose(-2, -1)) * self.scale
        scores = scores - scores.amax(dim=-1, keepdim=True)
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(bsz, seq, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenEmbedding(nn.Module):
    """Learned position embeddings added to the tokens, then LayerNorm (BERT-style names)."""

    def __init__(self, dim: int, max_positions: int):
        super().__init__()
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-6)  # noqa: N815 - official parameter name
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0), persistent=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = self.position_embeddings(self.position_ids[:, : tokens.shape[1]])
        return self.LayerNorm(tokens + pos)


class PatchEmbed(nn.Module):
    """Present in the published state dict; never used by the forward."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)


# ----------------------------------------------------------------------------- image decoder
def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Bias-free 3x3 convolutions; with a channel change the output is ``nin_shortcut(h) + h``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if self.in_channels != self.out_channels:
            return self.nin_shortcut(h) + h
        return x + h


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class ImageDecoder(nn.Module):
    """z (B, z_channels, 7, 7) -> RGB (B, 3, 112, 112). ``up[0]`` is the finest level, ``up[-1]`` the coarsest."""

    def __init__(self, arch: Vec2FaceArch):
        super().__init__()
        levels = len(arch.ch_mult)
        block_in = arch.ch * arch.ch_mult[-1]
        self.conv_in = nn.Conv2d(arch.z_channels, block_in, kernel_size=3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        ups: list[nn.Module] = []
        for level in reversed(range(levels)):  # coarsest first, stored finest first
            block_out = arch.ch * arch.ch_mult[level]
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(arch.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
            if level != 0:
                stage.upsample = Upsample(block_in)
            ups.insert(0, stage)
        self.up = nn.ModuleList(ups)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, arch.out_ch, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.block_1(self.conv_in(z)))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for block in stage.block:
                h = block(h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


# ----------------------------------------------------------------------------- the model
class Vec2FaceModel(nn.Module):
    """Feature vector + token mask -> image. Submodules registered in the official order."""

    def __init__(self, arch: Vec2FaceArch = BASE_ARCH):
        super().__init__()
        if arch.decoder_embed_dim != arch.embed_dim:
            raise ValueError("the official im_decoder_proj needs decoder_embed_dim == embed_dim")
        self.arch = arch
        dim, dec, n = arch.embed_dim, arch.decoder_embed_dim, arch.num_tokens
        self.token_emb = TokenEmbedding(dim, n + 1)
        self.latent_prior_proj_f = nn.Linear(arch.rep_dim, dim, bias=True)
        self.feature_token = nn.Linear(1, n, bias=True)
        self.center_token = nn.Linear(dim, n, bias=True)  # unused by the forward
        self.im_decoder = ImageDecoder(arch)
        self.im_decoder_proj = nn.Linear(dim, arch.z_channels)
        self.patch_embed = PatchEmbed(arch.in_chans, dim, arch.patch_size)  # unused by the forward
        self.blocks = nn.ModuleList(Block(dim, arch.num_heads, arch.mlp_ratio) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, dec, bias=True)
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, n + 1, dec))
        self.decoder_blocks = nn.ModuleList(
            Block(dec, arch.decoder_num_heads, arch.mlp_ratio) for _ in range(arch.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dec, eps=1e-6)

    def encode(self, rep: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """(B, rep_dim) features + (B, T) codes -> encoder output for the kept tokens (B, 1 + T - dropped, D)."""
        n_drop = check_token_mask(token_mask, self.arch.num_tokens)
        codes = token_mask.to(rep.device)
        feature = self.latent_prior_proj_f(rep)  # (B, D)
        grid = self.feature_token(feature.unsqueeze(-1)).permute(0, 2, 1)  # (B, T, D)
        grid = torch.where((codes != KEEP).unsqueeze(-1), feature.unsqueeze(1), grid)
        x = self.token_emb(torch.cat([feature.unsqueeze(1), grid], dim=1))
        keep = self._with_token0(codes != DROPPED, True)
        x = x[keep].reshape(x.shape[0], 1 + self.arch.num_tokens - n_drop, x.shape[2])
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def decode_tokens(self, latent: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Encoder output -> decoder tokens (B, 1 + T, D) with masked/dropped slots filled by token 0."""
        codes = token_mask.to(latent.device)
        x = self.decoder_embed(latent)
        bsz, _, dim = x.shape
        fill = x[:, :1].expand(bsz, self.arch.num_tokens + 1, dim)
        full = fill.clone()
        full[self._with_token0(codes != DROPPED, True)] = x.reshape(-1, dim)
        full = torch.where(self._with_token0(codes != KEEP, False).unsqueeze(-1), fill, full)
        x = full + self.decoder_pos_embed_learned
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_norm(x)

    def forward(self, rep: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """(B, rep_dim) raw features + (B, T) int codes -> (B, 3, H, W) images, unclipped."""
        tokens = self.decode_tokens(self.encode(rep, token_mask), token_mask)
        bsz, _, dim = tokens.shape
        g = self.arch.grid
        z = self.im_decoder_proj(tokens[:, 1:].reshape(bsz, g, g, dim)).permute(0, 3, 1, 2)
        return self.im_decoder(z)

    @staticmethod
    def _with_token0(flags: torch.Tensor, value: bool) -> torch.Tensor:
        first = torch.full((flags.shape[0], 1), value, dtype=torch.bool, device=flags.device)
        return torch.cat([first, flags], dim=1)


def build_model(arch: Vec2FaceArch = BASE_ARCH, device: str | torch.device | None = None) -> Vec2FaceModel:
    """The network on ``device`` (``"meta"`` gives names and shapes without allocating weights)."""
    with torch.device(device or "cpu"):
        return Vec2FaceModel(arch)
