"""IDiff-Face: 512-d L2-normalised identity embeddings + seeds -> 128x128 faces by latent DDPM.

Loads a released model folder unchanged (``.hydra/config.yaml`` for the architecture,
``checkpoints/ema_averaged_model.ckpt`` for the weights and schedule) and the CompVis ffhq256 VQ-f4
decoder (``first_stage_decoder_state_dict.pt``), each with ``torch.load(weights_only=True)`` and a strict
key and shape check. Networks: :mod:`facefoundry.generators.idiff_face.model`.

Sampling as the official ``sample.py``: the published ancestral DDPM over all T steps, conditioned on the
identity vector, no guidance; noise ``z`` is added at steps ``i > 1`` only (the official loop's rule).
Each image draws its initial latent and then every step's noise from a ``torch.Generator`` seeded with its
own seed, in that order, so an image never depends on its batch. ``sampler: ddim`` is this project's faster
option (``steps`` evenly spaced timesteps, ``eta`` noise), recorded in the shard metadata and the card.
Decoding quantises the latent to the codebook, as the official ``VQDecoderInterface`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import yaml
from PIL import Image

from facefoundry.generators.base import (
    GenerationOutput,
    ModelFiles,
    Resources,
    check_batch,
    in_microbatches,
    load_plain_state_dict,
    resolve_device,
    resolve_dtype,
    state_dict_mismatch,
)
from facefoundry.generators.idiff_face.config import DDIM_DEFAULT_STEPS, IDiffFaceConfig
from facefoundry.generators.idiff_face.model import (
    ArchitectureError,
    DiffusionArch,
    DiffusionModel,
    VQArch,
    VQDecoder,
    arch_from_config,
    vq_arch_from_config,
)
from facefoundry.generators.idiff_face.spec import IDiffFaceSpec

ID_DIM = 512
TRAIN_CONFIG = ".hydra/config.yaml"
DECODER_FILE = "first_stage_decoder_state_dict.pt"
DECODER_CONFIG = "first_stage_config.yaml"  # optional beside the decoder; the published values otherwise
_DOWNLOAD = ("download the IDiff-Face model folder and the autoencoder decoder from the links in the "
             "fdbtrs/IDiff-Face README (request form; see `facefoundry models list`)")


class CheckpointNotFoundError(FileNotFoundError):
    """A model file is missing; the message names the path and how to get it."""


class CheckpointError(ValueError):
    """A file exists but is not a usable IDiff-Face file (unreadable, wrong keys or shapes, bad config)."""


def load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A plain state dict from ``path`` with ``torch.load(weights_only=True)`` (no globals allowed)."""
    if not path.is_file():
        raise CheckpointNotFoundError(f"{what} {path} does not exist — {_DOWNLOAD}")
    return load_plain_state_dict(path, CheckpointError, what)


LITE_PREFIXES = ("_original_module.", "_forward_module.")  # PyTorch Lightning 1.7's _LiteModule wrapper


