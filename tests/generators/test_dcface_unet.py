"""DCFace UNets (G_mix dual-condition ADM, G_id plain ADM): official key layout, block resolutions, strict loading,
and the forward against an independent functional restatement of the official ``UNetModel.forward``."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from facefoundry.generators.dcface.unet import GID_ARCH, GMIX_ARCH, ADMArch, ADMUNet

SMALL_GMIX = ADMArch(image_size=112, model_channels=32, num_head_channels=32, skip_downsample_level=4,
                     context_channels=2 * 4 * 32)  # attention at 4*32 = 128 ch -> 4 heads x 32
SMALL_ADM = ADMArch(image_size=32, model_channels=32, num_head_channels=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _meta_state(arch: ADMArch) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = ADMUNet(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if v.ndim > 1:
            fan_in = v[0].numel()
            sd[k] = torch.randn(v.shape, generator=g) / math.sqrt(fan_in)
        elif k.endswith("weight"):  # GroupNorm scale
            sd[k] = 1 + 0.2 * torch.randn(v.shape, generator=g)
        else:
            sd[k] = 0.2 * torch.randn(v.shape, generator=g)
    return sd


# --------------------------------------------------------------------------------------------------------------
# layout

def test_gmix_key_layout():
    keys = _meta_state(GMIX_ARCH)
    assert keys["time_embed.0.weight"] == (512, 128)
    assert keys["time_embed.2.weight"] == (512, 512)
    assert keys["input_blocks.0.0.weight"] == (128, 3, 3, 3)
    assert keys["input_blocks.9.1.qkv.weight"] == (1536, 512, 1)
    assert keys["input_blocks.9.1.proj_out.weight"] == (512, 512, 1)
    assert keys["input_blocks.9.1.norm.weight"] == (512,)
    assert keys["input_blocks.5.0.skip_connection.weight"] == (256, 128, 1, 1)
    assert "input_blocks.4.0.skip_connection.weight" not in keys
    assert keys["input_blocks.10.0.in_layers.2.weight"] == (512, 512, 3, 3)
    assert keys["input_blocks.11.0.emb_layers.1.weight"] == (1024, 512)
    assert keys["middle_block.1.qkv.weight"] == (1536, 512, 1)
    assert keys["middle_block.2.out_layers.3.weight"] == (512, 512, 3, 3)
    assert keys["output_blocks.0.0.in_layers.0.weight"] == (1024,)
    assert keys["output_blocks.1.1.in_layers.2.weight"] == (512, 512, 3, 3)
    assert keys["output_blocks.2.1.qkv.weight"] == (1536, 512, 1)
    assert keys["output_blocks.3.0.skip_connection.weight"] == (512, 768, 1, 1)
    assert keys["output_blocks.3.1.qkv.weight"] == (1536, 512, 1)
    assert keys["output_blocks.3.2.out_layers.0.weight"] == (512,)
    assert keys["output_blocks.11.0.skip_connection.weight"] == (128, 256, 1, 1)
    assert keys["out.0.weight"] == (128,)
    assert keys["out.2.weight"] == (6, 128, 3, 3)
    blocks = {k.split(".")[0] + "." + k.split(".")[1] for k in keys if k.startswith(("input_blocks", "output_blocks"))}
    assert {f"input_blocks.{i}" for i in range(12)} | {f"output_blocks.{i}" for i in range(12)} == blocks
    attn = sorted({k.rsplit(".", 2)[0] for k in keys if k.endswith("qkv.weight")})
    assert attn == ["input_blocks.9.1", "middle_block.1", "output_blocks.2.1", "output_blocks.3.1"]
    assert not any(k.startswith(f"output_blocks.{i}.2") for i in (0, 1, 2, 4, 6, 8, 10, 11) for k in keys)
    # the context adds no parameters: G_mix has exactly the key set (and shapes) of ffhq_10m.pt (G_id)
    assert keys == _meta_state(GID_ARCH)


def test_resampling_flags():
    with torch.device("meta"):
        model = ADMUNet(GMIX_ARCH)
    assert not model.input_blocks[10][0].updown
    assert all(model.input_blocks[i][0].updown for i in (2, 4, 6, 8))
    assert not model.output_blocks[1][1].updown
    assert all(model.output_blocks[i][-1].updown for i in (3, 5, 7, 9))
    assert all(model.output_blocks[i][-1].h_upd.up for i in (3, 5, 7, 9))
    with torch.device("meta"):
        plain = ADMUNet(GID_ARCH)
    assert plain.input_blocks[10][0].updown and plain.output_blocks[1][1].updown


EXPECTED_112 = {  # spatial side after each block of the official G_mix at 112 px (dcface_facts §2.1)
    "input_blocks": [112, 112, 56, 56, 28, 28, 14, 14, 7, 7, 7, 7],
    "middle_block": [7],
    "output_blocks": [7, 7, 7, 14, 14, 28, 28, 56, 56, 112, 112, 112],
}
CHANNELS_112 = {  # channels after each block, in units of model_channels (128)
    "input_blocks": [1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4],
    "middle_block": [4],
    "output_blocks": [4, 4, 4, 4, 2, 2, 2, 2, 1, 1, 1, 1],
}


def test_block_resolutions_at_112():
    """Full-size G_mix run on the meta device (shapes only): forward hooks record every block's output."""
    with torch.device("meta"):
        model = ADMUNet(GMIX_ARCH).eval()
    seen: dict[str, list[tuple[int, int, int]]] = {"input_blocks": [], "middle_block": [], "output_blocks": []}

    def hook(name):
        return lambda _m, _i, out: seen[name].append((out.shape[-2], out.shape[-1], out.shape[1]))

    for blk in model.input_blocks:
        blk.register_forward_hook(hook("input_blocks"))
    model.middle_block.register_forward_hook(hook("middle_block"))
    for blk in model.output_blocks:
        blk.register_forward_hook(hook("output_blocks"))
    with torch.device("meta"), torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112), torch.tensor([3]), torch.randn(2, 512), torch.randn(2, 1024, 59))
    assert out.shape == (2, 6, 112, 112)
    for name, sides in EXPECTED_112.items():
        assert [(h, w) for h, w, _ in seen[name]] == [(s, s) for s in sides], name
        assert [c for _, _, c in seen[name]] == [128 * m for m in CHANNELS_112[name]], name


