"""ID-Booth generation: Stable Diffusion 2.1 base with one person's LoRA, prompted as ``inference_ID-Booth.py``.

Per identity ``k`` the fine-tuning stage leaves ``<loras>/<k>/pytorch_lora_weights.safetensors`` (the official
format) and ``person.json`` (the person's label and the prompt's gender word). A batch may mix identities: the
images of each identity run together with its LoRA loaded through diffusers' ``load_lora_weights`` (as the official
inference script does), and are put back in batch order.

Each image's prompt and noise come from its seed only: the prompt is ``generator.prompt`` with the gender word
before "sks person", "portrait" turned into "side-portrait" on a coin flip, and ", <background> background" for a
background drawn from ``[none] + 2 x backgrounds`` (the official list of prompt combinations); the initial latents
and every DDPM step's noise come from the image's own ``torch.Generator``. DDPM scheduler from the base model's
scheduler config, ``steps`` steps, guidance ``guidance_scale``, the official negative prompt. Each row records its
``prompt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from facefoundry.generators.base import (
    DIFFUSERS_WEIGHTS,
    IDENTITY_INDEX,
    TRANSFORMERS_WEIGHTS,
    GenerationOutput,
    ModelFiles,
    Resources,
    check_batch,
    in_microbatches,
    resolve_device,
    resolve_dtype,
)
from facefoundry.generators.id_booth.config import IDBoothConfig
from facefoundry.generators.id_booth.training import LORA_FILE, check_lora_fits

PROMPT_COLUMN = "prompt"
PERSON_FILE = "person.json"  # beside each identity's LoRA: {"name": ..., "gender": ...}
PROMPT_STREAM = 1  # the seed's second stream: the prompt's draws (the first, torch's, draws the noise)
ID_DIM = 512
BASE_FILES = (("model_index.json",), ("scheduler/scheduler_config.json",), ("tokenizer/vocab.json",),
              tuple(f"text_encoder/{n}" for n in TRANSFORMERS_WEIGHTS), tuple(f"unet/{n}" for n in DIFFUSERS_WEIGHTS),
              tuple(f"vae/{n}" for n in DIFFUSERS_WEIGHTS))


def lora_folder(loras: str | Path, identity: int) -> Path:
    """Where identity ``identity``'s LoRA and ``person.json`` live under the run's LoRA folder."""
    return Path(loras) / f"{identity:06d}"


def image_prompt(cfg: IDBoothConfig, seed: int, gender: str | None) -> str:
    """The prompt of the image with seed ``seed`` (see the module docstring)."""
    rng = np.random.default_rng([int(seed) & 0x7FFFFFFFFFFFFFFF, PROMPT_STREAM])
    prompt = cfg.prompt
    if gender:
        prompt = prompt.replace(" sks person", f" {gender} sks person")
    if cfg.side_portrait and bool(rng.integers(2)):
        prompt = prompt.replace("portrait", "side-portrait")
    choices = [""] + [f"{b} background" for b in cfg.backgrounds] * 2
    background = choices[int(rng.integers(len(choices)))]
    return f"{prompt}, {background}" if background else prompt


class IDBoothGenerator:
    """Identity index + seed -> an image of that consenting person, from their fine-tuned LoRA."""

    name = "id-booth"
    resources = Resources(num_cpus=1.0)  # + ray.generator_gpus GPUs

    def __init__(self, cfg: IDBoothConfig, base_model: str | None = None, loras: str | None = None):
        self.cfg = cfg
        self.base = str(base_model or cfg.base_model)
        self.loras = loras
        self.pipe: Any = None
        self.device: torch.device | None = None
        self._loaded: int | None = None  # identity whose LoRA is in the pipeline
        self._people: dict[int, dict] = {}

    @classmethod
    def model_files(cls, cfg: IDBoothConfig, model: str | None = None, base_model: str | None = None,
                    extra: str | None = None) -> list[ModelFiles]:
        """The base pipeline's files (the LoRAs are made by the run's fine-tuning stage)."""
        return [ModelFiles(str(base_model or model or cfg.base_model), BASE_FILES, "sd21-base", cfg.revision,
                           "generator.base_model")]

    @classmethod
    def from_paths(cls, cfg: IDBoothConfig, model: str | None = None, base_model: str | None = None,
                   extra: str | None = None) -> IDBoothGenerator:
        """The generator for the pipeline's paths (``extra``: the run's LoRA folder)."""
        return cls(cfg, base_model or model, extra)

    def extra_fields(self) -> list[pa.Field]:
        """``prompt``: the prompt the image was generated from."""
        return [pa.field(PROMPT_COLUMN, pa.string())]

    def setup(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Load the base pipeline (``from_pretrained``) with the DDPM scheduler onto ``device``."""
        from diffusers import DDPMScheduler, StableDiffusionPipeline

        self.device = resolve_device(device if device is not None else self.cfg.device)
        dtype = resolve_dtype(dtype if dtype is not None else self.cfg.dtype, self.device, "float16")
        pipe = StableDiffusionPipeline.from_pretrained(self.base, dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.scheduler = DDPMScheduler.from_pretrained(self.base, subfolder="scheduler")
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self._loaded = None

    def person(self, identity: int) -> dict:
        """``person.json`` of identity ``identity`` (its label and gender word)."""
        if identity not in self._people:
            path = lora_folder(self._loras(), identity) / PERSON_FILE
            try:
                self._people[identity] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise FileNotFoundError(f"identity {identity} has no readable {path} ({exc}): its fine-tuning has "
                                        "not finished; rerun the run to finish it") from exc
        return self._people[identity]

    def _loras(self) -> Path:
        if self.loras is None:
            raise ValueError("the id-booth generator needs the run's LoRA folder (from_paths extra)")
        return Path(self.loras)

    def _use_lora(self, identity: int) -> None:
        if self._loaded == identity:
            return
        folder = lora_folder(self._loras(), identity)
        if not (folder / LORA_FILE).is_file():
            raise FileNotFoundError(f"identity {identity} has no LoRA {folder / LORA_FILE}: its fine-tuning has not "
                                    "finished; rerun the run to finish it")
        check_lora_fits(self.pipe.unet, folder / LORA_FILE)
        if self._loaded is not None:
            self.pipe.unload_lora_weights()
        self.pipe.load_lora_weights(str(folder), weight_name=LORA_FILE)
        self._loaded = identity

    def generate(self, vectors: np.ndarray, seeds: np.ndarray, variations: list[dict[str, Any]] | None = None
                 ) -> list[np.ndarray]:
        """One image per row (see :meth:`generate_output`)."""
        return self.generate_output(vectors, seeds, variations).images

    def generate_output(self, vectors: np.ndarray, seeds: np.ndarray, variations: list[dict[str, Any]] | None = None
                        ) -> GenerationOutput:
        """Images of the identities named by each variation's ``identity_index`` (the vectors are the people's
        embeddings, checked but not used by the diffusion model), with their prompts."""
        if self.pipe is None:
            self.setup()
        _, seeds = check_batch(vectors, seeds, variations, ID_DIM)
        if variations is None or any(IDENTITY_INDEX not in v for v in variations):
            raise ValueError("the id-booth generator needs each image's identity_index in its variation")
        identities = [int(v[IDENTITY_INDEX]) for v in variations]
        prompts = [image_prompt(self.cfg, int(s), self.person(k).get("gender")) for s, k in zip(seeds, identities,
                                                                                                 strict=True)]
        images: list[np.ndarray | None] = [None] * len(seeds)
        for identity in dict.fromkeys(identities):  # each identity's images together, in first-seen order
            rows = [i for i, k in enumerate(identities) if k == identity]
            self._use_lora(identity)

            def run(start: int, stop: int, rows: list[int] = rows) -> list[np.ndarray]:
                part = rows[start:stop]
                gens = [torch.Generator(self.device).manual_seed(int(seeds[i])) for i in part]
                out = self.pipe(prompt=[prompts[i] for i in part],
                                negative_prompt=[self.cfg.negative_prompt] * len(part), generator=gens,
                                num_inference_steps=self.cfg.steps, guidance_scale=self.cfg.guidance_scale,
                                height=self.cfg.resolution, width=self.cfg.resolution, output_type="np")
                return [np.round(img * 255).clip(0, 255).astype(np.uint8) for img in out.images]

            for i, image in zip(rows, in_microbatches(len(rows), self.cfg.batch_size, run, self.device), strict=True):
                images[i] = image
        return GenerationOutput([img for img in images if img is not None], {PROMPT_COLUMN: prompts})