def unwrap_lite(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The model's own state dict from one saved through PyTorch Lightning 1.7's ``LightningLite`` wrapper (what the
    official ``main.py`` trains with): there every key is stored twice, under ``_forward_module.`` (the module, or
    its DDP wrapper's ``module.``) and ``_original_module.``; the original module's keys are taken. A plain state
    dict is returned as it is; one where only some keys are wrapped is refused, naming a key of each kind."""
    wrapped = [k for k in state if k.startswith(LITE_PREFIXES)]
    if not wrapped:
        return state
    if len(wrapped) != len(state):
        plain = next(k for k in state if not k.startswith(LITE_PREFIXES))
        raise CheckpointError(f"{source}: some keys carry Lightning's wrapper prefixes ({wrapped[0]}) and some do "
                              f"not ({plain}); save the module's own state_dict()")
    for prefix, inner in (("_original_module.", ""), ("_forward_module.", "module.")):
        keys = [k for k in state if k.startswith(prefix)]
        if keys:
            unwrapped = {k[len(prefix):]: state[k] for k in keys}
            if inner and all(k.startswith(inner) for k in unwrapped):  # DDP inside the wrapper
                unwrapped = {k[len(inner):]: v for k, v in unwrapped.items()}
            return unwrapped
    return state


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """Load ``state`` into ``module`` (built on the meta device) only when keys and shapes match exactly."""
    problem = state_dict_mismatch(state, module.state_dict())
    if problem is not None:
        raise CheckpointError(f"{source} does not match the {what} described by its config "
                              f"({len(module.state_dict())} keys): {problem}")
    module.load_state_dict(state, strict=True, assign=True)


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a YAML mapping")
    return data


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` timesteps evenly spaced over [0, T - 1], highest first (fewer when they round together)."""
    return sorted({int(t) for t in np.linspace(0, T - 1, min(steps, T)).round()}, reverse=True)


class IDiffFaceGenerator:
    """Unit-norm 512-d identity vectors (ElasticFace space) + seeds -> RGB faces."""

    name = "idiff_face"
    resources = Resources(num_cpus=1.0)  # + ray.generator_gpus GPUs (pipelines.stages.GenerateStage)

    def __init__(self, cfg: IDiffFaceConfig | None = None, model_path: str | None = None,
                 autoencoder_path: str | None = None):
        self.cfg = cfg if cfg is not None else IDiffFaceConfig()
        self.model_dir = Path(str(model_path or self.cfg.model)).expanduser()
        self.autoencoder_dir = Path(str(autoencoder_path or self.cfg.autoencoder)).expanduser()
        self.device: torch.device | None = None
        self.dtype = torch.float32
        self.diffusion: DiffusionModel | None = None
        self.decoder: VQDecoder | None = None

    @classmethod
    def model_files(cls, cfg: IDiffFaceConfig, model: str | None = None, base_model: str | None = None,
                    extra: str | None = None) -> list[ModelFiles]:
        """The model folder's config and checkpoint (``model``) and the VQ decoder (``base_model``): local
        folders only (the weights are released behind a form, not on the Hub)."""
        return [ModelFiles(str(model or cfg.model), ((TRAIN_CONFIG,), (cfg.checkpoint_file,)), "idiff-face", None,
                           "generator.model", hub=False),
                ModelFiles(str(base_model or cfg.autoencoder), ((DECODER_FILE,),), "idiff-face-autoencoder", None,
                           "generator.autoencoder", hub=False)]

    @classmethod
    def from_paths(cls, cfg: IDiffFaceConfig, model: str | None = None, base_model: str | None = None,
                   extra: str | None = None) -> IDiffFaceGenerator:
        """The generator for the pipeline's model paths (``base_model``: the autoencoder folder)."""
        return cls(cfg, model, base_model)

    def extra_fields(self) -> list[pa.Field]:
        """No per-image columns: the sampler and its steps are run-wide (shard metadata, card)."""
        return []

    # ------------------------------------------------------------------ loading
    def read_arch(self) -> DiffusionArch:
        """The model folder's architecture, from its training config."""
        path = self.model_dir / TRAIN_CONFIG
        if not path.is_file():
            raise CheckpointNotFoundError(f"IDiff-Face training config {path} does not exist: generator.model must "
                                          f"be the released model folder (with .hydra/) — {_DOWNLOAD}")
        try:
            return arch_from_config(read_yaml(path))
        except (ArchitectureError, TypeError) as exc:
            raise CheckpointError(f"{path}: {exc}") from exc

    def read_vq_arch(self) -> VQArch:
        """The decoder architecture: ``first_stage_config.yaml`` beside the decoder, else the published one."""
        path = self.autoencoder_dir / DECODER_CONFIG
        return vq_arch_from_config(read_yaml(path)) if path.is_file() else VQArch()

    def setup(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Load both networks strictly onto ``device`` (fp16 on CUDA unless ``dtype`` says otherwise)."""
        arch = self.read_arch()
        if not arch.latent_diffusion:
            raise CheckpointError(f"{self.model_dir / TRAIN_CONFIG}: latent_diffusion is false; the released models "
                                  "are latent models and only those are supported")
        ckpt = self.model_dir / self.cfg.checkpoint_file
        diffusion = DiffusionModel(arch).to("meta")
        state = unwrap_lite(load_state_dict(ckpt, "IDiff-Face checkpoint"), str(ckpt))
        load_strict(diffusion, state, str(ckpt), "IDiff-Face DDPM")
        decoder_path = self.autoencoder_dir / DECODER_FILE
        decoder = VQDecoder(self.read_vq_arch()).to("meta")
        load_strict(decoder, load_state_dict(decoder_path, "VQ decoder"), str(decoder_path), "VQ-f4 decoder")
        self.set_models(diffusion, decoder, device, dtype)

    def set_models(self, diffusion: DiffusionModel, decoder: VQDecoder, device: str | torch.device | None = None,
                   dtype: torch.dtype | None = None) -> None:
        """Use already-built networks (what :meth:`setup` does after loading)."""
        self.device = resolve_device(device if device is not None else self.cfg.device)
        self.dtype = resolve_dtype(dtype if dtype is not None else self.cfg.dtype, self.device,
                                   IDiffFaceSpec.precision_on_cuda)
        self.diffusion = diffusion.to(self.device).eval().requires_grad_(False)
        self.diffusion.eps_model.to(self.dtype)  # the schedule buffers stay float32
        self.decoder = decoder.to(self.device, self.dtype).eval().requires_grad_(False)

    @property
    def image_size(self) -> int:
        """Native output size: the training config's ``constants.image_size`` (128 for the releases)."""
        assert self.diffusion is not None
        return self.diffusion.arch.image_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        assert self.diffusion is not None and self.decoder is not None
        side = self.image_size // 2 ** (len(self.decoder.arch.ch_mult) - 1)
        return self.diffusion.arch.unet.input_channels, side, side

    # ------------------------------------------------------------------ generation
    def generate(self, vectors: np.ndarray, seeds: np.ndarray,
                 variations: list[dict[str, Any]] | None = None) -> list[np.ndarray]:
        """One HxWx3 uint8 RGB image per (vector, seed); vectors are L2-normalised first (the model's input)."""
        arr, seeds = check_batch(vectors, seeds, variations, ID_DIM)
        if self.diffusion is None:
            self.setup()
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"identity vectors must be non-zero (rows {np.where(norms[:, 0] == 0)[0][:5].tolist()})")
        arr = arr / norms
        return in_microbatches(len(arr), self.cfg.batch_size,
                               lambda i, j: self.decode(self.sample_latents(arr[i:j], seeds[i:j])), self.device)

    def generate_output(self, vectors: np.ndarray, seeds: np.ndarray,
                        variations: list[dict[str, Any]] | None = None) -> GenerationOutput:
        """The images of :meth:`generate` (no extra columns)."""
        return GenerationOutput(self.generate(vectors, seeds, variations))

    @torch.inference_mode()
    def sample_latents(self, vectors: np.ndarray, seeds: np.ndarray) -> torch.Tensor:
        """The denoised latents (N x 3 x 32 x 32 for the releases, float32) of L2-normalised ``vectors``."""
        assert self.diffusion is not None and self.device is not None
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        shape = self.latent_shape

        def noise() -> torch.Tensor:  # one draw per image from its own generator
            return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.device)

        x = noise()
        context = torch.from_numpy(vectors).to(self.device, self.dtype)
        d = self.diffusion
        if self.cfg.sampler == "ddpm":
            for i in reversed(range(d.arch.timesteps)):
                eps = self._eps(x, i, context)
                x = d.sqrt_alphas_inv[i] * (x - eps * d.one_minus_alphas_over_sqrt_one_minus_alpha_bars[i])
                if i > 1:  # the official loop adds no noise at its last two steps
                    x = x + d.sigmas[i] * noise()
        else:
            ts = ddim_timesteps(d.arch.timesteps, self.cfg.steps or DDIM_DEFAULT_STEPS)
            for t, prev in zip(ts, [*ts[1:], -1], strict=True):
                ab, ab_prev = d.alpha_bars[t], (d.alpha_bars[prev] if prev >= 0 else torch.ones((), device=x.device))
                eps = self._eps(x, t, context)
                x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
                sigma = self.cfg.eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
                x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
                if self.cfg.eta > 0 and prev >= 0:
                    x = x + sigma * noise()
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"IDiff-Face sampling produced NaN or inf latents (seeds {seeds[:5].tolist()}, "
                                     f"dtype {self.dtype}); with float16 try generator.dtype=float32 or bfloat16")
        return x

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        """Latents -> uint8 RGB images at ``output_size`` (native: the training image size)."""
        assert self.decoder is not None
        pixels = self.decoder(latents.to(self.dtype)).float().clamp(-1, 1)
        # As the official save_image: (x + 1) / 2 in [0, 1], then * 255 + 0.5 truncated to uint8.
        arr = ((pixels + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = list(arr)
        size = self.cfg.output_size
        if size and size != out[0].shape[0]:
            out = [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.LANCZOS)) for im in out]
        return out

    def _eps(self, x: torch.Tensor, step: int, context: torch.Tensor) -> torch.Tensor:
        """Predicted noise at timestep ``step`` in float32; with ``guidance_scale`` the official CFG mix
        ``(1 - g) * eps(empty) + g * eps(identity)``."""
        assert self.diffusion is not None
        model = self.diffusion.eps_model
        t = torch.full((len(x),), step, device=x.device, dtype=torch.long)
        eps = model(x.to(self.dtype), t, context).float()
        g = self.cfg.guidance_scale
        if g is None:
            return eps
        return (1 - g) * model(x.to(self.dtype), t, None).float() + g * eps

