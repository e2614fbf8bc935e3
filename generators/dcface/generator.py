"""DCFace (Kim et al., CVPR 2023), the mixing stage: an ID image and a style image -> a 112x112 face.

Loads a released ``dcface_3x3.ckpt`` / ``dcface_5x5.ckpt`` (a PyTorch-Lightning checkpoint) without unpickling
anything but tensors (:mod:`facefoundry.generators.lightning_checkpoint`: its ``hyper_parameters`` hold OmegaConf
objects that ``torch.load(weights_only=True)`` refuses), and checks the state dict key by key:

* ``ema_model.averaged_model.*``: the UNet sampled with (``model.*`` with ``use_ema: false``), :mod:`.dcface_unet`;
* ``label_mapping.*``: the ID encoder (trained IR-50 + position table + scaler), :mod:`.dcface_encoders`;
* ``recognition_model.backbone.*``: the frozen AdaFace IR-50 whose block-2 features describe the style image;
* ``external_mapping.*``: the style head and the context adapter (S = 3 or 5 from ``pos_emb_0.0``);
* ``recognition_model.center.*``, ``recognition_model_eval.*`` and the unused UNet copy are present in the
  release and not needed for sampling; any other key is an error, as is any missing one.

Sampling as the official ``synthesis.py`` (``render_condition`` with ``DDIMPipeline``): the conditions are the ID
encoder's feature token (added to the time embedding) and the ID + style tokens (cross-attention context); DDIM
over ``steps`` timesteps ``(arange(steps) * (1000 // steps))[::-1]`` of the linear 1e-4..0.02 schedule, the
predicted x0 clipped to [-1, 1], ``eta`` 1.0 with fresh noise at every step, no guidance; output
``round(clamp(x / 2 + 0.5, 0, 1) * 255)``. Difference: the official script reseeds the global RNG once per batch
(with the batch's first label); here every image draws its initial noise and then each step's noise from a
``torch.Generator`` seeded with its own seed, so an image never depends on its batch.

Identities are ID images: the generator finds each identity's row of the ID set by its vector
(:meth:`IdSet.rows_for`). Each image's style is drawn from the bank by its seed (``style_sampling: random``) or
taken by image index (``list``); ``style_source`` and ``id_source`` record both per row.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from facefoundry.generators.base import (
    IDENTITY_INDEX,
    IDENTITY_VECTOR,
    IMAGE_INDEX,
    GenerationOutput,
    ModelFiles,
    Resources,
    check_batch,
    in_microbatches,
    resolve_device,
    resolve_dtype,
    state_dict_mismatch,
)
from facefoundry.generators.dcface.config import DCFaceConfig
from facefoundry.generators.dcface.encoders import IDEncoder, RecognitionEncoder, StyleHead
from facefoundry.generators.dcface.inputs import IdSet, ImageBank
from facefoundry.generators.dcface.spec import DCFaceSpec
from facefoundry.generators.dcface.unet import GMIX_ARCH, ADMArch, ADMUNet, adm_arch_from_state
from facefoundry.generators.lightning_checkpoint import CheckpointError as LightningCheckpointError
from facefoundry.generators.lightning_checkpoint import read_state_dict

ID_DIM = 512
ID_SET_HOW = "build the ID set with `facefoundry dcface-ids` (docs/models.md, DCFace)"
STYLE_BANK_HOW = "a folder of aligned 112x112 face images, or Parquet with an `image` column (docs/models.md, DCFace)"
TRAIN_TIMESTEPS = 1000
EMA_PREFIX, LIVE_PREFIX = "ema_model.averaged_model.", "model."
ID_PREFIX, STYLE_PREFIX, HEAD_PREFIX = "label_mapping.", "recognition_model.", "external_mapping."
UNUSED_PREFIXES = ("recognition_model.center.", "recognition_model_eval.")  # in the release, unused for sampling
_STAGE_FIRST_BLOCKS = (0, 3, 7, 21)  # IR-50: the first block of each stage (its width is the stage's)
_DOWNLOAD = ("download dcface_3x3.ckpt (or dcface_5x5.ckpt) from the Google Drive folder linked in the "
             "mk-minchul/dcface README (see `facefoundry models list`)")


class CheckpointNotFoundError(FileNotFoundError):
    """The checkpoint file is missing; the message names the path and where to get it."""


class CheckpointError(ValueError):
    """The checkpoint is unreadable or does not hold the DCFace networks (the message names the keys)."""


@dataclass(frozen=True)
class DCFaceArch:
    """What a checkpoint's shapes say: UNet width, context, style grid S and the IR stage widths."""

    unet: ADMArch
    spatial_dim: int
    id_depths: tuple[int, ...]
    style_depths: tuple[int, ...]