def test_renamed_or_missing_key_fails_strict_load():
    model = ADMUNet(SMALL_ADM)
    sd = model.state_dict()
    model.load_state_dict(sd, strict=True)
    renamed = dict(sd)
    renamed["input_blocks.9.1.qkv_renamed.weight"] = renamed.pop("input_blocks.9.1.qkv.weight")
    with pytest.raises(RuntimeError, match="qkv"):
        model.load_state_dict(renamed, strict=True)
    missing = {k: v for k, v in sd.items() if k != "out.2.bias"}
    with pytest.raises(RuntimeError, match="out.2.bias"):
        model.load_state_dict(missing, strict=True)
    extra = dict(sd, **{"input_blocks.1.0.encoder_kv.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="encoder_kv"):
        model.load_state_dict(extra, strict=True)


def test_bad_context_is_rejected():
    model = ADMUNet(SMALL_GMIX)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="cross_attn"):
        model(x, torch.tensor([1]), cross_attn=torch.randn(1, 128, 5))
    with pytest.raises(ValueError, match="no context"):
        ADMUNet(SMALL_ADM)(torch.randn(1, 3, 32, 32), torch.tensor([1]), cross_attn=torch.randn(1, 256, 5))
    with pytest.raises(ValueError, match="context_channels"):
        ADMUNet(ADMArch(image_size=112, model_channels=32, num_head_channels=32, context_channels=1024))


# --------------------------------------------------------------------------------------------------------------
# independent restatement of the official forward (guided-diffusion UNetModel as modified in dcface/src/models)

def ref_gn(sd, p, x):
    return F.group_norm(x.float(), 32, sd[p + ".weight"].float(), sd[p + ".bias"].float(), 1e-5).type(x.dtype)


def ref_resblock(sd, p, x, emb, mode, scale_shift):
    """mode: None, 'up' or 'down' (ResBlock with resblock_updown)."""

    def resample(t):
        if mode == "up":
            return F.interpolate(t, scale_factor=2, mode="nearest")
        if mode == "down":
            return F.avg_pool2d(t, 2, 2)
        return t

    h = F.silu(ref_gn(sd, p + ".in_layers.0", x))
    h = resample(h)
    x = resample(x)
    h = F.conv2d(h, sd[p + ".in_layers.2.weight"], sd[p + ".in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), sd[p + ".emb_layers.1.weight"], sd[p + ".emb_layers.1.bias"]).type(h.dtype)
    e = e[:, :, None, None]
    if scale_shift:
        scale, shift = torch.chunk(e, 2, dim=1)
        h = ref_gn(sd, p + ".out_layers.0", h) * (1 + scale) + shift
    else:
        h = ref_gn(sd, p + ".out_layers.0", h + e)
    h = F.conv2d(F.silu(h), sd[p + ".out_layers.3.weight"], sd[p + ".out_layers.3.bias"], padding=1)
    if p + ".skip_connection.weight" in sd:
        x = F.conv2d(x, sd[p + ".skip_connection.weight"], sd[p + ".skip_connection.bias"])
    return x + h


def ref_attention(sd, p, x, head_channels, encoder_kv):
    b, c, hh, ww = x.shape
    x = x.reshape(b, c, -1)
    qkv = F.conv1d(ref_gn(sd, p + ".norm", x), sd[p + ".qkv.weight"], sd[p + ".qkv.bias"])
    bs, width, length = qkv.shape
    n_heads = c // head_channels
    ch = width // (3 * n_heads)
    q, k, v = qkv.reshape(bs * n_heads, ch * 3, length).split(ch, dim=1)
    if encoder_kv is not None:
        ek, ev = encoder_kv.reshape(bs * n_heads, ch * 2, -1).split(ch, dim=1)
        k = torch.cat([ek, k], dim=-1)
        v = torch.cat([ev, v], dim=-1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)
    h = F.conv1d(a, sd[p + ".proj_out.weight"], sd[p + ".proj_out.bias"])
    return (x + h).reshape(b, c, hh, ww)


def ref_block(sd, p, h, emb, ctx, arch, last_mode=None):
    """Run ``p`` = TimestepEmbedSequential by its keys: ResBlocks, attention where ``qkv`` exists."""
    j = 0
    while any(k.startswith(f"{p}.{j}.") for k in sd):
        q = f"{p}.{j}"
        if q + ".qkv.weight" in sd:
            h = ref_attention(sd, q, h, arch.num_head_channels, ctx)
        else:
            is_last = not any(k.startswith(f"{p}.{j + 1}.") for k in sd)
            h = ref_resblock(sd, q, h, emb, last_mode if (is_last and j > 0) else None, arch.use_scale_shift_norm)
        j += 1
    return h


def reference_forward(sd, arch, x, timesteps, stylemod=None, cross_attn=None):
    half = arch.model_channels // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs[None]
    t_emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    emb = F.linear(t_emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])
    emb = F.linear(F.silu(emb), sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    if stylemod is not None:
        emb = emb + stylemod
    skip = -100 if arch.skip_downsample_level is None else arch.skip_downsample_level
    n_levels = len(arch.channel_mult)
    h = x.type(torch.float32)
    hs = []
    h = F.conv2d(h, sd["input_blocks.0.0.weight"], sd["input_blocks.0.0.bias"], padding=1)
    hs.append(h)
    idx = 1
    for level in range(n_levels):
        for _ in range(arch.num_res_blocks):
            h = ref_block(sd, f"input_blocks.{idx}", h, emb, cross_attn, arch)
            hs.append(h)
            idx += 1
        if level != n_levels - 1:
            mode = "down" if level != skip else None
            h = ref_resblock(sd, f"input_blocks.{idx}.0", h, emb, mode, arch.use_scale_shift_norm)
            hs.append(h)
            idx += 1
    h = ref_resblock(sd, "middle_block.0", h, emb, None, arch.use_scale_shift_norm)
    h = ref_attention(sd, "middle_block.1", h, arch.num_head_channels, cross_attn)
    h = ref_resblock(sd, "middle_block.2", h, emb, None, arch.use_scale_shift_norm)
    idx = 0
    for level in reversed(range(n_levels)):
        for i in range(arch.num_res_blocks + 1):
            h = torch.cat([h, hs.pop()], dim=1)
            mode = "up" if (level and i == arch.num_res_blocks and level != skip + 1) else None
            h = ref_block(sd, f"output_blocks.{idx}", h, emb, cross_attn, arch, last_mode=mode)
            idx += 1
    h = h.type(x.dtype)
    h = F.silu(ref_gn(sd, "out.0", h))
    return F.conv2d(h, sd["out.2.weight"], sd["out.2.bias"], padding=1)


def _compare(arch, batch, size, with_cond, seed, scale_shift=True):
    arch = dataclasses.replace(arch, use_scale_shift_norm=scale_shift)
    model = ADMUNet(arch).eval()
    sd = _random_state(model, seed)
    model.load_state_dict(sd, strict=True)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.tensor([417])
    stylemod = torch.randn(batch, arch.time_embed_dim, generator=g) if with_cond else None
    ctx = torch.randn(batch, arch.context_channels, 7, generator=g) if with_cond else None
    with torch.no_grad():
        ours = model(x, t, stylemod=stylemod, cross_attn=ctx)
        ref = reference_forward(sd, arch, x, t, stylemod, ctx)
    assert ours.shape == ref.shape == (batch, arch.out_channels, size, size)
    diff = (ours - ref).abs().max().item()
    rel = diff / ref.abs().max().item()
    print(f"{arch}: max |diff| {diff:.3e}, relative {rel:.3e}, max |ref| {ref.abs().max().item():.3f}")
    assert rel < 1e-4
    return model, sd, x, stylemod, ctx


def test_gmix_forward_matches_reference():
    model, sd, x, stylemod, ctx = _compare(SMALL_GMIX, batch=2, size=112, with_cond=True, seed=0)
    # the test can fail: the context enters (no_ctx) and its per-head [k | v] channel layout matters (k/v swapped);
    # NB the order of context vs self keys inside one softmax does not change the result (keys are a set)
    with torch.no_grad():
        ours = model(x, torch.tensor([417]), stylemod=stylemod, cross_attn=ctx)
        no_ctx = model(x, torch.tensor([417]), stylemod=stylemod)
        kv = ctx.reshape(2, 4, 2, 32, 7).flip(2).reshape(2, 256, 7)  # per head [v | k]
        swapped = model(x, torch.tensor([417]), stylemod=stylemod, cross_attn=kv)
    assert (ours - no_ctx).abs().max() > 1e-3
    assert (ours - swapped).abs().max() > 1e-3


def test_plain_adm_forward_matches_reference():
    _compare(SMALL_ADM, batch=2, size=32, with_cond=False, seed=3)


def test_plain_adm_without_scale_shift_matches_reference():
    _compare(SMALL_ADM, batch=1, size=32, with_cond=False, seed=5, scale_shift=False)


def test_reference_detects_a_wrong_skip_level():
    """The skip level matters: the plain ADM rule (resample everywhere) on a 32 px input differs from G_mix's."""
    arch = ADMArch(image_size=32, model_channels=32, num_head_channels=32, skip_downsample_level=4)
    model = ADMUNet(arch).eval()
    sd = _random_state(model, 7)
    model.load_state_dict(sd)
    x = torch.randn(1, 3, 32, 32)
    t = torch.tensor([10])
    with torch.no_grad():
        ours = model(x, t)
        right = reference_forward(sd, arch, x, t)
        wrong = reference_forward(sd, dataclasses.replace(arch, skip_downsample_level=None), x, t)
    assert (ours - right).abs().max() / right.abs().max() < 1e-4
    assert (ours - wrong).abs().max() / wrong.abs().max() > 1e-2


def test_timestep_broadcast_and_low_precision():
    model = ADMUNet(SMALL_ADM).eval()
    model.load_state_dict(_random_state(model, 11))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = model(x, torch.tensor([250]))
        b = model(x, torch.tensor([250, 250]))
        c = model(x, 250)
        d = model(x, torch.tensor(250))
        e = model(x, torch.tensor([250, 900]))
        low = model.to(torch.bfloat16)(x, torch.tensor([250]))
    tol = 1e-5 * a.abs().max().item()
    assert all(torch.allclose(a, other, atol=tol, rtol=0) for other in (b, c, d))
    assert torch.allclose(a[0], e[0], atol=tol, rtol=0) and not torch.allclose(a[1], e[1], atol=1e-3)
    assert low.dtype == torch.float32
    rel = ((low - a).abs().max() / a.abs().max()).item()
    print(f"bf16 vs fp32 relative max diff {rel:.3e}")
    assert rel < 0.1
