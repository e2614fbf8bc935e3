"""DCFace encoders (official key names, forwards restated with plain F.* calls) and the safe Lightning reader."""

from __future__ import annotations

import collections
import functools
import math
import os
import pickle
import zipfile

import pytest
import torch
import torch.nn.functional as F

from facefoundry.generators.dcface.encoders import IDEncoder, IRBackbone, RecognitionEncoder, StyleHead
from facefoundry.generators.lightning_checkpoint import (
    CheckpointError,
    PickledGlobal,
    read_entries,
    read_state_dict,
)

TOL = 1e-4
IR50_UNITS = (3, 4, 14, 3)
IR100_UNITS = (3, 13, 30, 3)


# ----------------------------------------------------------------------------------------------- random weights


def randomise(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights and BN running statistics, scaled to keep activations O(1); module set to eval."""
    gen = torch.Generator().manual_seed(seed)
    state = module.state_dict()
    new = {}
    for name, t in state.items():
        if name.endswith("num_batches_tracked"):
            new[name] = t
        elif name.endswith("running_var"):
            new[name] = torch.rand(t.shape, generator=gen) + 0.5
        elif name.endswith("running_mean"):
            new[name] = torch.randn(t.shape, generator=gen) * 0.1
        elif t.ndim >= 2:
            fan_in = math.prod(t.shape[1:])
            new[name] = torch.randn(t.shape, generator=gen) / math.sqrt(fan_in)
        elif name.endswith("bias"):
            new[name] = torch.randn(t.shape, generator=gen) * 0.1
        else:  # BN / LN / PReLU weights, scaler
            new[name] = torch.rand(t.shape, generator=gen) * 0.5 + 0.25
    module.load_state_dict(new, strict=True)
    return module.eval().state_dict()


def sub(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------- independent functional restatement


def ref_bn(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(
        x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd.get(f"{p}.weight"), sd.get(f"{p}.bias"), False, 0.0, 1e-5
    )


def ref_ir(sd, x, units, return_spatial):
    """tface_model.Backbone(mode='ir') forward from state-dict keys."""
    x = F.conv2d(x, sd["input_layer.0.weight"], padding=1)
    x = F.prelu(ref_bn(x, sd, "input_layer.1"), sd["input_layer.2.weight"])
    spatials = []
    idx = 0
    for stage_units in units:
        for u in range(stage_units):
            stride = 2 if u == 0 else 1
            p = f"body.{idx}"
            if f"{p}.shortcut_layer.0.weight" in sd:
                short = F.conv2d(x, sd[f"{p}.shortcut_layer.0.weight"], stride=stride)
                short = ref_bn(short, sd, f"{p}.shortcut_layer.1")
            else:  # MaxPool2d(1, stride) == subsampling
                short = x[:, :, ::stride, ::stride]
            r = ref_bn(x, sd, f"{p}.res_layer.0")
            r = F.conv2d(r, sd[f"{p}.res_layer.1.weight"], padding=1)
            r = F.prelu(ref_bn(r, sd, f"{p}.res_layer.2"), sd[f"{p}.res_layer.3.weight"])
            r = F.conv2d(r, sd[f"{p}.res_layer.4.weight"], stride=stride, padding=1)
            x = ref_bn(r, sd, f"{p}.res_layer.5") + short
            if idx in return_spatial:
                spatials.append(x)
            idx += 1
    x = ref_bn(x, sd, "output_layer.0").flatten(1)
    x = F.linear(x, sd["output_layer.3.weight"], sd["output_layer.3.bias"])
    x = ref_bn(x, sd, "output_layer.4")
    norm = x.pow(2).sum(1, keepdim=True).sqrt().clamp_min(1e-5)
    return x / norm, norm, spatials


def ref_id_encoder(sd, img):
    """label_mapping.ImageEmbedder(v4) over RecognitionModel(ir_50, return_spatial [21], no normalisation)."""
    unit, norm, (sp,) = ref_ir(sub(sd, "backbone.backbone."), img.flip(1), IR50_UNITS, (21,))
    feature = unit * norm
    tokens = torch.cat([feature[:, None, :], sp.flatten(2).transpose(1, 2)], dim=1) + sd["pos_emb.0"][None]
    return tokens[:, 0] * sd["scaler.0"], tokens[:, 1:]


def ref_style_head(sd, feature, s):
    """ExternalMappingV4Dropout for one (B, 64, 56, 56) map, eval mode."""
    side = feature.shape[-1]
    d = side // s * s
    if d != side:  # nearest: source index floor(i * side / d)
        idx = torch.tensor([i * side // d for i in range(d)])
        feature = feature[:, :, idx][:, :, :, idx]
    f = F.conv2d(F.prelu(feature, sd["relu_0.weight"]), sd["conv_0.weight"], sd["conv_0.bias"])
    f = ref_bn(f, sd, "norm_0")
    b, c, h, _ = f.shape
    p = h // s
    g_mean = f.mean(dim=(2, 3))[:, :, None]
    g_var = g_mean - (f * f).mean(dim=(2, 3))[:, :, None]
    blocks = f.reshape(b, c, s, p, s, p)
    p_mean = blocks.mean(dim=(3, 5)).reshape(b, c, s * s)
    p_var = p_mean - (blocks * blocks).mean(dim=(3, 5)).reshape(b, c, s * s)
    w = sd["channel_weight_0.0"]
    g_info = w[None, :, 0:1] * g_mean + w[None, :, 1:2] * g_var
    p_info = w[None, :, 0:1] * p_mean + w[None, :, 1:2] * p_var
    tokens = torch.cat([g_info, p_info], dim=2).transpose(1, 2) + sd["pos_emb_0.0"][None]
    return F.layer_norm(tokens, (c,), sd["ln_0.weight"], sd["ln_0.bias"], 1e-5)


def ref_condition(sd, id_tokens, style_tokens):
    ctx = torch.cat([id_tokens, style_tokens], dim=1).transpose(1, 2)
    return F.conv1d(ctx, sd["cross_attn_adapter.weight"], sd["cross_attn_adapter.bias"])


def maxdiff(a: torch.Tensor, b: torch.Tensor, label: str) -> float:
    assert a.shape == b.shape, (label, a.shape, b.shape)
    diff = (a - b).abs().max().item()
    print(f"{label}: max |diff| = {diff:.3e} (max |ref| = {b.abs().max().item():.3e})")
    return diff


# -------------------------------------------------------------------------------------------------- key sets


def test_ir50_keys():
    sd = IRBackbone(50).state_dict()
    assert sd["input_layer.0.weight"].shape == (64, 3, 3, 3)
    assert "input_layer.1.running_var" in sd and sd["input_layer.2.weight"].shape == (64,)
    assert sd["body.3.shortcut_layer.0.weight"].shape == (128, 64, 1, 1)
    assert sd["body.21.res_layer.5.running_var"].shape == (512,)
    assert sd["body.21.res_layer.3.weight"].shape == (512,)
    assert sd["body.0.res_layer.1.weight"].shape == (64, 64, 3, 3)
    assert sd["output_layer.3.weight"].shape == (512, 25088)
    assert "output_layer.4.running_mean" in sd and "output_layer.4.num_batches_tracked" in sd
    assert "output_layer.4.weight" not in sd and "output_layer.4.bias" not in sd
    assert "output_layer.0.weight" in sd
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("body.")}
    assert blocks == set(range(24))
    shortcuts = sorted({int(k.split(".")[1]) for k in sd if ".shortcut_layer." in k})
    assert shortcuts == [3, 7, 21]
    prefixes = {k.split(".")[0] for k in sd}
    assert prefixes == {"input_layer", "body", "output_layer"}


def test_ir100_keys():
    sd = IRBackbone(100).state_dict()
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("body.")}
    assert blocks == set(range(49))
    assert sorted({int(k.split(".")[1]) for k in sd if ".shortcut_layer." in k}) == [3, 16, 46]
    with pytest.raises(ValueError):
        IRBackbone(152)


def test_id_encoder_keys():
    sd = IDEncoder().state_dict()
    assert sd["pos_emb.0"].shape == (50, 512)
    assert sd["scaler.0"].shape == (1,)
    assert torch.allclose(sd["scaler.0"], torch.tensor([0.001]))
    assert sd["backbone.backbone.body.21.res_layer.5.running_var"].shape == (512,)
    assert sd["backbone.backbone.output_layer.3.weight"].shape == (512, 25088)
    assert set(sd) - {k for k in sd if k.startswith("backbone.backbone.")} == {"pos_emb.0", "scaler.0"}
    assert {k[len("backbone.backbone.") :] for k in sd if k.startswith("backbone.")} == set(IRBackbone(50).state_dict())


@pytest.mark.parametrize("s", [3, 5])
def test_style_head_keys(s):
    sd = StyleHead(s).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes == {
        "conv_0.weight": (512, 64, 1, 1),
        "conv_0.bias": (512,),
        "norm_0.weight": (512,),
        "norm_0.bias": (512,),
        "norm_0.running_mean": (512,),
        "norm_0.running_var": (512,),
        "norm_0.num_batches_tracked": (),
        "relu_0.weight": (1,),
        "channel_weight_0.0": (512, 2),
        "pos_emb_0.0": (1 + s * s, 512),
        "ln_0.weight": (512,),
        "ln_0.bias": (512,),
        "cross_attn_adapter.weight": (1024, 512, 1),
        "cross_attn_adapter.bias": (1024,),
    }
    # init: channel weights 0.5; positional table sin (even) / cos (odd) minus 0.5
    assert torch.all(sd["channel_weight_0.0"] == 0.5)
    pos = sd["pos_emb_0.0"]
    assert torch.allclose(pos[0, 0::2], torch.full((256,), -0.5))
    assert torch.allclose(pos[0, 1::2], torch.full((256,), 0.5))
    assert math.isclose(pos[1, 0].item(), math.sin(1.0) - 0.5, abs_tol=1e-6)
    assert math.isclose(pos[2, 3].item(), math.cos(2.0 * 10000 ** (-2 / 512)) - 0.5, abs_tol=1e-6)


# ------------------------------------------------------------------------------------------ functional parity


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(7)
    return torch.rand(2, 3, 112, 112, generator=gen) * 2 - 1


@torch.no_grad()
def test_ir50_matches_functional(images):
    torch.manual_seed(0)
    net = IRBackbone(50)
    sd = randomise(net, 1)
    unit, norm, spatials = net(images, return_spatial=(21, 2))
    r_unit, r_norm, r_spatials = ref_ir(sd, images, IR50_UNITS, (2, 21))
    assert [tuple(t.shape) for t in spatials] == [(2, 64, 56, 56), (2, 512, 7, 7)]
    assert maxdiff(spatials[0], r_spatials[0], "IR-50 body[2]") < TOL
    assert maxdiff(spatials[1], r_spatials[1], "IR-50 body[21]") < TOL
    assert maxdiff(unit, r_unit, "IR-50 unit feature") < TOL
    assert maxdiff(norm, r_norm, "IR-50 norm") < TOL * max(1.0, r_norm.abs().max().item())

    enc = RecognitionEncoder(50, (2,))
    enc.backbone.load_state_dict(sd)
    enc.eval()
    feature, (sp,) = enc(images)
    assert maxdiff(feature, r_unit * r_norm, "ref without BGR flip (must differ)") > 1e-3
    r_unit_bgr, r_norm_bgr, (r_sp_bgr,) = ref_ir(sd, images.flip(1), IR50_UNITS, (2,))
    scale = max(1.0, (r_unit_bgr * r_norm_bgr).abs().max().item())
    assert maxdiff(feature, r_unit_bgr * r_norm_bgr, "RecognitionEncoder feature") < TOL * scale
    assert maxdiff(sp, r_sp_bgr, "RecognitionEncoder body[2]") < TOL
    with pytest.raises(ValueError):
        enc(torch.zeros(1, 3, 64, 64))


@torch.no_grad()
def test_id_encoder_matches_functional(images):
    torch.manual_seed(0)
    enc = IDEncoder()
    sd = randomise(enc, 2)
    stylemod, tokens = enc(images)
    r_stylemod, r_tokens = ref_id_encoder(sd, images)
    assert stylemod.shape == (2, 512) and tokens.shape == (2, 49, 512)
    assert maxdiff(stylemod, r_stylemod, "IDEncoder stylemod") < TOL
    assert maxdiff(tokens, r_tokens, "IDEncoder id tokens") < TOL


@pytest.mark.parametrize("s", [3, 5])
@torch.no_grad()
def test_style_head_matches_functional(s):
    torch.manual_seed(0)
    head = StyleHead(s)
    sd = randomise(head, 10 + s)
    gen = torch.Generator().manual_seed(20 + s)
    feature = torch.randn(2, 64, 56, 56, generator=gen)
    id_tokens = torch.randn(2, 49, 512, generator=gen)
    style = head([feature])
    r_style = ref_style_head(sd, feature, s)
    assert style.shape == (2, 1 + s * s, 512)
    assert maxdiff(style, r_style, f"StyleHead({s}) tokens") < TOL
    ctx = head.condition(id_tokens, style)
    r_ctx = ref_condition(sd, id_tokens, r_style)
    assert ctx.shape == (2, 1024, 49 + 1 + s * s)
    assert maxdiff(ctx, r_ctx, f"StyleHead({s}) cross_attn") < TOL


# --------------------------------------------------------------------------------------- Lightning checkpoint


class HyperConfig:
    """Stands in for an OmegaConf object in hyper_parameters."""

    def __init__(self) -> None:
        self.spatial_dim = 3
        self.nested = {"lr": 1e-4}


class Payload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _state_dict() -> collections.OrderedDict:
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(6, 5, generator=gen)
    return collections.OrderedDict(
        [
            ("model.w", torch.randn(4, 3, generator=gen)),
            ("model.h", torch.randn(7, generator=gen).half()),
            ("model.steps", torch.arange(-3, 9, dtype=torch.int64).view(3, 4)),
            ("model.view", base.t()[1:, ::2]),  # non-contiguous, offset view
            ("model.scalar", torch.tensor(2.5)),
        ]
    )


def test_read_state_dict_roundtrip(tmp_path):
    sd = _state_dict()
    path = tmp_path / "tiny.ckpt"
    torch.save(
        {
            "state_dict": sd,
            "hyper_parameters": {"datamodule": functools.partial(dict, img_size=112), "cfg": HyperConfig()},
            "epoch": 3,
            "pytorch-lightning_version": "1.7.1",
            "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(4, 3)}}}],
        },
        path,
    )
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    out = read_state_dict(path)
    assert list(out) == list(sd)
    for name, ref in sd.items():
        got = out[name]
        assert got.dtype == ref.dtype and got.shape == ref.shape and got.stride() == ref.stride(), name
        assert torch.equal(got, ref), name
    assert out["model.view"].storage_offset() == sd["model.view"].storage_offset()

    entries = read_entries(path)
    assert entries["epoch"] == 3 and entries["pytorch-lightning_version"] == "1.7.1"
    part = entries["hyper_parameters"]["datamodule"]
    assert isinstance(part, PickledGlobal) and part.global_name == "functools.partial"
    assert part.state[2] == {"img_size": 112}
    cfg = entries["hyper_parameters"]["cfg"]
    assert isinstance(cfg, PickledGlobal) and cfg.global_name.endswith(".HyperConfig")
    assert cfg.state == {"spatial_dim": 3, "nested": {"lr": 1e-4}}
    assert torch.equal(entries["state_dict"]["model.w"], sd["model.w"])
    assert torch.equal(entries["optimizer_states"][0]["state"][0]["exp_avg"], torch.ones(4, 3))


def test_reader_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": Payload(f"touch {marker}")}, path)
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2))
    entries = read_entries(path)
    assert not marker.exists()
    stub = entries["hyper_parameters"]
    assert isinstance(stub, PickledGlobal)
    assert stub.global_name.endswith(".system") and stub.args == (f"touch {marker}",)
    # a payload in the state dict itself is refused, still without running it
    bad = tmp_path / "evil_sd.ckpt"
    torch.save({"state_dict": {"w": Payload(f"touch {marker}")}}, bad)
    with pytest.raises(CheckpointError, match=str(bad)):
        read_state_dict(bad)
    assert not marker.exists()
    # the payload is live: the unrestricted loader runs it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_reader_errors(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=str(text)):
        read_state_dict(text)
    with pytest.raises(CheckpointError, match=str(text)):
        read_entries(text)
    plain_zip = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain_zip, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match=str(plain_zip)):
        read_state_dict(plain_zip)
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(CheckpointError, match=str(path)) as info:
        read_state_dict(path, key="ema_state_dict")
    assert "ema_state_dict" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_state_dict(tmp_path / "missing.ckpt")