def _depths(state: dict[str, torch.Tensor], prefix: str) -> tuple[int, ...]:
    return tuple(int(state[f"{prefix}body.{i}.res_layer.1.weight"].shape[0]) for i in _STAGE_FIRST_BLOCKS)


def arch_from_state(state: dict[str, torch.Tensor], unet_prefix: str) -> DCFaceArch:
    """The architecture of a DCFace state dict (official widths for the release; tiny builds are narrower)."""
    try:
        unet = adm_arch_from_state(state, unet_prefix, image_size=GMIX_ARCH.image_size,
                                   skip_downsample_level=GMIX_ARCH.skip_downsample_level,
                                   context_channels=int(state[f"{HEAD_PREFIX}cross_attn_adapter.weight"].shape[0]))
        tokens = int(state[f"{HEAD_PREFIX}pos_emb_0.0"].shape[0])
        id_depths = _depths(state, f"{ID_PREFIX}backbone.backbone.")
        style_depths = _depths(state, f"{STYLE_PREFIX}backbone.")
    except KeyError as exc:
        raise CheckpointError(f"not a DCFace state dict: no {exc.args[0]!r}") from None
    side = round((tokens - 1) ** 0.5)
    if side * side != tokens - 1:
        raise CheckpointError(f"{HEAD_PREFIX}pos_emb_0.0 has {tokens} rows; expected 1 + S*S (S = 3 or 5)")
    return DCFaceArch(unet, side, id_depths, style_depths)


