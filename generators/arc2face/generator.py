"""Arc2Face: an SD-1.5 UNet conditioned on an ArcFace identity vector through a fine-tuned CLIP encoder.

Loads the published weights unchanged (``FoivosPar/Arc2Face``: ``arc2face/`` UNet, ``encoder/`` CLIP
text model) on top of SD-1.5's tokenizer, VAE and scheduler config, or the tiny random build in the
same layout (:mod:`facefoundry.generators.arc2face.tiny`).

Identity injection: the prompt ``"photo of a id person"`` is tokenised; the token embedding at the
``id`` position is replaced by the L2-normalised 512-d vector zero-padded to the encoder width, then
position embeddings, the causal CLIP transformer and the final layer norm give ``prompt_embeds``.
Replacement is by position, so one batch may mix identities. Every image draws its initial latents
(and, with LCM, its per-step noise) from its own ``torch.Generator`` seeded with its seed, so it does not
depend on its batch.

Samplers (``cfg.sampler``): ``dpm``, DPM-Solver multistep from the base scheduler config (Arc2Face's
default, 25 steps, guidance 3.0); ``lcm``, fast mode: the LCM-LoRA for SD-1.5 fused into the UNet
(:mod:`facefoundry.generators.arc2face.lcm_lora`) and ``LCMScheduler`` from the same base config (2-4 steps,
guidance 1.0, i.e. one UNet pass per step and no CFG branch).

Pose ControlNet (``cfg.controlnet``): Arc2Face's published ``controlnet/`` (a diffusers ``ControlNetModel``)
runs through ``StableDiffusionControlNetPipeline`` built from the loaded components, with the same initial
latents, per-image generators, identity embeddings and CFG branch as above. Condition images come from the
user's ``cfg.pose_images`` folder (natural name order): image k of every identity (``IMAGE_INDEX`` of its
variation, never its batch position) takes file k mod N, resized and scaled to [0, 1] by the pipeline's control
image processor as in the official demo. Each row records the file in the ``pose_condition`` column.
"""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from facefoundry.generators.arc2face.config import Arc2FaceConfig
from facefoundry.generators.arc2face.lcm_lora import fuse_lcm_lora, resolve_lora_file
from facefoundry.generators.arc2face.spec import Arc2FaceSpec
from facefoundry.generators.base import (
    DIFFUSERS_WEIGHTS,
    IMAGE_INDEX,
    TRANSFORMERS_WEIGHTS,
    GenerationOutput,
    ModelFiles,
    Resources,
    check_batch,
    in_microbatches,
    resolve_device,
    resolve_dtype,
)
from facefoundry.models import hub_repo

ID_DIM = 512
ID_WORD = "id"

# (repo role, subfolder, files of which one of each group must exist)
_REQUIRED = {
    "unet": ("model", "arc2face", [("config.json",), DIFFUSERS_WEIGHTS]),
    "encoder": ("model", "encoder", [("config.json",), TRANSFORMERS_WEIGHTS]),
    "tokenizer": ("base", "tokenizer", [("vocab.json", "tokenizer.json")]),
    "vae": ("base", "vae", [("config.json",), DIFFUSERS_WEIGHTS]),
    "scheduler": ("base", "scheduler", [("scheduler_config.json",)]),
}
# Only with cfg.controlnet: Arc2Face's pose ControlNet, a subfolder of the same Hub repo.
_CONTROLNET = ("controlnet", "controlnet", [("config.json",), DIFFUSERS_WEIGHTS])
POSE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
POSE_COLUMN = "pose_condition"


class ModelFilesError(FileNotFoundError):
    """Model files are missing or cannot be loaded; the message names the path and the fix."""


def _hint(role: str) -> str:
    if role == "controlnet":
        return ("download controlnet/config.json and controlnet/diffusion_pytorch_model.safetensors from "
                f"{hub_repo('arc2face')} into generator.model, or set generator.controlnet=false")
    if role == "model":
        return (f"run `facefoundry models fetch arc2face` ({hub_repo('arc2face')}: arc2face/, encoder/) "
                "or set generator.model")
    return (f"run `facefoundry models fetch sd15` ({hub_repo('sd15')}: tokenizer/, vae/, "
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


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders digit runs by value: ``pose_2.png`` before ``pose_10.png``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower()) for part in re.split(r"(\d+)", name) if part)


