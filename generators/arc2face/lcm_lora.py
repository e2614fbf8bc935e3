"""LCM-LoRA fast mode for Arc2Face: fuse ``latent-consistency/lcm-lora-sdv1-5`` into the UNet.

The published file, ``pytorch_lora_weights.safetensors``, is a kohya-style LoRA exported by diffusers'
LCM-LoRA distillation script: one entry per adapted module of the diffusers SD-1.5 UNet, named
``lora_unet_<module path with "." -> "_">.{lora_down.weight, lora_up.weight, alpha}`` (no text encoder
entries). Adapted modules are those whose path ends in one of :data:`LCM_TARGETS`; for a convolution
``lora_down`` is a conv with the layer's kernel and ``lora_up`` a 1x1 conv. diffusers recognises the
``lora_unet_`` prefix and converts the names in ``StableDiffusionPipeline.load_lora_weights`` (needs
``peft``); the adapter is then fused (W += alpha/rank * up @ down) and the LoRA layers removed, so
sampling costs exactly what the plain UNet costs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from facefoundry.models import hub_repo

LCM_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
               "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
PREFIX = "lora_unet_"
ADAPTER = "lcm"


class LoraFileError(FileNotFoundError):
    """The LCM-LoRA file is missing or does not fit the UNet; the message names the file and the fix."""


def kohya_key(module_name: str) -> str:
    """``down_blocks.0.attentions.0.proj_in`` -> ``lora_unet_down_blocks_0_attentions_0_proj_in``."""
    return PREFIX + module_name.replace(".", "_")


def is_target(module_name: str) -> bool:
    """Whether the LCM-LoRA adapts this UNet module (peft's rule: equal to, or ending in ``.`` + a target)."""
    return any(module_name == t or module_name.endswith("." + t) for t in LCM_TARGETS)


def _hint(source: str, weight_name: str) -> str:
    return (f"download it with `hf download {hub_repo('lcm-lora')} {weight_name}`, set "
            f"generator.lcm_lora to a folder or file holding it (now {source!r}), or use generator.sampler=dpm")


def resolve_lora_file(source: str, weight_name: str, revision: str | None = None) -> Path:
    """The local path of the LoRA file: ``source`` is a file, a folder holding ``weight_name``, or a Hub id
    (downloaded into / read from the HF cache). Raises :class:`LoraFileError` with the fix."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / weight_name).is_file():
            raise LoraFileError(f"LCM-LoRA file {path / weight_name} does not exist: {_hint(source, weight_name)}")
        return path / weight_name
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") != 1:
        raise LoraFileError(f"LCM-LoRA folder {path} does not exist: {_hint(source, weight_name)}")
    from huggingface_hub import hf_hub_download

    from facefoundry.models import check_cached

    check_cached(source, [(weight_name,)], revision, LoraFileError)
    try:
        return Path(hf_hub_download(source, weight_name, revision=revision))
    except Exception as exc:  # network, missing file, gated repo: all end the same way for the user
        raise LoraFileError(f"cannot get {weight_name} from Hub repo {source}: {exc} — "
                            f"{_hint(source, weight_name)}") from exc


def lora_modules(file: Path) -> list[str]:
    """Names (kohya form, without the suffix) of the UNet modules the LoRA file adapts."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        keys = list(f.keys())
    bad = [k for k in keys if not k.startswith(PREFIX)]
    if bad:
        raise LoraFileError(f"{file} is not an SD-1.5 UNet LoRA in kohya format (lora_unet_...): "
                            f"unexpected keys such as {bad[:3]}")
    return sorted({k.split(".")[0] for k in keys if k.endswith(".lora_down.weight")})


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence library notices that do not apply here (no text-encoder LoRA keys; image processors the
    pipeline class imports but never uses)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])


def fuse_lcm_lora(unet: Any, text_encoder: Any, tokenizer: Any, vae: Any, scheduler: Any, file: Path,
                  scale: float = 1.0) -> int:
    """Load ``file`` through ``StableDiffusionPipeline.load_lora_weights``, fuse it into ``unet`` (in place)
    and drop the LoRA layers. Returns the number of adapted modules; raises :class:`LoraFileError` when
    the file's modules are not all found in the UNet."""
    try:
        import peft  # noqa: F401  (diffusers' LoRA loading needs it; say so plainly)
    except ImportError as exc:
        raise ImportError("generator.sampler=lcm needs the `peft` package: pip install peft") from exc
    from peft.tuners.lora import LoraLayer

    wanted = lora_modules(file)
    if not wanted:
        raise LoraFileError(f"{file} holds no lora_down weights: not a LoRA file")
    with _quiet():
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        try:
            pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=ADAPTER)
        except (ValueError, KeyError, RuntimeError) as exc:
            pipe.unload_lora_weights()
            raise LoraFileError(f"{file} does not fit the UNet: {exc} — is it an SD-1.5 LoRA "
                                f"({hub_repo('lcm-lora')})?") from exc
        found = sum(isinstance(m, LoraLayer) for m in unet.modules())
        if found != len(wanted):
            pipe.unload_lora_weights()
            raise LoraFileError(f"{file}: {len(wanted)} LoRA modules in the file but {found} matched the UNet — "
                                f"is it an SD-1.5 LoRA ({hub_repo('lcm-lora')})?")
        pipe.fuse_lora(components=["unet"], lora_scale=scale, adapter_names=[ADAPTER])
        pipe.unload_lora_weights()
    return found