class DCFaceNetworks(torch.nn.Module):
    """The four networks sampling needs, built from a :class:`DCFaceArch`."""

    def __init__(self, arch: DCFaceArch):
        super().__init__()
        self.arch = arch
        self.unet = ADMUNet(arch.unet)
        self.id_encoder = IDEncoder(arch.id_depths)
        self.style_encoder = RecognitionEncoder(50, (2,), arch.style_depths)
        self.style_head = StyleHead(arch.spatial_dim, in_channels=arch.style_depths[0], out_channel=arch.id_depths[-1],
                                    context_channels=arch.unet.context_channels)

    def prefixed_keys(self, unet_prefix: str) -> dict[str, tuple[torch.nn.Module, str]]:
        """Checkpoint key -> (module, its own key) for every tensor the networks hold."""
        out = {}
        for module, prefix in ((self.unet, unet_prefix), (self.id_encoder, ID_PREFIX),
                               (self.style_encoder, STYLE_PREFIX), (self.style_head, HEAD_PREFIX)):
            out |= {prefix + k: (module, k) for k in module.state_dict()}
        return out

    def conditions(self, id_images: torch.Tensor, style_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stylemod [B, 512], cross-attention context [B, 1024, L]) of RGB images in [-1, 1], as conditioner.py."""
        stylemod, id_tokens = self.id_encoder(id_images)
        _, spatials = self.style_encoder(style_images)
        return stylemod, self.style_head.condition(id_tokens, self.style_head(spatials))


def load_networks(path: Path, use_ema: bool = True) -> DCFaceNetworks:
    """The networks of a DCFace Lightning checkpoint, every needed key present with its shape, nothing unknown."""
    if not path.is_file():
        raise CheckpointNotFoundError(f"DCFace checkpoint {path} does not exist — {_DOWNLOAD}")
    try:
        state = read_state_dict(path)
    except LightningCheckpointError as exc:
        raise CheckpointError(str(exc)) from exc
    unet_prefix, other_unet = (EMA_PREFIX, LIVE_PREFIX) if use_ema else (LIVE_PREFIX, EMA_PREFIX)
    nets = DCFaceNetworks(arch_from_state(state, unet_prefix)).to("meta")
    targets = nets.prefixed_keys(unet_prefix)
    ignored = (other_unet, *UNUSED_PREFIXES)
    needed = {k: v for k, v in state.items() if not k.startswith(ignored)}
    own_states = {m: m.state_dict() for m in (nets.unet, nets.id_encoder, nets.style_encoder, nets.style_head)}
    problem = state_dict_mismatch(needed, {k: own_states[m][own] for k, (m, own) in targets.items()})
    if problem is not None:
        raise CheckpointError(f"{path} does not match the DCFace networks ({len(targets)} keys used, "
                              f"{len(state) - len(needed)} ignored under {', '.join(ignored)}): {problem}")
    for module in own_states:
        own = {own: needed[k] for k, (m, own) in targets.items() if m is module}
        module.load_state_dict(own, strict=True, assign=True)
    return nets


def ddim_schedule(steps: int) -> tuple[list[int], torch.Tensor]:
    """The official DDIM timesteps (``(arange(steps) * (1000 // steps))[::-1]``) and the float32 cumulative alphas
    of the linear 1e-4..0.02 schedule."""
    betas = np.linspace(1e-4, 0.02, TRAIN_TIMESTEPS, dtype=np.float32)
    alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - betas, axis=0))
    stride = TRAIN_TIMESTEPS // steps
    return [int(t) for t in (np.arange(steps) * stride)[::-1]], alphas_cumprod


def to_model_input(images: list[np.ndarray], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 RGB HxWx3 -> [-1, 1] NCHW (``ToTensor`` + ``Normalize(0.5, 0.5)``)."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return ((batch - 0.5) / 0.5).to(device, dtype)


class DCFaceGenerator:
    """Identities (rows of an ID set) + seeds -> 112x112 RGB faces in the style of images from a bank."""

    name = "dcface"
    resources = Resources(num_cpus=1.0)  # + ray.generator_gpus GPUs (pipelines.stages.GenerateStage)

    def __init__(self, cfg: DCFaceConfig, checkpoint: str | None = None, id_set: str | None = None,
                 style_bank: str | None = None):
        self.cfg = cfg
        self.checkpoint = Path(str(checkpoint or cfg.checkpoint)).expanduser()
        self.id_set_path, self.style_bank_path = id_set or cfg.id_set, style_bank or cfg.style_bank
        self.device: torch.device | None = None
        self.dtype = torch.float32
        self.nets: DCFaceNetworks | None = None
        self.id_set: IdSet | None = None
        self.styles: ImageBank | None = None
        self._id_cache: OrderedDict[int, np.ndarray] = OrderedDict()

    @classmethod
    def model_files(cls, cfg: DCFaceConfig, model: str | None = None, base_model: str | None = None,
                    extra: str | None = None) -> list[ModelFiles]:
        """The checkpoint (``model``), the ID set (``base_model``) and the style bank (``extra``): local paths."""
        def file(path: str, name: str | None, role: str, how: str | None = None) -> ModelFiles:
            p = Path(path).expanduser()
            return ModelFiles(str(p.parent), ((p.name,),), name, None, role, hub=False, how=how)

        bank = Path(str(extra or cfg.style_bank)).expanduser()
        return [file(str(model or cfg.checkpoint), "dcface", "generator.checkpoint"),
                file(str(base_model or cfg.id_set), None, "generator.id_set", ID_SET_HOW),
                file(str(bank), None, "generator.style_bank", STYLE_BANK_HOW) if bank.is_file()
                else ModelFiles(str(bank), (), None, None, "generator.style_bank", hub=False, how=STYLE_BANK_HOW)]

    @classmethod
    def from_paths(cls, cfg: DCFaceConfig, model: str | None = None, base_model: str | None = None,
                   extra: str | None = None) -> DCFaceGenerator:
        """The generator for the pipeline's paths (checkpoint, ID set, style bank)."""
        return cls(cfg, model, base_model, extra)

    def extra_fields(self) -> list[pa.Field]:
        """``style_source`` (the style image: bank file or Parquet row) and ``id_source`` (the ID image's origin)."""
        return [pa.field("style_source", pa.string()), pa.field("id_source", pa.string())]

    # ------------------------------------------------------------------ loading
    def setup(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Open the ID set and the style bank (fail fast on bad inputs), then load the networks strictly."""
        if self.id_set_path is None or self.style_bank_path is None:
            raise ValueError("the dcface generator needs generator.id_set and generator.style_bank")
        self.id_set, self.styles = IdSet(self.id_set_path), ImageBank(self.style_bank_path)
        self.set_networks(load_networks(self.checkpoint, self.cfg.use_ema), device, dtype)

    def set_networks(self, nets: DCFaceNetworks, device: str | torch.device | None = None,
                     dtype: torch.dtype | None = None) -> None:
        """Use already-built networks (what :meth:`setup` does after loading)."""
        self.device = resolve_device(device if device is not None else self.cfg.device)
        self.dtype = resolve_dtype(dtype if dtype is not None else self.cfg.dtype, self.device,
                                   DCFaceSpec.precision_on_cuda)
        self.nets = nets.to(self.device, self.dtype).eval().requires_grad_(False)

    # ------------------------------------------------------------------ inputs
    def _rows(self, vectors: np.ndarray, variations: list[dict[str, Any]] | None) -> np.ndarray:
        """Each image's ID-set row: by identity vector; a tiny build (random ID set) by identity index."""
        assert self.id_set is not None
        if self.cfg.tiny:
            idx = [int((v or {}).get(IDENTITY_INDEX, i)) for i, v in enumerate(variations or [None] * len(vectors))]
            return np.asarray(idx) % len(self.id_set)
        own = np.stack([(v or {}).get(IDENTITY_VECTOR, vectors[i]) for i, v in enumerate(variations)]) \
            if variations else vectors
        return self.id_set.rows_for(np.asarray(own, np.float32))

    def style_indices(self, seeds: np.ndarray, variations: list[dict[str, Any]] | None) -> np.ndarray:
        """The bank image of each image: drawn from its seed (``random``) or its image index (``list``)."""
        assert self.styles is not None
        n = len(self.styles)
        if self.cfg.style_sampling == "list":
            return np.asarray([int((v or {}).get(IMAGE_INDEX, i)) % n
                               for i, v in enumerate(variations or [None] * len(seeds))])
        # a stream of its own (not the torch noise of the same seed)
        return np.asarray([np.random.default_rng([int(s), 1]).integers(n) for s in seeds])

    def _id_image(self, row: int) -> np.ndarray:
        assert self.id_set is not None
        if row not in self._id_cache:
            self._id_cache[row] = self.id_set.array(row)
            if len(self._id_cache) > 1024:
                self._id_cache.popitem(last=False)
        return self._id_cache[row]

    # ------------------------------------------------------------------ generation
    def generate(self, vectors: np.ndarray, seeds: np.ndarray,
                 variations: list[dict[str, Any]] | None = None) -> list[np.ndarray]:
        """One 112x112x3 uint8 RGB image per (identity, seed)."""
        return self.generate_output(vectors, seeds, variations).images

    def generate_output(self, vectors: np.ndarray, seeds: np.ndarray,
                        variations: list[dict[str, Any]] | None = None) -> GenerationOutput:
        """The images with ``style_source`` and ``id_source`` per image."""
        arr, seeds = check_batch(vectors, seeds, variations, ID_DIM)
        if self.nets is None:
            self.setup()
        assert self.id_set is not None and self.styles is not None
        rows, styles = self._rows(arr, variations), self.style_indices(seeds, variations)
        images = in_microbatches(len(arr), self.cfg.batch_size,
                                 lambda i, j: self.render([self._id_image(r) for r in rows[i:j]],
                                                          [self.styles.array(s) for s in styles[i:j]], seeds[i:j]),
                                 self.device)
        return GenerationOutput(images, {"style_source": [self.styles.name(s) for s in styles],
                                         "id_source": [self.id_set.sources[r] for r in rows]})

    @torch.inference_mode()
    def render(self, id_images: list[np.ndarray], style_images: list[np.ndarray], seeds: np.ndarray
               ) -> list[np.ndarray]:
        """Images of (ID image, style image, seed) triples: conditions, DDIM, uint8."""
        assert self.nets is not None and self.device is not None
        stylemod, context = self.nets.conditions(to_model_input(id_images, self.device, self.dtype),
                                                 to_model_input(style_images, self.device, self.dtype))
        x = self.sample(stylemod, context, seeds)
        pixels = (x.float() / 2 + 0.5).clamp(0, 1)
        out = list((pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        size = self.cfg.output_size
        if size and size != out[0].shape[0]:
            out = [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.LANCZOS)) for im in out]
        return out

    def sample(self, stylemod: torch.Tensor, context: torch.Tensor, seeds: np.ndarray) -> torch.Tensor:
        """DDIM as the released sampler (clipped x0, ``eta`` noise at every step) from per-image seeded noise."""
        assert self.nets is not None
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        size = self.nets.arch.unet.image_size

        def noise() -> torch.Tensor:
            return torch.stack([torch.randn((3, size, size), generator=g) for g in gens]).to(self.device)

        timesteps, alphas_cumprod = ddim_schedule(self.cfg.steps)
        stride, eta = TRAIN_TIMESTEPS // self.cfg.steps, self.cfg.eta
        x = noise()
        for t in timesteps:
            eps = self.nets.unet(x.to(self.dtype), torch.tensor([t], device=self.device), stylemod, context)
            eps = eps[:, :3].float()
            a_t = alphas_cumprod[t]
            a_prev = alphas_cumprod[t - stride] if t - stride >= 0 else torch.tensor(1.0)
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
            if eta > 0:
                x = x + std * noise()
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"DCFace sampling produced NaN or inf (seeds {seeds[:5].tolist()}, dtype "
                                     f"{self.dtype}); with float16 try generator.dtype=float32 or bfloat16")
        return x
