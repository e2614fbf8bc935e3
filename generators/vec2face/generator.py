"""Vec2Face: one forward pass from a raw 512-d ArcFace-R100-Glint360K feature (norm ~22) to a 112x112 face.

Loads the published generator unchanged (``BooBooWu/Vec2Face``, ``weights/vec2face_generator.pth``,
entry ``model_vec2face``) with ``torch.load(weights_only=True)``; the only global that may be allowed
is ``argparse.Namespace`` (training checkpoints store their argparse arguments), and only inside a
``safe_globals`` context. Anything else that needs unpickling is refused with the offending names.

Variation: the official forward draws a random token mask every call. Here each image draws its own
mask from a ``torch.Generator`` seeded with its seed: first a uniform number that the truncated
normal's inverse CDF turns into the mask ratio, then 49 uniform noise values that rank the tokens
(the official rule: the lowest ``ceil(49 * ratio)`` are masked, the lowest ``ceil(49 * min)`` dropped).
An image therefore does not depend on its batch, and the drawn mask is recorded (``last_info``) as
49 codes (0 keep, 1 masked, 2 dropped) that can be passed back as ``variations[i]["token_mask"]``.
The sigma-mixture perturbation of the identity vector happens before this, in
:mod:`facefoundry.identities.variation`.
"""

from __future__ import annotations

import argparse
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from facefoundry.generators.base import (
    IDENTITY_VECTOR,
    IMAGE_INDEX,
    GenerationOutput,
    ModelFiles,
    Resources,
    check_batch,
    in_microbatches,
    resolve_device,
    state_dict_mismatch,
)
from facefoundry.generators.vec2face.config import Vec2FaceConfig
from facefoundry.generators.vec2face.model import (
    BASE_ARCH,
    DROPPED,
    KEEP,
    MASKED,
    TINY_ARCH,
    Vec2FaceArch,
    Vec2FaceModel,
    build_model,
    num_dropped_tokens,
    num_masked_tokens,
    token_mask_from_noise,
)
from facefoundry.models import hub_repo

ID_DIM = 512
# The only non-tensor global a published Vec2Face training checkpoint needs (its ``args`` entry).
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
_LOCAL_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


# The generator's settings are the run config's ``generator`` section itself (one definition of each field,
# its default and its bounds); the old name stays for callers that build settings by hand.
Vec2FaceSettings = Vec2FaceConfig


class CheckpointNotFoundError(FileNotFoundError):
    """The checkpoint file is missing or could not be downloaded; the message names the path and the fix."""


class CheckpointError(ValueError):
    """The checkpoint exists but is not a usable Vec2Face generator checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint needs globals outside the allowlist to unpickle; it was not loaded."""


# ----------------------------------------------------------------------------- token-mask helpers
def token_mask_to_str(codes: np.ndarray | torch.Tensor) -> str:
    """49 codes -> a 49-character string of digits (compact to store, e.g. ``"0120..."``)."""
    return "".join(str(int(c)) for c in np.asarray(codes).reshape(-1))


def parse_token_mask(value: Any, num_tokens: int = 49) -> np.ndarray:
    """A token mask given as a digit string or a sequence of codes -> int8 array of ``num_tokens``."""
    arr = np.array([int(c) for c in value], dtype=np.int8) if isinstance(value, str) else np.asarray(value)
    if arr.shape != (num_tokens,) or not np.isin(arr, (KEEP, MASKED, DROPPED)).all():
        raise ValueError(f"token_mask must be {num_tokens} codes in {{0, 1, 2}}, got {value!r}")
    return arr.astype(np.int8)


def truncnorm_ppf(u: float, lo: float, hi: float, mu: float, std: float) -> float:
    """Inverse CDF of N(mu, std) truncated to [lo, hi], in float64."""
    a = torch.tensor((lo - mu) / std, dtype=torch.float64)
    b = torch.tensor((hi - mu) / std, dtype=torch.float64)
    fa, fb = torch.special.ndtr(a), torch.special.ndtr(b)
    x = mu + std * torch.special.ndtri(fa + torch.as_tensor(u, dtype=torch.float64) * (fb - fa))
    return float(x.clamp(lo, hi))