def list_pose_images(folder: str | Path) -> list[Path]:
    """The condition images of ``folder`` (:data:`POSE_SUFFIXES`) in natural name order; a missing or empty
    folder raises :class:`ModelFilesError`."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelFilesError(f"generator.pose_images folder {path} does not exist: point it at a folder of "
                              "condition images (e.g. normal maps rendered from a 3D face model)")
    files = sorted((f for f in path.iterdir() if f.is_file() and f.suffix.lower() in POSE_SUFFIXES),
                   key=lambda f: (natural_key(f.name), f.name))
    if not files:
        raise ModelFilesError(f"generator.pose_images folder {path} holds no {'/'.join(POSE_SUFFIXES)} image")
    return files


def pose_images_folder(cfg: Arc2FaceConfig, model: str | None = None) -> str | None:
    """Where the condition images are: ``cfg.pose_images``, else for a tiny build the folder that
    :func:`~facefoundry.generators.arc2face.tiny.build_tiny_arc2face_controlnet` writes next to ``model``."""
    if not cfg.controlnet:
        return None
    if cfg.pose_images is not None:
        return cfg.pose_images
    if cfg.tiny:
        from facefoundry.generators.arc2face.tiny import POSE_DIR

        return str(Path(str(model or cfg.model)).expanduser().parent / POSE_DIR)
    raise ValueError("generator.controlnet=true needs generator.pose_images")


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
        self.pose_images = pose_images_folder(cfg, self.model)
        self.controlnet: Any = None
        self.poses: list[Path] = []  # condition images in natural name order, read per batch

    @classmethod
    def model_files(cls, cfg: Arc2FaceConfig, model: str | None = None, base_model: str | None = None,
                    extra: str | None = None) -> list[ModelFiles]:
        """What :meth:`setup` loads: Arc2Face's UNet and encoder (``model``), SD-1.5's tokenizer, VAE and
        scheduler (``base_model``), with ``sampler=lcm`` the LCM-LoRA file (``extra``), and with ``controlnet``
        the ControlNet (``model``'s ``controlnet/``) and the condition-image folder."""
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
        if cfg.controlnet:
            _, sub, alternatives = _CONTROLNET
            files.append(ModelFiles(str(model or cfg.model), tuple(tuple(f"{sub}/{n}" for n in names)
                                                                   for names in alternatives),
                                    None, cfg.revision, "generator.model (controlnet)"))
            files.append(ModelFiles(str(pose_images_folder(cfg, model)), (), None, None, "generator.pose_images",
                                    hub=False))
        return files

    @classmethod
    def from_paths(cls, cfg: Arc2FaceConfig, model: str | None = None, base_model: str | None = None,
                   extra: str | None = None) -> Arc2FaceGenerator:
        """The generator for the pipeline's model paths (``extra``: the LCM-LoRA)."""
        return cls(cfg, model, base_model, extra)

    def extra_fields(self) -> list[pa.Field]:
        """With ``controlnet``: ``pose_condition``, the condition image's file name; otherwise none."""
        return [pa.field(POSE_COLUMN, pa.string())] if self.cfg.controlnet else []

    # ------------------------------------------------------------------ loading
    def setup(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Load the five components with ``from_pretrained`` (once per worker) onto ``device``; with
        ``sampler=lcm`` also fuse the LCM-LoRA into the UNet and use ``LCMScheduler``; with ``controlnet`` also
        load ``controlnet/`` (``ControlNetModel``, same revision) and the condition images."""
        from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, LCMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        for role, sub, groups in _REQUIRED.values():
            _check_local(self.model if role == "model" else self.base, role, sub, groups,
                         self.cfg.revision if role == "model" else None)
        if self.cfg.controlnet:  # before the slow loads: missing files fail fast
            _check_local(self.model, *_CONTROLNET, self.cfg.revision)
            list_pose_images(str(self.pose_images))
        lora_file = None
        if self.cfg.sampler == "lcm":  # before the slow loads: a missing LoRA fails fast
            lora_file = resolve_lora_file(self.lcm_lora, self.cfg.lcm_lora_weight_name, self.cfg.lcm_lora_revision)
        rev = self.cfg.revision
        device = resolve_device(device if device is not None else self.cfg.device)
        dtype = resolve_dtype(dtype if dtype is not None else self.cfg.dtype, device, Arc2FaceSpec.precision_on_cuda)
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
        controlnet = None
        if self.cfg.controlnet:
            from diffusers import ControlNetModel

            try:
                controlnet = ControlNetModel.from_pretrained(self.model, subfolder="controlnet", revision=rev,
                                                             torch_dtype=dtype)
            except (OSError, ValueError) as exc:
                raise ModelFilesError(f"cannot load {self.model} (controlnet/): {exc} — "
                                      f"{_hint('controlnet')}") from exc
        self.set_components(unet, encoder, tokenizer, vae, scheduler, device, dtype, controlnet=controlnet)
        if lora_file is not None:  # fused on the target device and dtype
            fuse_lcm_lora(self.unet, self.text_encoder, self.tokenizer, self.vae, self.scheduler, lora_file)

    def set_components(self, unet: Any, text_encoder: Any, tokenizer: Any, vae: Any, scheduler: Any,
                       device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                       controlnet: Any = None) -> None:
        """Use already-built components (what :meth:`setup` does after loading). Taken as they are: for
        ``sampler=lcm`` pass a UNet with the LCM-LoRA fused and an ``LCMScheduler``. ``controlnet`` (a
        ``ControlNetModel``) is required with ``cfg.controlnet`` and refused without it; the condition-image
        folder is listed here (the images are read per batch)."""
        if (controlnet is None) == self.cfg.controlnet:
            raise ValueError("generator.controlnet=true needs a ControlNet model" if self.cfg.controlnet
                             else "a ControlNet was given but generator.controlnet is false")
        self.device = resolve_device(device if device is not None else self.cfg.device)
        self.dtype = resolve_dtype(dtype if dtype is not None else self.cfg.dtype, self.device,
                                   Arc2FaceSpec.precision_on_cuda)
        self.unet, self.text_encoder, self.vae = (self._place(m) for m in (unet, text_encoder, vae))
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.controlnet = None if controlnet is None else self._place(controlnet)
        self.poses = []
        if controlnet is not None:
            self.poses = list_pose_images(str(self.pose_images))
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
        """One HxWx3 uint8 RGB image per (vector, seed). Without ``controlnet`` ``variations`` are accepted and
        unused; with it each one's ``IMAGE_INDEX`` picks the condition image (:meth:`pose_indices`).

        Works in micro-batches of ``cfg.batch_size``; an out-of-memory error halves the micro-batch and
        retries (down to 1 image) before it propagates.
        """
        return self.generate_output(vectors, seeds, variations).images

    def generate_output(self, vectors: np.ndarray, seeds: np.ndarray,
                        variations: list[dict[str, Any]] | None = None) -> GenerationOutput:
        """The images of :meth:`generate`; with ``controlnet`` also the ``pose_condition`` column."""
        arr, seeds = check_batch(vectors, seeds, variations, ID_DIM)
        self._require_setup()
        if not self.cfg.controlnet:
            return GenerationOutput(in_microbatches(len(arr), self.cfg.batch_size,
                                                    lambda i, j: self._generate_batch(arr[i:j], seeds[i:j]),
                                                    self.device))
        picks = self.pose_indices(variations, len(arr))
        images = in_microbatches(len(arr), self.cfg.batch_size,
                                 lambda i, j: self._generate_batch(arr[i:j], seeds[i:j], picks[i:j]), self.device)
        return GenerationOutput(images, {POSE_COLUMN: [self.poses[k].name for k in picks]})

    def pose_indices(self, variations: list[dict[str, Any]] | None, n: int) -> list[int]:
        """Condition image of each image: its ``IMAGE_INDEX`` (index within its identity) mod the number of
        condition images. Missing indices are an error (the batch position would make images batch-dependent)."""
        if variations is None or any(v is None or v.get(IMAGE_INDEX) is None for v in variations):
            raise ValueError(f"generator.controlnet needs each image's index within its identity "
                             f"(variations[i][{IMAGE_INDEX!r}], which the pipeline sets) to pick its condition image")
        if len(variations) != n:
            raise ValueError(f"got {n} vectors but {len(variations)} variations")
        return [int(v[IMAGE_INDEX]) % len(self.poses) for v in variations]

    @torch.inference_mode()
    def _generate_batch(self, vectors: np.ndarray, seeds: np.ndarray,
                        poses: list[int] | None = None) -> list[np.ndarray]:
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
        if poses is not None:  # the pipeline scales by init_noise_sigma itself
            latents = self._controlnet_latents(embeds, latents.to(self.device, self.dtype), gens, scheduler,
                                               [_load_rgb(self.poses[k]) for k in poses])
        else:
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

    def _controlnet_latents(self, embeds: torch.Tensor, latents: torch.Tensor, gens: list[torch.Generator],
                            scheduler: Any, conditions: list[Image.Image]) -> torch.Tensor:
        """Denoise the initial noise ``latents`` (unscaled: the pipeline multiplies by ``init_noise_sigma``) with
        ``StableDiffusionControlNetPipeline`` over the loaded components and ``scheduler`` (a per-call copy);
        ``embeds`` as built by :meth:`_generate_batch` ([uncond; cond] when guided)."""
        from diffusers import StableDiffusionControlNetPipeline

        pipe = StableDiffusionControlNetPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            controlnet=self.controlnet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        guided = self.cfg.guidance_scale > 1.0
        uncond, cond = embeds.chunk(2) if guided else (None, embeds)
        side = self.image_size
        return pipe(
            prompt_embeds=cond, negative_prompt_embeds=uncond, image=conditions, height=side, width=side,
            num_inference_steps=self.cfg.steps, guidance_scale=self.cfg.guidance_scale,
            controlnet_conditioning_scale=self.cfg.controlnet_scale, generator=gens,
            latents=latents, output_type="latent",
        ).images


def _load_rgb(path: Path) -> Image.Image:
    """``path`` read fully into memory as an RGB image."""
    with Image.open(path) as im:
        return im.convert("RGB")
