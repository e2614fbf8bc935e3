"""Vec2Face's facts for the rest of facefoundry (see :mod:`facefoundry.generators.spec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facefoundry.generators.spec import TINY_WEIGHTS, UNPINNED, GeneratorSpec, ModelPaths, UpstreamUse, hub_id
from facefoundry.generators.vec2face.config import Vec2FaceConfig
from facefoundry.models import hub_repo

FACE_MODELS_DIR = "vec2face-face-models"  # under <out>/models: AttrOP's tiny face models
FACE_REPO = hub_repo("vec2face-face-models")  # ArcFace-R100 (the identity space), MagFace, 6DRepNet


class Vec2FaceSpec(GeneratorSpec):
    kind = "vec2face"
    display_name = "Vec2Face"
    config = Vec2FaceConfig
    generator_class = "facefoundry.generators.vec2face.generator:Vec2FaceGenerator"
    native_size = 112
    conditioning_files = ("arcface-r100-glint360k.pth",)
    precision_on_cuda = "float32"  # the only precision it runs in (generator.dtype)
    later_keys = {"attrop.pose_schedule": None, "attrop.pitch_tolerance": 5.0}
    citations = {
        "vec2face": """@inproceedings{wu2025vec2face,
  title = {Vec2Face: Scaling Face Dataset Generation with Loosely Constrained Vectors},
  author = {Wu, Haiyu and Singh, Jaskirat and Tian, Sicong and Zheng, Liang and Bowyer, Kevin W.},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2025}
}""",
    }

    def identity_space_error(self, gen: Any, identities: Any) -> str | None:
        if identities.space != "raw":
            return "identities.space must be 'raw' (identities.norm about 22) for the vec2face generator"
        return None

    def model_paths(self, gen: Any, models_dir: Path, seed: int, identities: int) -> ModelPaths:
        if not gen.tiny:
            return ModelPaths(gen.checkpoint)
        from facefoundry.generators.vec2face.tiny import build_tiny_vec2face

        checkpoint = build_tiny_vec2face(models_dir, seed=seed)
        if not gen.attrop.enabled:
            return ModelPaths(str(checkpoint))
        from facefoundry.faces.tiny_face_models import write_tiny_face_models

        write_tiny_face_models(models_dir / FACE_MODELS_DIR, seed=seed)
        return ModelPaths(str(checkpoint), face_models=str(models_dir / FACE_MODELS_DIR))

    def shard_metadata(self, gen: Any) -> dict[str, Any]:
        return {"checkpoint": TINY_WEIGHTS if gen.tiny else gen.checkpoint, "filename": gen.filename}

    def upstream(self, gen: Any) -> list[UpstreamUse]:
        uses = [
            UpstreamUse("vec2face-weights", "generator (masked autoencoder + image decoder)",
                        hub_id(gen.checkpoint, hub_repo("vec2face")), gen.revision),
            UpstreamUse("arcface-r100", "identity space (ArcFace-R100; defines the vectors, not run here)",
                        f"{FACE_REPO} (arcface-r100-glint360k.pth)"),
        ]
        if gen.attrop.enabled:
            uses += [UpstreamUse("magface", "AttrOP quality model", f"{FACE_REPO} (magface-r100-glint360k.pth)"),
                     UpstreamUse("6drepnet", "AttrOP pose model", f"{FACE_REPO} (6DRepNet_300W_LP_AFLW2000.pth)")]
        return uses

    def model_line(self, gen: Any) -> str:
        return (f"- Generator: Vec2Face, `{hub_id(gen.checkpoint, hub_repo('vec2face'))}` (`{gen.filename}`) at "
                f"revision `{gen.revision or UNPINNED}`.")

    def sampling_line(self, gen: Any) -> str:
        attrop = gen.attrop
        return (f"- One forward pass per image; the image seed draws the mask ratio (truncated normal: min "
                f"{gen.mask_ratio_min}, max {gen.mask_ratio_max}, mean {gen.mask_ratio_mu}, std {gen.mask_ratio_std}) "
                "and the token mask, both stored per image (`mask_ratio`, `token_mask`)."
                + (f" AttrOP (Adam on the input vector toward ArcFace-R100 cosine {attrop.min_id_similarity}, at "
                   f"most {attrop.max_iterations} steps per image; outcome per image in `attrop_*`)."
                   if attrop.enabled else "")
                + (" Pose schedule (image k of every identity, entry k): "
                   + ", ".join(f"yaw {t.yaw:g}°" + ("" if t.pitch is None else f" pitch {t.pitch:g}°")
                               for t in attrop.pose_schedule)
                   + "; each row records its target (`attrop_target_yaw`, `attrop_target_pitch`) and the 6DRepNet "
                   "yaw and pitch reached (`attrop_yaw`, `attrop_pitch`)."
                   if attrop.enabled and attrop.pose_schedule else ""))
