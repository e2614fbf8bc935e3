"""Arc2Face: an SD-1.5 UNet conditioned on an ArcFace identity vector through a fine-tuned CLIP encoder.

Loads the published weights unchanged (``FoivosPar/Arc2Face``: ``arc2face/`` UNet, ``encoder/`` CLIP
text model) on top of SD-1.5's tokenizer, VAE and scheduler config, or the tiny random build in the
same layout (:mod:`facefoundry.generators.tiny_arc2face`).

Identity injection: the prompt ``"photo of a id person"`` is tokenised; the token embedding at the
``id`` position is replaced by the L2-normalised 512-d vector zero-padded to the encoder width, then
position embeddings, the causal CLIP transformer and the final layer norm give ``prompt_embeds``.
Replacement is by position, so one batch may mix identities. Every image draws its initial latents
(and, with LCM, its per-step noise) from its own ``torch.Generator`` seeded with its seed, so it does not
depend on its batch.

Samplers (``cfg.sampler``): ``dpm``, DPM-Solver multistep from the base scheduler config (Arc2Face's
default, 25 steps, guidance 3.0); ``lcm``, fast mode: the LCM-LoRA for SD-1.5 fused into the UNet
(:mod:`facefoundry.generators.lcm_lora`) and ``LCMScheduler`` from the same base config (2-4 steps,
guidance 1.0, i.e. one UNet pass per step and no CFG branch).
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from facefoundry.config import Arc2FaceConfig

from .base import GenerationOutput, ModelFiles, Resources, check_batch, in_microbatches, resolve_device, resolve_dtype
from .lcm_lora import fuse_lcm_lora, resolve_lora_file

ID_DIM = 512
ID_WORD = "id"

_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_TF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
               "pytorch_model.bin.index.json")
# (repo role, subfolder, files of which one of each group must exist)
_REQUIRED = {
    "unet": ("model", "arc2face", [("config.json",), _WEIGHTS]),
    "encoder": ("model", "encoder", [("config.json",), _TF_WEIGHTS]),
    "tokenizer": ("base", "tokenizer", [("vocab.json", "tokenizer.json")]),
    "vae": ("base", "vae", [("config.json",), _WEIGHTS]),
    "scheduler": ("base", "scheduler", [("scheduler_config.json",)]),
}


class ModelFilesError(FileNotFoundError):
    """Model files are missing or cannot be loaded; the message names the path and the fix."""


def _hint(role: str) -> str:
    if role == "model":
        return ("run `facefoundry models fetch arc2face` (FoivosPar/Arc2Face: arc2face/, encoder/) "
                "or set generator.model")
    return ("run `facefoundry models fetch sd15` (stable-diffusion-v1-5/stable-diffusion-v1-5: tokenizer/, vae/, "
            "scheduler/) or set generator.base_model")


def _check_local(repo: str, role: str, subfolder: str, groups: list[tuple[str, ...]],
                 revision: str | None = None) -> None:
    """Raise :class:`ModelFilesError` when ``repo`` is a local folder lacking a needed file."""
    path = Path(repo).expanduser()
    if not path.exists():
        if path.is_absolute() or repo.startswith((".", "~")) or repo.count("/") != 1:
            raise ModelFilesError(f"model folder {path} does not exist: {_hint(role)}")
        # A Hub id: from_pretrained resolves it; offline, the HF cache must hold it (else the fetch command).
        from facefoundry.models import check_cached

        check_cached(repo, [tuple(f"{subfolder}/{n}" for n in names) for names in groups], revision, ModelFilesError)
        return
    for names in groups:
        if not any((path / subfolder / n).is_file() for n in names):
            want = " or ".join(f"{path / subfolder / n}" for n in names)
            raise ModelFilesError(f"expected {want} — {_hint(role)}")


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive (1, 1, L, L) mask: 0 on and below the diagonal, the dtype's minimum above it."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device)
    return mask.triu(1)[None, None]


class Arc2FaceGenerator:
    """Identity vectors (L2-normalised arcface.onnx space, 512-d) + seeds -> RGB face images."""

    name = "arc2face"
    resources = Resources(num_cpus=1.0)  # + ray.generator_gpus GPUs (pipelines.stages.GenerateStage)

    def __init__(self, cfg: Arc2FaceConfig, model_path: str | None = None, base_path: str | None = None,
                 lcm_lora_path: str | None = None):
        self.cfg = cfg
        self.model = str(model_path or cfg.model)
        self.base = str(base_path or cfg.base_model)
        self.lcm_lora = str(lcm_lora_path or cfg.lcm_lora)
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self._uncond: torch.Tensor | None = None

    @classmethod
    def model_files(cls, cfg: Arc2FaceConfig, model: str | None = None, base_model: str | None = None,
                    extra: str | None = None) -> list[ModelFiles]:
        """What :meth:`setup` loads: Arc2Face's UNet and encoder (``model``), SD-1.5's tokenizer, VAE and
        scheduler (``base_model``), and with ``sampler=lcm`` the LCM-LoRA file (``extra``)."""
        def groups(role: str) -> tuple[tuple[str, ...], ...]:
            return tuple(tuple(f"{sub}/{n}" for n in names)
                         for r, sub, alternatives in _REQUIRED.values() if r == role for names in alternatives)

        files = [ModelFiles(str(model or cfg.model), groups("model"), "arc2face", cfg.revision, "generator.model"),
                 ModelFiles(str(base_model or cfg.base_model), groups("base"), "sd15", None, "generator.base_model")]
        if cfg.sampler == "lcm":  # a folder or Hub repo holding lcm_lora_weight_name, or the file itself
            lora = Path(str(extra or cfg.lcm_lora)).expanduser()
            source, name = (str(lora.parent), lora.name) if lora.is_file() else (str(extra or cfg.lcm_lora),
                                                                                cfg.lcm_lora_weight_name)
            files.append(ModelFiles(source, ((name,),), "lcm-lora", cfg.lcm_lora_revision, "generator.lcm_lora"))
        return files

    @classmethod
    def from_paths(cls, cfg: Arc2FaceConfig, model: str | None = None, base_model: str | None = None,
                   extra: str | None = None) -> Arc2FaceGenerator:
        """The generator for the pipeline's model paths (``extra``: the LCM-LoRA)."""
        return cls(cfg, model, base_model, extra)

    def extra_fields(self) -> list[pa.Field]:
        """Arc2Face adds no per-image columns."""
        return []

    # ------------------------------------------------------------------ loading
    def setup(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Load the five components with ``from_pretrained`` (once per worker) onto ``device``; with
        ``sampler=lcm`` also fuse the LCM-LoRA into the UNet and use ``LCMScheduler``."""
        from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, LCMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        for role, sub, groups in _REQUIRED.values():
            _check_local(self.model if role == "model" else self.base, role, sub, groups,
                         self.cfg.revision if role == "model" else None)
        lora_file = None
        if self.cfg.sampler == "lcm":  # before the slow loads: a missing LoRA fails fast
            lora_file = resolve_lora_file(self.lcm_lora, self.cfg.lcm_lora_weight_name, self.cfg.lcm_lora_revision)
        rev = self.cfg.revision
        device = resolve_device(device if device is not None else self.cfg.device)
        dtype = resolve_dtype(dtype if dtype is not None else self.cfg.dtype, device)
        try:
            unet = UNet2DConditionModel.from_pretrained(self.model, subfolder="arc2face", revision=rev,
                                                        torch_dtype=dtype)
            encoder = CLIPTextModel.from_pretrained(self.model, subfolder="encoder", revision=rev)
        except (OSError, ValueError) as exc:
            raise ModelFilesError(f"cannot load {self.model} (arc2face/, encoder/): {exc} — "
                                  f"{_hint('model')}") from exc
        try:
            tokenizer = CLIPTokenizer.from_pretrained(self.base, subfolder="tokenizer")
            vae = AutoencoderKL.from_pretrained(self.base, subfolder="vae", torch_dtype=dtype)
            scheduler_class = LCMScheduler if self.cfg.sampler == "lcm" else DPMSolverMultistepScheduler
            scheduler = scheduler_class.from_pretrained(self.base, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise ModelFilesError(f"cannot load {self.base} (tokenizer/, vae/, scheduler/): {exc} — "
                                  f"{_hint('base')}") from exc
        self.set_components(unet, encoder, tokenizer, vae, scheduler, device, dtype)
        if lora_file is not None:  # fused on the target device and dtype
            fuse_lcm_lora(self.unet, self.text_encoder, self.tokenizer, self.vae, self.scheduler, lora_file)

    def set_components(self, unet: Any, text_encoder: Any, tokenizer: Any, vae: Any, scheduler: Any,
                       device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Use already-built components (what :meth:`setup` does after loading). Taken as they are: for
        ``sampler=lcm`` pass a UNet with the LCM-LoRA fused and an ``LCMScheduler``."""
        self.device = resolve_device(device if device is not None else self.cfg.device)
        self.dtype = resolve_dtype(dtype if dtype is not None else self.cfg.dtype, self.device)
        self.unet, self.text_encoder, self.vae = (self._place(m) for m in (unet, text_encoder, vae))
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self._text = getattr(text_encoder, "text_model", text_encoder)  # transformers 4.x nests it
        width = self._text.embeddings.token_embedding.weight.shape[1]
        if width < ID_DIM:
            raise ValueError(f"encoder hidden size {width} is smaller than the {ID_DIM}-d identity vector")
        self.prompt_ids = self._tokenize(self.cfg.prompt)
        id_tokens = tokenizer(ID_WORD, add_special_tokens=False).input_ids
        hits = [i for i, t in enumerate(self.prompt_ids[0].tolist()) if id_tokens == [t]]
        if len(hits) != 1:
            self.device = None  # not usable: a later call must not skip setup
            raise ValueError(f"prompt {self.cfg.prompt!r} must contain the word {ID_WORD!r} exactly once "
                             f"as a single token (token ids {id_tokens}, found at {hits})")
        self.id_position = hits[0]
        self._uncond = None

    def _place(self, module: Any) -> Any:
        module = module.to(self.device)
        return (module if module.dtype == self.dtype else module.to(self.dtype)).eval()

    def _tokenize(self, text: str) -> torch.Tensor:
        n = self.tokenizer.model_max_length
        ids = self.tokenizer(text, padding="max_length", max_length=n, truncation=True, return_tensors="pt")
        return ids.input_ids.to(self.device)

    @property
    def image_size(self) -> int:
        """Native output side: UNet sample size x VAE scale factor (512 for the published model)."""
        return int(self.unet.config.sample_size) * 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ---------------------------------------------------------------- encoding
    def _run_encoder(self, token_embeds: torch.Tensor) -> torch.Tensor:
        """Position embeddings -> causal CLIP layers -> final layer norm, using the model's own modules."""
        text = self._text
        hidden = text.embeddings(inputs_embeds=token_embeds)
        mask = causal_mask(hidden.shape[1], hidden.dtype, hidden.device)
        for layer in text.encoder.layers:
            params = inspect.signature(layer.forward).parameters
            if "causal_attention_mask" in params:  # transformers 4.x: separate causal mask argument
                out = layer(hidden, None, mask)
            else:  # transformers 5.x: one attention mask; is_causal for kernels that take only a flag
                out = layer(hidden, attention_mask=mask, is_causal=True)
            hidden = out[0] if isinstance(out, tuple) else out
        return text.final_layer_norm(hidden)

    @torch.inference_mode()
    def encode_identities(self, vectors: torch.Tensor | np.ndarray) -> torch.Tensor:
        """N x 512 identity vectors -> N x 77 x hidden ``prompt_embeds`` (vector at the ``id`` position)."""
        self._require_setup()
        vec = torch.as_tensor(vectors).to(self.device, torch.float32)
        if vec.ndim != 2 or vec.shape[1] != ID_DIM:
            raise ValueError(f"identity vectors must have shape (N, {ID_DIM}), got {tuple(vec.shape)}")
        norms = vec.norm(dim=1, keepdim=True)
        if not torch.isfinite(vec).all() or (norms == 0).any():
            raise ValueError("identity vectors must be finite and non-zero")
        width = self._text.embeddings.token_embedding.weight.shape[1]
        padded = torch.nn.functional.pad(vec / norms, (0, width - ID_DIM)).to(self.dtype)
        ids = self.prompt_ids.expand(vec.shape[0], -1)
        embeds = self._text.embeddings.token_embedding(ids).clone()
        embeds[:, self.id_position] = padded
        return self._run_encoder(embeds)

    @torch.inference_mode()
    def encode_unconditional(self, n: int) -> torch.Tensor:
        """The empty prompt through the fine-tuned encoder (the CFG branch Arc2Face uses), n x 77 x hidden."""
        self._require_setup()
        if self._uncond is None:
            self._uncond = self.text_encoder(self._tokenize("")).last_hidden_state
        return self._uncond.expand(n, -1, -1)

    # -------------------------------------------------------------- generation
    def _require_setup(self) -> None:
        if self.device is None:
            self.setup()

    def generate(self, vectors: np.ndarray, seeds: np.ndarray,
                 variations: list[dict[str, Any]] | None = None) -> list[np.ndarray]:
        """One HxWx3 uint8 RGB image per (vector, seed); ``variations`` are accepted and unused.

        Works in micro-batches of ``cfg.batch_size``; an out-of-memory error halves the micro-batch and
        retries (down to 1 image) before it propagates.
        """
        arr, seeds = check_batch(vectors, seeds, variations, ID_DIM)
        self._require_setup()
        return in_microbatches(len(arr), self.cfg.batch_size,
                               lambda i, j: self._generate_batch(arr[i:j], seeds[i:j]), self.device)

    def generate_output(self, vectors: np.ndarray, seeds: np.ndarray,
                        variations: list[dict[str, Any]] | None = None) -> GenerationOutput:
        """The images of :meth:`generate`; no extra columns."""
        return GenerationOutput(self.generate(vectors, seeds, variations))

    @torch.inference_mode()
    def _generate_batch(self, vectors: np.ndarray, seeds: np.ndarray) -> list[np.ndarray]:
        n, cfg = len(vectors), self.cfg
        embeds = self.encode_identities(torch.from_numpy(vectors))
        guided = cfg.guidance_scale > 1.0
        if guided:
            embeds = torch.cat([self.encode_unconditional(n), embeds])
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        side = int(self.unet.config.sample_size)
        shape = (1, int(self.unet.config.in_channels), side, side)
        latents = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])
        scheduler = copy.deepcopy(self.scheduler)  # solver state is per call
        scheduler.set_timesteps(cfg.steps, device=self.device)
        latents = (latents * scheduler.init_noise_sigma).to(self.device, self.dtype)
        for t in scheduler.timesteps:
            inp = torch.cat([latents, latents]) if guided else latents
            inp = scheduler.scale_model_input(inp, t)
            noise = self.unet(inp, t, encoder_hidden_states=embeds).sample
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + cfg.guidance_scale * (cond - uncond)
            latents = scheduler.step(noise, t, latents, generator=gens).prev_sample
        pixels = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        pixels = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        out = list(pixels.permute(0, 2, 3, 1).cpu().numpy())
        if cfg.output_size and cfg.output_size != out[0].shape[0]:
            size = (cfg.output_size, cfg.output_size)
            out = [np.asarray(Image.fromarray(im).resize(size, Image.Resampling.LANCZOS)) for im in out]
        return out