def draw_image_mask(seed: int, s: Any, num_tokens: int = 49) -> tuple[float, torch.Tensor]:
    """(mask ratio, token noise) of one image: a ``torch.Generator`` seeded with ``seed``, ratio drawn first."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    noise = torch.rand(num_tokens, generator=gen)
    return truncnorm_ppf(u, s.mask_ratio_min, s.mask_ratio_max, s.mask_ratio_mu, s.mask_ratio_std), noise


# ----------------------------------------------------------------------------- loading
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with only :data:`SAFE_GLOBALS` allowed; memory-mapped when possible."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"Vec2Face checkpoint {path} does not exist")
    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format (torch >= 1.6 default)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        message = str(exc)
        if not (isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in message):
            raise CheckpointError(f"cannot read Vec2Face checkpoint {path}: {exc}") from exc
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
        names: list[str] = []
        if mmap:
            try:
                names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if n not in allowed]
            except Exception:  # noqa: BLE001 - the list is a courtesy; the refusal stands without it
                names = []
        detail = next((line.strip() for line in message.splitlines() if "Unsupported global" in line), "")
        raise UnsafeCheckpointError(
            f"refusing to unpickle {path}: it needs globals outside the allowlist ({', '.join(names) or detail}). "
            f"Only tensors, plain containers and {', '.join(sorted(allowed))} are loaded from a checkpoint; "
            "if you trust the file, convert it to a plain state dict with a trusted tool."
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict with 'model_vec2face'")
    return obj


def check_state_dict(state: Any, model: Vec2FaceModel, source: str) -> None:
    """Raise :class:`CheckpointError` naming a few missing/unexpected keys and shape mismatches."""
    problem = state_dict_mismatch(state, model.state_dict())
    if problem is None:
        return
    if problem.startswith("not a state dict"):
        raise CheckpointError(f"{source} is {problem}")
    hint = " — is it a tiny build loaded as the full model (or the reverse)? check generator.tiny" if (
        "shape mismatches" in problem and "module." not in problem) else ""
    raise CheckpointError(f"{source} does not match the Vec2Face architecture ({len(model.state_dict())} keys): "
                          f"{problem}{hint}")


class Vec2FaceGenerator:
    """Raw ArcFace-R100-Glint360K vectors (512-d, norm ~22) + seeds -> 112x112 RGB faces."""

    name = "vec2face"
    resources = Resources(num_cpus=1.0)  # + ray.generator_gpus GPUs (pipelines.stages.GenerateStage)

    def __init__(self, cfg: Any = None, checkpoint_path: str | Path | None = None,
                 arch: Vec2FaceArch | None = None, face_models: str | Path | None = None):
        self.cfg = cfg if cfg is not None else Vec2FaceConfig()
        self.checkpoint_path = str(checkpoint_path) if checkpoint_path is not None else None
        attrop = getattr(self.cfg, "attrop", None)
        self.attrop_cfg = attrop if attrop is not None and attrop.enabled else None
        self.face_models = str(face_models) if face_models else (attrop.models if attrop is not None else None)
        self.attrop = None  # generators.attrop.AttrOp, built at setup when enabled
        self.arch = arch or (TINY_ARCH if getattr(self.cfg, "tiny", False) else BASE_ARCH)
        self.device: torch.device | None = None
        self.dtype = torch.float32
        self.model: Vec2FaceModel | None = None
        self.last_info: list[dict[str, Any]] = []
        self.num_dropped = num_dropped_tokens(self.cfg.mask_ratio_min, self.arch.num_tokens)
        if not 0 < self.cfg.mask_ratio_min <= self.cfg.mask_ratio_max <= 1 or self.cfg.mask_ratio_std <= 0:
            raise ValueError("need 0 < mask_ratio_min <= mask_ratio_max <= 1 and mask_ratio_std > 0")

    @classmethod
    def model_files(cls, cfg: Any, model: str | None = None, base_model: str | None = None,
                    extra: str | None = None) -> list[ModelFiles]:
        """What :meth:`setup` loads: the checkpoint (``model``: Hub id, folder or file) and, with AttrOP,
        its face models (``extra``: Hub id or folder); ``base_model`` is unused."""
        ref = str(model or cfg.checkpoint)
        if Path(ref).expanduser().is_file() or ref.endswith(_LOCAL_SUFFIXES):  # a checkpoint file itself
            folder, name = str(Path(ref).expanduser().parent), Path(ref).name
            files = [ModelFiles(folder, ((name,),), "vec2face", None, "generator.checkpoint")]
        else:
            files = [ModelFiles(ref, ((cfg.filename,),), "vec2face", cfg.revision, "generator.checkpoint")]
        if cfg.attrop.enabled:
            from facefoundry.generators.vec2face.attrop import needed_files

            files.append(ModelFiles(str(extra or cfg.attrop.models), tuple((f,) for f in needed_files(cfg.attrop)),
                                    "vec2face-face-models", None, "generator.attrop.models"))
        return files

    @classmethod
    def from_paths(cls, cfg: Any, model: str | None = None, base_model: str | None = None,
                   extra: str | None = None) -> Vec2FaceGenerator:
        """The generator for the pipeline's model paths (``extra``: AttrOP's face models)."""
        return cls(cfg, None if model in (None, cfg.checkpoint) else model, face_models=extra)

    def extra_fields(self) -> list[pa.Field]:
        """``mask_ratio`` and ``token_mask`` (so an image can be regenerated alone), and with AttrOP what it
        did to each image (``attrop_*``)."""
        fields = [pa.field("mask_ratio", pa.float32()), pa.field("token_mask", pa.string())]
        if self.attrop_cfg is not None:
            from facefoundry.generators.vec2face.attrop import OUTCOME_FIELDS

            fields += OUTCOME_FIELDS
        return fields

    # ------------------------------------------------------------------ loading
    def resolve_checkpoint(self) -> Path:
        """A local checkpoint file: the explicit path, a local file/folder, or a Hub download."""
        cfg = self.cfg
        ref = self.checkpoint_path or str(cfg.checkpoint)
        path = Path(ref).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            if (path / cfg.filename).is_file():
                return path / cfg.filename
            raise CheckpointNotFoundError(f"expected {path / cfg.filename} — download {cfg.filename} from "
                                          f"{hub_repo('vec2face')} into {path} or set generator.checkpoint")
        looks_local = (self.checkpoint_path is not None or path.is_absolute() or ref.startswith((".", "~"))
                       or ref.count("/") != 1 or ref.endswith(_LOCAL_SUFFIXES))
        if looks_local:
            raise CheckpointNotFoundError(f"Vec2Face checkpoint {path} does not exist — download "
                                          f"{cfg.filename} from {hub_repo('vec2face')} or set generator.checkpoint")
        from facefoundry.models import ModelFileMissing, require_file

        try:  # HF cache, downloading when HF_HUB_OFFLINE allows; the error names `facefoundry models fetch`
            return require_file(ref, cfg.filename, revision=cfg.revision)
        except ModelFileMissing as exc:
            raise CheckpointNotFoundError(str(exc)) from exc

    def setup(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Load the checkpoint (strict, all 349 keys) onto ``device`` in float32, once per worker."""
        want = dtype if dtype is not None else self.cfg.dtype
        if want not in (None, "auto", "float32", torch.float32):
            raise ValueError(f"Vec2Face runs in float32 only (the official model fails in fp16/fp64), got {want}")
        device = resolve_device(device if device is not None else self.cfg.device)
        path = self.resolve_checkpoint()
        ckpt = load_checkpoint(path)
        key = self.cfg.state_dict_key
        if key not in ckpt:
            raise CheckpointError(f"{path} has no {key!r} entry (top-level keys: {sorted(map(str, ckpt))[:10]})")
        state = ckpt[key]
        del ckpt  # optimizer/discriminator/EMA entries are never materialised (mmap)
        model = build_model(self.arch, device="meta")
        check_state_dict(state, model, f"{path}[{key!r}]")
        model.load_state_dict(state, strict=True, assign=True)
        self.model = model.float().to(device).eval().requires_grad_(False)
        self.device = device
        self._setup_attrop()

    def _setup_attrop(self) -> None:
        if self.attrop_cfg is not None and self.attrop is None:
            from facefoundry.generators.vec2face.attrop import AttrOp, load_scorers

            self.attrop = AttrOp(self.attrop_cfg, load_scorers(self.attrop_cfg, self.face_models, self.device))

    def set_model(self, model: Vec2FaceModel, device: str | torch.device | None = None) -> None:
        """Use an already-built model (what :meth:`setup` does after loading)."""
        self.device = resolve_device(device if device is not None else self.cfg.device)
        self.arch = model.arch
        self.num_dropped = num_dropped_tokens(self.cfg.mask_ratio_min, self.arch.num_tokens)
        self.model = model.float().to(self.device).eval().requires_grad_(False)
        self._setup_attrop()

    @property
    def image_size(self) -> int:
        return self.arch.image_size

    # ------------------------------------------------------------------ masks
    def token_masks(self, seeds: np.ndarray, variations: list[dict[str, Any]] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-image (mask ratios (N,), token-mask codes (N, 49) int8) from seeds and optional explicit masks.

        ``variations[i]`` may hold ``token_mask`` (49 codes or a digit string: used as is), ``mask``
        (49 bools: masked tokens; the dropped ones are the masked tokens with the lowest seeded noise) or
        ``mask_ratio`` (replaces the drawn ratio; the token order still comes from the seed).
        """
        n_tok, n_drop = self.arch.num_tokens, self.num_dropped
        ratios, codes = np.empty(len(seeds)), np.empty((len(seeds), n_tok), dtype=np.int8)
        for i, seed in enumerate(seeds):
            var = (variations[i] if variations is not None else None) or {}
            ratio, noise = draw_image_mask(int(seed), self.cfg, n_tok)
            if var.get("token_mask") is not None:
                row = parse_token_mask(var["token_mask"], n_tok)
                if int((row == DROPPED).sum()) != n_drop:
                    raise ValueError(f"image {i}: token_mask must drop exactly {n_drop} tokens "
                                     f"(ceil({n_tok} x mask_ratio_min)), got {int((row == DROPPED).sum())}")
                ratio = float((row != KEEP).sum()) / n_tok
            elif var.get("mask") is not None:
                mask = np.asarray(var["mask"], dtype=bool)
                if mask.shape != (n_tok,) or mask.sum() < n_drop:
                    raise ValueError(f"image {i}: mask must be {n_tok} booleans with at least {n_drop} True")
                order = [j for j in torch.argsort(noise, stable=True).tolist() if mask[j]]
                row = np.where(mask, MASKED, KEEP).astype(np.int8)
                row[order[:n_drop]] = DROPPED
                ratio = float(mask.sum()) / n_tok
            else:
                if var.get("mask_ratio") is not None:
                    ratio = float(var["mask_ratio"])
                    if not n_drop <= num_masked_tokens(ratio, n_tok) <= n_tok:
                        raise ValueError(f"image {i}: mask_ratio {ratio} must lie in "
                                         f"[{self.cfg.mask_ratio_min}, 1]")
                row = token_mask_from_noise(noise[None], ratio, self.cfg.mask_ratio_min)[0].numpy()
            ratios[i], codes[i] = ratio, row
        return ratios, codes

    # ------------------------------------------------------------------ generation
    def generate(self, vectors: np.ndarray, seeds: np.ndarray,
                 variations: list[dict[str, Any]] | None = None) -> list[np.ndarray]:
        """One 112x112x3 uint8 RGB image per (vector, seed); the masks used land in :attr:`last_info`."""
        images, self.last_info = self.generate_with_info(vectors, seeds, variations)
        return images

    def generate_output(self, vectors: np.ndarray, seeds: np.ndarray,
                        variations: list[dict[str, Any]] | None = None) -> GenerationOutput:
        """The images with their :meth:`extra_fields` columns (the mask, and AttrOP's outcome when enabled)."""
        images, self.last_info = self.generate_with_info(vectors, seeds, variations)
        return GenerationOutput(images, {f.name: [row[f.name] for row in self.last_info] for f in self.extra_fields()})

    def generate_with_info(self, vectors: np.ndarray, seeds: np.ndarray,
                           variations: list[dict[str, Any]] | None = None
                           ) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
        """Images plus, per image, ``{"mask_ratio": float, "token_mask": 49-digit str}``.

        Masks are drawn per image, then the forward runs in micro-batches of ``cfg.batch_size``; an
        out-of-memory error halves the micro-batch and retries (down to 1 image) before it propagates.
        """
        arr, seeds = check_batch(vectors, seeds, variations, ID_DIM)
        if self.model is None:
            self.setup()
        ratios, codes = self.token_masks(seeds, variations)
        info = [{"mask_ratio": float(r), "token_mask": token_mask_to_str(c)} for r, c in zip(ratios, codes,
                                                                                            strict=True)]
        if self.attrop is None:
            images = in_microbatches(len(arr), self.cfg.batch_size,
                                     lambda i, j: self._forward(arr[i:j], codes[i:j]), self.device)
            return images, info
        # AttrOP's target is the identity (``IDENTITY_VECTOR`` in the variation, else the input vector itself).
        targets = np.stack([(variations[i] or {}).get(IDENTITY_VECTOR, arr[i]) if variations else arr[i]
                            for i in range(len(arr))]).astype(np.float32)
        pose = self._pose_targets(variations, len(arr))
        done = in_microbatches(len(arr), self.cfg.batch_size,
                               lambda i, j: self._optimised(arr[i:j], codes[i:j], targets[i:j],
                                                            None if pose is None else (pose[0][i:j], pose[1][i:j])),
                               self.device)
        for row, (_, outcome) in zip(info, done, strict=True):
            row.update({f"attrop_{k}": v for k, v in vars(outcome).items()})
        return [image for image, _ in done], info

    def _pose_targets(self, variations: list[dict[str, Any]] | None, n: int
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """With ``attrop.pose_schedule``: each image's (target yaw, target pitch) from its ``IMAGE_INDEX``."""
        if self.attrop_cfg is None or self.attrop_cfg.pose_schedule is None:
            return None
        from facefoundry.generators.vec2face.attrop import pose_targets

        indices = []
        for i in range(n):
            var = (variations[i] if variations is not None else None) or {}
            if var.get(IMAGE_INDEX) is None:
                raise ValueError(f"image {i}: generator.attrop.pose_schedule needs each image's index within its "
                                 f"identity (variations[i][{IMAGE_INDEX!r}], which the pipeline sets); got none")
            indices.append(int(var[IMAGE_INDEX]))
        return pose_targets(self.attrop_cfg, indices)

    def _optimised(self, vectors: np.ndarray, codes: np.ndarray, targets: np.ndarray,
                   pose: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[tuple]:
        """AttrOP on one micro-batch, then the images of the optimised vectors, with each image's outcome
        (``pose``: the images' target yaw and pitch under a pose schedule)."""
        codes_t = torch.from_numpy(codes).to(self.device)
        start = torch.from_numpy(vectors).to(self.device, torch.float32)
        goal = torch.from_numpy(targets).to(self.device, torch.float32)
        moved, outcomes = [], []
        # One image per optimisation: Adam's first steps are +-lr whatever the gradient's size, so the
        # rounding differences of a batched backward would flip near-zero components and make an image
        # depend on its neighbours. Alone, each image's result is the same in every batch.
        for k in range(len(vectors)):
            x, (outcome,) = self.attrop.optimise(lambda x, rows, k=k: self.model(x, codes_t[k : k + 1]),
                                                 start[k : k + 1], goal[k : k + 1],
                                                 *((pose[0][k : k + 1], pose[1][k : k + 1]) if pose else ()))
            moved.append(x)
            outcomes.append(outcome)
        images = self._forward(torch.cat(moved).cpu().numpy(), codes)
        return list(zip(images, outcomes, strict=True))

    @torch.inference_mode()
    def _forward(self, vectors: np.ndarray, codes: np.ndarray) -> list[np.ndarray]:
        assert self.model is not None and self.device is not None
        rep = torch.from_numpy(vectors).to(self.device, torch.float32)
        pixels = self.model(rep, torch.from_numpy(codes).to(self.device))
        # As the official scripts: clip to [-1, 1], (x + 1) / 2 * 255 in float32, truncate to uint8.
        arr = pixels.clamp(-1, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        out = list(((arr + 1) / 2 * 255).astype(np.uint8))
        size = getattr(self.cfg, "output_size", None)
        if size and size != out[0].shape[0]:
            out = [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.LANCZOS)) for im in out]
        return out

