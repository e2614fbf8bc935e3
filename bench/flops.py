"""Forward FLOPs of the real-size generator networks (random weights), counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention; 1 multiply-add = 2
FLOPs; elementwise ops, norms and softmax are not counted, they are a few percent at most).

- SD-1.5 UNet (= Arc2Face's UNet) at 512x512 px: ``UNet2DConditionModel`` with SD-1.5's config, on the
  meta device (no memory, no compute), one image, 64x64x4 latent, 77x768 conditioning.
- SD-1.5 VAE decoder (64x64x4 -> 512x512x3), meta device.
- Arc2Face's CLIP ViT-L/14 text encoder (77 tokens), meta device.
- Vec2Face (``vec2face_vit_base_patch16``, generators/vec2face/model.py) at 112x112 px on the CPU (its
  token selection is data-dependent, so not on meta), with the minimum 5 of 49 tokens dropped.
- IDiff-Face's ConditionalUNet at the released size (216,341,187 parameters, checked) on a 32x32x3 latent
  (128 px images) with one 512-d context, and the ffhq256 VQ-f4 decoder (32x32x3 -> 128x128x3), meta device.
- DCFace: the G_mix UNet at 112 px with its 1024 x 59 context (3x3 style grid), the two IR-50 encoders (ID and
  style image) with the style head, and G_id (the FFHQ-256 ADM of the identity stage), meta device.

Attention runs through diffusers' plain ``AttnProcessor`` (explicit matmuls) so that it is counted.

Usage: python bench/flops.py
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def sd15_unet() -> int:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # other defaults = SD-1.5
    unet.set_attn_processor(AttnProcessor())
    params = sum(p.numel() for p in unet.parameters())
    assert 855e6 < params < 865e6, params  # SD-1.5's UNet has 859.5M parameters
    x, cond = torch.empty(1, 4, 64, 64, device="meta"), torch.empty(1, 77, 768, device="meta")
    return count(lambda: unet(x, 500, encoder_hidden_states=cond))


def sd15_vae_decode() -> int:
    from diffusers import AutoencoderKL
    from diffusers.models.attention_processor import AttnProcessor

    with torch.device("meta"):
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512,
        )
    vae.set_attn_processor(AttnProcessor())
    z = torch.empty(1, 4, 64, 64, device="meta")
    return count(lambda: vae.decode(z))


def clip_text() -> int:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        enc = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12, max_position_embeddings=77))
    ids = torch.zeros(1, 77, dtype=torch.long, device="meta")
    return count(lambda: enc(ids))


def vec2face() -> int:
    from facefoundry.generators.vec2face.model import BASE_ARCH, DROPPED, KEEP, MASKED, build_model

    model = build_model(BASE_ARCH).eval()
    codes = torch.full((1, BASE_ARCH.num_tokens), KEEP, dtype=torch.long)
    codes[0, :5], codes[0, 5:12] = DROPPED, MASKED  # 5 dropped (the minimum), 7 masked (ratio ~0.25)
    rep = torch.randn(1, 512) * 22 / 512**0.5
    with torch.inference_mode():
        return count(lambda: model(rep, codes))


def idiff_face_unet() -> int:
    from facefoundry.generators.idiff_face.model import ConditionalUNet, UNetArch

    with torch.device("meta"):
        unet = ConditionalUNet(UNetArch())
    assert sum(p.numel() for p in unet.parameters()) == 216_341_187  # configs/model/unet_cond_ca_cpd25.yaml
    x, t, ctx = torch.empty(1, 3, 32, 32, device="meta"), torch.zeros(1, dtype=torch.long, device="meta"), \
        torch.empty(1, 512, device="meta")
    return count(lambda: unet(x, t, ctx))


def idiff_face_decode() -> int:
    from facefoundry.generators.idiff_face.model import VQArch, VQDecoder

    with torch.device("meta"):
        decoder = VQDecoder(VQArch())
    z = torch.empty(1, 3, 32, 32, device="meta")
    return count(lambda: decoder(z))


def dcface_gmix() -> int:
    from facefoundry.generators.dcface.unet import GMIX_ARCH, ADMUNet

    with torch.device("meta"):
        unet = ADMUNet(GMIX_ARCH)
    x, t = torch.empty(1, 3, 112, 112, device="meta"), torch.zeros(1, dtype=torch.long, device="meta")
    style, context = torch.empty(1, 512, device="meta"), torch.empty(1, 1024, 59, device="meta")
    return count(lambda: unet(x, t, style, context))


def dcface_conditions() -> int:
    from facefoundry.generators.dcface.generator import DCFaceArch, DCFaceNetworks
    from facefoundry.generators.dcface.unet import GMIX_ARCH

    arch = DCFaceArch(GMIX_ARCH, 3, (64, 128, 256, 512), (64, 128, 256, 512))  # the release's widths
    with torch.device("meta"):
        nets = DCFaceNetworks(arch).eval()
    image = torch.empty(1, 3, 112, 112, device="meta")
    return count(lambda: nets.conditions(image, image))


def dcface_gid() -> int:
    from facefoundry.generators.dcface.unet import GID_ARCH, ADMUNet

    with torch.device("meta"):
        unet = ADMUNet(GID_ARCH)
    x, t = torch.empty(1, 3, 256, 256, device="meta"), torch.zeros(1, dtype=torch.long, device="meta")
    return count(lambda: unet(x, t))


def main() -> None:
    torch.manual_seed(0)
    rows = {"SD-1.5 UNet forward, 512 px (1 image)": sd15_unet(),
            "SD-1.5 VAE decode, 512 px (1 image)": sd15_vae_decode(),
            "CLIP ViT-L/14 text encoder, 77 tokens": clip_text(),
            "Vec2Face forward, 112 px (1 image)": vec2face(),
            "IDiff-Face UNet forward, 128 px (1 image)": idiff_face_unet(),
            "IDiff-Face VQ-f4 decode, 128 px (1 image)": idiff_face_decode(),
            "DCFace G_mix UNet forward, 112 px (1 image)": dcface_gmix(),
            "DCFace ID + style encoders, 112 px (1 image)": dcface_conditions(),
            "DCFace G_id UNet forward, 256 px (1 image)": dcface_gid()}
    for name, flops in rows.items():
        print(f"{name:<42} {flops / 1e9:10.1f} GFLOP")


if __name__ == "__main__":
    main()
