"""Arc2Face's facts for the rest of facefoundry (see :mod:`facefoundry.generators.spec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facefoundry.generators.arc2face.config import Arc2FaceConfig
from facefoundry.generators.spec import (
    LDM_CITATION,
    TINY_WEIGHTS,
    UNPINNED,
    GeneratorSpec,
    ModelPaths,
    UpstreamUse,
    hub_id,
)
from facefoundry.models import hub_repo


class Arc2FaceSpec(GeneratorSpec):
    kind = "arc2face"
    display_name = "Arc2Face"
    config = Arc2FaceConfig
    generator_class = "facefoundry.generators.arc2face.generator:Arc2FaceGenerator"
    native_size = 512
    conditioning_files = ("arcface.onnx",)
    precision_on_cuda = "float16"  # the official demo loads the pipeline in float16
    later_keys = {"controlnet": False, "pose_images": None, "controlnet_scale": 1.0}
    citations = {
        "arc2face": """@inproceedings{paraperas2024arc2face,
  title = {Arc2Face: A Foundation Model for ID-Consistent Human Faces},
  author = {Paraperas Papantoniou, Foivos and Lattas, Alexandros and Moschoglou, Stylianos and Deng, Jiankang
            and Kainz, Bernhard and Zafeiriou, Stefanos},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year = {2024}
}""",
        "sd": LDM_CITATION,
        "dpmsolver": """@article{lu2022dpmsolverpp,
  title = {DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models},
  author = {Lu, Cheng and Zhou, Yuhao and Bao, Fan and Chen, Jianfei and Li, Chongxuan and Zhu, Jun},
  journal = {arXiv preprint arXiv:2211.01095},
  year = {2022}
}""",
        "arcface": """@inproceedings{deng2019arcface,
  title = {ArcFace: Additive Angular Margin Loss for Deep Face Recognition},
  author = {Deng, Jiankang and Guo, Jia and Xue, Niannan and Zafeiriou, Stefanos},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2019}
}""",
        "webface": """@inproceedings{zhu2021webface260m,
  title = {WebFace260M: A Benchmark Unveiling the Power of Million-Scale Deep Face Recognition},
  author = {Zhu, Zheng and Huang, Guan and Deng, Jiankang and Ye, Yun and Huang, Junjie and Chen, Xinze
            and Zhu, Jiagang and Yang, Tian and Lu, Jiwen and Du, Dalong and Zhou, Jie},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2021}
}""",
    }

    def identity_space_error(self, gen: Any, identities: Any) -> str | None:
        if identities.space != "unit":
            return "identities.space must be 'unit' for the arc2face generator (L2-normalised ArcFace)"
        return None

    def model_paths(self, gen: Any, models_dir: Path, seed: int, identities: int) -> ModelPaths:
        if not gen.tiny:
            return ModelPaths(gen.model, gen.base_model)
        from facefoundry.generators.arc2face.tiny import (
            build_tiny_arc2face,
            build_tiny_arc2face_controlnet,
            tiny_lcm_lora_path,
        )

        if gen.controlnet:  # also <model>/controlnet/ and the condition images the generator finds next to <model>
            model, base, _ = build_tiny_arc2face_controlnet(models_dir, seed=seed)
        else:
            model, base = build_tiny_arc2face(models_dir, seed=seed)
        return ModelPaths(str(model), str(base), str(tiny_lcm_lora_path(models_dir)))

    def shard_metadata(self, gen: Any) -> dict[str, Any]:
        models = {"model": TINY_WEIGHTS if gen.tiny else gen.model, "base_model": TINY_WEIGHTS if gen.tiny else
                  gen.base_model}
        if gen.sampler == "lcm":
            models |= {"lcm_lora": TINY_WEIGHTS if gen.tiny else gen.lcm_lora, "sampler": "lcm"}
        if gen.controlnet:  # pose ControlNet: <model>/controlnet; condition images by folder name
            models |= {"controlnet": "controlnet", "controlnet_scale": gen.controlnet_scale,
                       "pose_images": TINY_WEIGHTS if gen.pose_images is None else Path(gen.pose_images).name}
        return models | {"sampler": gen.sampler, "steps": gen.steps, "guidance_scale": gen.guidance_scale}

    def upstream(self, gen: Any) -> list[UpstreamUse]:
        model = hub_id(gen.model, hub_repo("arc2face"))
        return [
            UpstreamUse("arc2face-weights", "generator (UNet, ID-conditioned text encoder)", model, gen.revision),
            UpstreamUse("sd15", "generator base (VAE, tokenizer, scheduler)",
                        hub_id(gen.base_model, hub_repo("sd15"))),
            *([UpstreamUse("lcm-lora", "generator fast mode (fused into the UNet)",
                           hub_id(gen.lcm_lora, hub_repo("lcm-lora")), gen.lcm_lora_revision)]
              if gen.sampler == "lcm" else []),
            UpstreamUse("arcface-onnx", "identity space (arcface.onnx; defines the vectors, not run here)",
                        f"{model} (arcface.onnx)", gen.revision),
        ]

    def model_line(self, gen: Any) -> str:
        return (f"- Generator: Arc2Face, `{hub_id(gen.model, hub_repo('arc2face'))}` at revision "
                f"`{gen.revision or UNPINNED}`, on the base model "
                f"`{hub_id(gen.base_model, hub_repo('sd15'))}`.")

    def sampling_line(self, gen: Any) -> str:
        return (f"- Prompt `{gen.prompt}` with the identity vector in the `id` token; "
                + (f"LCM-LoRA `{hub_id(gen.lcm_lora, hub_repo('lcm-lora'))}` fused into the UNet, "
                   "LCM scheduler" if gen.sampler == "lcm" else "DPM-Solver multistep")
                + f", {gen.steps} steps, guidance scale {gen.guidance_scale}."
                + (f" Arc2Face's pose ControlNet (scale {gen.controlnet_scale}) with condition images from "
                   f"{f'`{Path(gen.pose_images).name}`' if gen.pose_images else 'the tiny build'}: image k of every "
                   "identity follows condition image k (name order, cycling); each row names its own "
                   "(`pose_condition`)." if gen.controlnet else ""))
