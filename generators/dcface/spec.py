"""DCFace's facts for the rest of facefoundry (see :mod:`facefoundry.generators.spec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facefoundry.generators.dcface.config import DCFaceConfig
from facefoundry.generators.spec import TINY_WEIGHTS, GeneratorSpec, ModelPaths, UpstreamUse

RELEASED_CHECKPOINTS = ("dcface_3x3.ckpt", "dcface_5x5.ckpt")


class DCFaceSpec(GeneratorSpec):
    kind = "dcface"
    display_name = "DCFace"
    config = DCFaceConfig
    generator_class = "facefoundry.generators.dcface.generator:DCFaceGenerator"
    native_size = 112
    # The ID encoder that conditions the mixing UNet (label_mapping.*) is stored in the released checkpoint.
    conditioning_files = RELEASED_CHECKPOINTS
    precision_on_cuda = "float32"  # the release's config: use_fp16: False
    citations = {
        "dcface": """@inproceedings{kim2023dcface,
  title = {DCFace: Synthetic Face Generation with Dual Condition Diffusion Model},
  author = {Kim, Minchul and Liu, Feng and Jain, Anil and Liu, Xiaoming},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2023}
}""",
    }
    identities_are = "synthetic ID images (each with its face-recognition embedding)"
    variation_source = "style images"

    def identity_space_error(self, gen: Any, identities: Any) -> str | None:
        if gen.tiny:
            return None
        if (identities.sampler != "from_file" or identities.file is None
                or Path(identities.file) != Path(gen.id_set)):
            return ("the dcface generator's identities are its ID set: set identities.sampler: from_file "
                    f"and identities.file: {gen.id_set} (generator.id_set)")
        if identities.space != "unit":
            return "identities.space must be 'unit' for the dcface generator (the ID set's unit vectors)"
        return None

    def conditioning_names(self, gen: Any) -> set[str]:
        return set(self.conditioning_files) | {Path(gen.checkpoint).name}

    def model_paths(self, gen: Any, models_dir: Path, seed: int, identities: int) -> ModelPaths:
        if not gen.tiny:
            return ModelPaths(gen.checkpoint, gen.id_set, style_bank=gen.style_bank)
        from facefoundry.generators.dcface.tiny import build_tiny_dcface

        checkpoint, id_set, bank = build_tiny_dcface(models_dir, seed=seed, count=identities)
        return ModelPaths(str(checkpoint), str(id_set), style_bank=str(bank))

    def shard_metadata(self, gen: Any) -> dict[str, Any]:
        return {"checkpoint": TINY_WEIGHTS if gen.tiny else Path(gen.checkpoint).name, "use_ema": gen.use_ema,
                "id_set": TINY_WEIGHTS if gen.tiny else Path(gen.id_set).name,
                "style_bank": TINY_WEIGHTS if gen.tiny else Path(gen.style_bank).name,
                "style_provenance": gen.style_provenance, "style_sampling": gen.style_sampling, "steps": gen.steps,
                "eta": gen.eta}

    def upstream(self, gen: Any) -> list[UpstreamUse]:
        return [UpstreamUse("dcface-weights", "generator (ID encoder, style encoder, mixing UNet)",
                            f"mk-minchul/dcface ({Path(gen.checkpoint).name})")]

    def model_line(self, gen: Any) -> str:
        return (f"- Generator: DCFace mixing model `{Path(gen.checkpoint).name}` ("
                + ("EMA" if gen.use_ema else "non-EMA") + " UNet; weights from the mk-minchul/dcface release).")

    def sampling_line(self, gen: Any) -> str:
        released = (gen.steps, gen.eta) == (50, 1.0)
        style = " and the style" if gen.style_sampling == "random" else ""
        how = (f"- Each image mixes its identity's ID image with a style image: DDIM {gen.steps} steps, eta "
               f"{gen.eta} ({'the released sampler' if released else '**not** the released 50 steps, eta 1.0'}); "
               f"the image seed draws the noise{style}. Per row: `style_source`, `id_source`.\n")
        return how + ("- **Style images are real photos** (`generator.style_provenance: real`): every image carries "
                      "the pose, expression, lighting and background of a real photo, though not its identity."
                      if gen.style_provenance == "real" else
                      "- Style images are synthetic (`generator.style_provenance`).")

    def limitations(self, gen: Any) -> list[str]:
        if gen.tiny or gen.style_provenance != "real":
            return []
        return ["- Style images are real photos of people (DCFace `generator.style_provenance: real`): each image "
                "takes its pose, expression, lighting and background from one (named in `style_source`), so those "
                "photos' biases and consent terms carry over."]
