"""What the rest of facefoundry knows about a generator, declared once in its folder (``generators/<name>/spec.py``).

The pipeline, the config, the card, the licence chain, the judge-independence check and ``publish`` read a
generator's facts from its :class:`GeneratorSpec` and never branch on ``generator.kind``: a new generator is its
folder (config section, class, networks, tiny build, spec), one line in :mod:`facefoundry.generators.registry`, a
preset and its docs. A spec module imports no model code (the config is built from the specs at import time).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from facefoundry.sections import AttributesConfig

# What shard metadata says instead of a model id when the weights were built in code.
TINY_WEIGHTS = "tiny-random (built in code)"
UNPINNED = "not pinned (latest at run time)"  # the card's word for a Hub model without a revision
# Latent diffusion (Stable Diffusion), cited by every generator built on an SD base.
LDM_CITATION = """@inproceedings{rombach2022ldm,
  title = {High-Resolution Image Synthesis with Latent Diffusion Models},
  author = {Rombach, Robin and Blattmann, Andreas and Lorenz, Dominik and Esser, Patrick and Ommer, Bj{\\"o}rn},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2022}
}"""


def hub_id(value: str | None, default: str) -> str:
    """A Hub id as given; a local folder is named by its last component (no local paths in cards)."""
    if not value:
        return default
    if os.path.isabs(value) or value.startswith((".", "~")) or value.count("/") != 1:
        return f"{Path(value).name} (local copy, {default} layout)"
    return value


@dataclass(frozen=True)
class ModelPaths:
    """Where the generator loads from: Hub ids or local folders (tiny builds live under ``<out>/models``); and,
    in :attr:`attributes`, the attribute annotator's section with its files resolved.

    Arc2Face: ``model`` holds arc2face/ and encoder/, ``base_model`` the SD-1.5 parts; Vec2Face: ``model`` is the
    checkpoint (Hub id, folder or file) and ``base_model`` is unused; IDiff-Face: ``model`` is the released model
    folder and ``base_model`` the autoencoder folder; DCFace: ``model`` is the checkpoint, ``base_model`` the ID set
    and ``style_bank`` the style images."""

    model: str
    base_model: str | None = None
    lcm_lora: str | None = None  # Arc2Face fast mode: the LCM-LoRA (tiny builds); None = generator.lcm_lora
    face_models: str | None = None  # Vec2Face AttrOP's models (tiny builds); None = generator.attrop.models
    style_bank: str | None = None  # DCFace's style images (tiny builds); None = generator.style_bank
    # ID-Booth: the folder its fine-tuning stage fills with one LoRA per identity (in the run's local folder), the
    # people folder and the class images (tiny builds: fixtures from package photos; None = the config's).
    loras: str | None = None
    people: str | None = None
    class_data: str | None = None
    # The attributes section the annotator loads, its tiny build's files in it (filters.tiny_attributes; set by
    # pipelines.runner.resolve_model_paths); None = the config's own section, which must not be tiny.
    attributes: AttributesConfig | None = None

    @property
    def extra(self) -> str | None:
        """The generator's third source (``from_paths``/``model_files``' ``extra``): whichever is set."""
        return self.loras or self.lcm_lora or self.face_models or self.style_bank


@dataclass(frozen=True)
class UpstreamUse:
    """One upstream model a run used: its licence record (``facefoundry.upstream.UPSTREAM`` key), its role in the
    run and where it came from (a Hub id or a file name, never a local path)."""

    key: str
    role: str
    source: str
    revision: str | None = None


@dataclass(frozen=True)
class PrepJob:
    """Work a generator needs done before it generates (ID-Booth: class images, then one fine-tuning per person).

    The pipeline runs it on a Ray worker with the generator's resources: ``function`` (``"module:name"``) is called
    with ``kwargs`` (plain, picklable values). It must be resumable: a rerun after a kill finishes what is left."""

    name: str
    function: str
    kwargs: dict[str, Any]


class GeneratorSpec:
    """A generator's self-description. Subclasses set the class attributes and override what differs."""

    kind: ClassVar[str]  # the value of ``generator.kind``
    display_name: ClassVar[str]  # as the card and logs name it
    config: ClassVar[type]  # the config section (a pydantic model with ``kind: Literal[kind]``)
    generator_class: ClassVar[str]  # "module:Class" implementing generators.base.Generator, imported on use
    native_size: ClassVar[int | None] = None  # pixels of a generated image (None: set by the config)
    # Published file names of the encoders that define the generator's identity space or condition it: a judge
    # must not be one of them (evaluate.judge.check_independent).
    conditioning_files: ClassVar[tuple[str, ...]] = ()
    citations: ClassVar[dict[str, str]] = {}  # BibTeX of the methods a real (not tiny) run uses, in order
    # Config keys added after runs existed, with the value meaning "as before" (left out of the config hash there).
    later_keys: ClassVar[dict[str, Any]] = {}
    rehearsal: ClassVar[bool] = False  # a pipeline rehearsal (noise, never a dataset): never published
    renders: ClassVar[bool] = True  # False: the run's rows are copied from other runs (merged), never generated
    real_people: ClassVar[bool] = False  # the identities are real (consenting) people, not synthetic ones
    identities_are: ClassVar[str] = "random vectors in a face-recognition embedding space"
    # What varies one identity's images besides seeds and vector noise (the card's limitations), if anything.
    variation_source: ClassVar[str | None] = None
    tiny_upstream: ClassVar[str] = "tiny"  # licence record of a tiny (random-weight) build
    # What ``dtype: auto`` means on CUDA: the precision the official code samples in (CPU: always float32).
    precision_on_cuda: ClassVar[str] = "float16"

    def identity_space_error(self, gen: Any, identities: Any) -> str | None:
        """Why ``identities`` (the config section) is not this generator's identity space; None when it is."""
        return None

    def conditioning_names(self, gen: Any) -> set[str]:
        """File names a judge must not have for a run with generator config ``gen``."""
        return set(self.conditioning_files)

    def model_paths(self, gen: Any, models_dir: Path, seed: int, identities: int) -> ModelPaths:
        """Hub ids / folders from the config, or a tiny random-weight build in the official layout under
        ``models_dir`` (seeded by the run seed; ``identities`` for builds that need one input per identity)."""
        raise NotImplementedError

    def preparation(self, gen: Any, paths: ModelPaths, seed: int, identities: int) -> list[list[PrepJob]]:
        """Jobs to run on Ray before generation, phase by phase (a phase's jobs in parallel); none by default. The
        driver calls this before Ray starts, so a bad input fails here in one line."""
        return []

    def shard_metadata(self, gen: Any) -> dict[str, Any]:
        """The models and sampling settings every shard records (Hub ids or folder names, never local paths: a
        shard's bytes must not depend on where the run folder or the weights live)."""
        raise NotImplementedError

    def upstream(self, gen: Any) -> list[UpstreamUse]:
        """The upstream models of a run with published weights (tiny builds: :meth:`components`)."""
        return []

    def components(self, gen: Any) -> list[UpstreamUse]:
        """The upstream models a run with generator config ``gen`` used."""
        if gen.tiny:
            return [UpstreamUse(self.tiny_upstream, "generator", "facefoundry")]
        return self.upstream(gen)

    def citation_keys(self, gen: Any) -> list[str]:
        """The keys of :attr:`citations` the run's methods call for (none for a tiny build)."""
        return [] if gen.tiny else list(self.citations)

    def output_size(self, gen: Any) -> int | None:
        """Pixels of a stored image: ``generator.output_size`` when set, else the native size."""
        return getattr(gen, "output_size", None) or self.native_size

    def made_by(self, gen: Any) -> str:
        """What made a tooling-only (tiny) run's images, for the card."""
        return "a tiny random-weight test model (the images are noise, not faces)"

    def card_lines(self, gen: Any) -> list[str]:
        """The card's 'Image generation' lines: which model, and how each image is sampled."""
        model = (f"- Generator: tiny random weights in the official {self.display_name} on-disk layout; no published "
                 "weights were used." if gen.tiny else self.model_line(gen))
        return [model, self.sampling_line(gen)]

    def model_line(self, gen: Any) -> str:
        """The card line naming the published model a run used."""
        raise NotImplementedError

    def sampling_line(self, gen: Any) -> str:
        """The card line saying how each image is sampled and what its seed draws."""
        raise NotImplementedError

    def limitations(self, gen: Any) -> list[str]:
        """Card limitation lines particular to this generator's published-weights runs."""
        return []

    def card_sections(self, gen: Any, run_dir: Path) -> list[str]:
        """Card sections of this generator's own (markdown, after 'Image generation'), from the run folder."""
        return []

    def source_configs(self, gen: Any) -> list[dict[str, Any]]:
        """The configs of the runs whose rows this run holds instead of generating them (a merged dataset: its
        source runs, in label order); none for a generator that renders images."""
        return []
