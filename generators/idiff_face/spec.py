"""IDiff-Face's facts for the rest of facefoundry (see :mod:`facefoundry.generators.spec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facefoundry.generators.idiff_face.config import DDIM_DEFAULT_STEPS, IDiffFaceConfig
from facefoundry.generators.spec import TINY_WEIGHTS, GeneratorSpec, ModelPaths, UpstreamUse


class IDiffFaceSpec(GeneratorSpec):
    kind = "idiff_face"
    display_name = "IDiff-Face"
    config = IDiffFaceConfig
    generator_class = "facefoundry.generators.idiff_face.generator:IDiffFaceGenerator"
    native_size = 128
    precision_on_cuda = "float32"  # sample.py under Lightning's default precision
    conditioning_files = ("295672backbone.pth",)  # ElasticFace-Arc R100 (fdbtrs/ElasticFace): the identity space
    citations = {
        "idiffface": """@inproceedings{boutros2023idiffface,
  title = {IDiff-Face: Synthetic-based Face Recognition through Fizzy Identity-Conditioned Diffusion Models},
  author = {Boutros, Fadi and Grebe, Jonas Henry and Kuijper, Arjan and Damer, Naser},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year = {2023}
}""",
    }

    def identity_space_error(self, gen: Any, identities: Any) -> str | None:
        if identities.space != "unit" or identities.dim != 512:
            return ("identities.space must be 'unit' and identities.dim 512 for the idiff_face generator "
                    "(L2-normalised 512-d ElasticFace embeddings)")
        return None

    def model_paths(self, gen: Any, models_dir: Path, seed: int, identities: int) -> ModelPaths:
        if not gen.tiny:
            return ModelPaths(gen.model, gen.autoencoder)
        from facefoundry.generators.idiff_face.tiny import build_tiny_idiff_face

        model, autoencoder = build_tiny_idiff_face(models_dir, seed=seed)
        return ModelPaths(str(model), str(autoencoder))

    def shard_metadata(self, gen: Any) -> dict[str, Any]:
        return {"model": TINY_WEIGHTS if gen.tiny else Path(gen.model).name, "checkpoint_file": gen.checkpoint_file,
                "sampler": gen.sampler, "steps": gen.steps, "eta": gen.eta, "guidance_scale": gen.guidance_scale}

    def upstream(self, gen: Any) -> list[UpstreamUse]:
        return [
            UpstreamUse("idiff-face", f"generator (conditional latent DDPM, {gen.sampler} sampler)",
                        f"fdbtrs/IDiff-Face ({Path(gen.model).name})"),
            UpstreamUse("ldm-ffhq-vq-f4", "generator decoder (VQ-f4)", "CompVis/latent-diffusion (ffhq256 VQ-f4)"),
            UpstreamUse("elasticface", "identity space (ElasticFace-Arc; defines the vectors, not run here)",
                        f"fdbtrs/ElasticFace ({self.conditioning_files[0]})"),
        ]

    def model_line(self, gen: Any) -> str:
        return (f"- Generator: IDiff-Face, released model `{Path(gen.model).name}` (`{gen.checkpoint_file}`) "
                "with the CompVis ffhq256 VQ-f4 decoder (weights from the fdbtrs/IDiff-Face release).")

    def sampling_line(self, gen: Any) -> str:
        how = ("- The published ancestral DDPM sampler over all of the model's timesteps (1000 for the releases)"
               if gen.sampler == "ddpm" else
               f"- **Not the published sampler**: DDIM with {gen.steps or DDIM_DEFAULT_STEPS} evenly spaced steps, "
               f"eta {gen.eta} (the paper samples with the full DDPM)")
        return how + ("" if gen.guidance_scale is None else f", classifier-free guidance scale {gen.guidance_scale}") \
            + "; the image seed draws the initial latent and every step's noise."
