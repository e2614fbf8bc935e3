"""ID-Booth's facts for the rest of facefoundry (see :mod:`facefoundry.generators.spec`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from facefoundry.generators.id_booth.config import ARCFACE_FILE, IDBoothConfig
from facefoundry.generators.spec import (
    LDM_CITATION,
    TINY_WEIGHTS,
    GeneratorSpec,
    ModelPaths,
    PrepJob,
    UpstreamUse,
    hub_id,
)
from facefoundry.models import hub_repo

WORK_DIR = "id-booth"  # beside the run's models/: class images and one LoRA folder per identity
CONSENT_SUMMARY = "consent-summary.json"  # in WORK_DIR, read by the card


class IDBoothSpec(GeneratorSpec):
    kind = "id-booth"
    display_name = "ID-Booth"
    config = IDBoothConfig
    generator_class = "facefoundry.generators.id_booth.generator:IDBoothGenerator"
    native_size = 512  # SD-2.1-base's resolution (generator.resolution)
    conditioning_files = (ARCFACE_FILE,)  # its triplet identity loss fine-tunes each LoRA toward this model
    precision_on_cuda = "float16"  # mixed_precision fp16 (training) and torch_dtype float16 (inference)
    identities_are = "real people who consented, learned from their photos (one LoRA each)"
    real_people = True
    variation_source = "prompts (backgrounds, portrait or side-portrait)"
    citations = {
        "idbooth": """@inproceedings{tomasevic2025idbooth,
  title = {ID-Booth: Identity-consistent Face Generation with Diffusion Models},
  author = {Toma{\\v{s}}evi{\\'c}, Darian and Boutros, Fadi and Lin, Chenhao and Damer, Naser and {\\v{S}}truc,
            Vitomir and Peer, Peter},
  booktitle = {IEEE International Conference on Automatic Face and Gesture Recognition (FG)},
  year = {2025}
}""",
        "dreambooth": """@inproceedings{ruiz2023dreambooth,
  title = {DreamBooth: Fine Tuning Text-to-Image Diffusion Models for Subject-Driven Generation},
  author = {Ruiz, Nataniel and Li, Yuanzhen and Jampani, Varun and Pritch, Yael and Rubinstein, Michael
            and Aberman, Kfir},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2023}
}""",
        "lora": """@inproceedings{hu2022lora,
  title = {LoRA: Low-Rank Adaptation of Large Language Models},
  author = {Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and Wang,
            Shean and Wang, Lu and Chen, Weizhu},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2022}
}""",
        "sd": LDM_CITATION,
    }

    def identity_space_error(self, gen: Any, identities: Any) -> str | None:
        if gen.tiny:
            return None
        if identities.sampler != "from_file" or identities.file is None:
            return ("the id-booth generator's identities are its people: set identities.sampler: from_file and "
                    "identities.file to the vectors `facefoundry id-booth-people` writes for generator.people")
        if identities.space != "unit":
            return "identities.space must be 'unit' for the id-booth generator (L2-normalised ArcFace embeddings)"
        return None

    def output_size(self, gen: Any) -> int:
        return gen.output_size or gen.resolution

    def model_paths(self, gen: Any, models_dir: Path, seed: int, identities: int) -> ModelPaths:
        loras = str(Path(models_dir).parent / WORK_DIR / "loras")
        if not gen.tiny:
            return ModelPaths(gen.base_model, gen.base_model, face_models=gen.arcface, loras=loras, people=gen.people,
                              class_data=gen.class_data)
        from facefoundry.generators.id_booth.tiny import build_tiny_id_booth, build_tiny_people

        base, arcface = build_tiny_id_booth(models_dir, seed=seed)
        people, classes = build_tiny_people(models_dir)
        return ModelPaths(str(base), str(base), face_models=str(arcface), loras=loras,
                          people=gen.people or str(people), class_data=gen.class_data or str(classes))

    def preparation(self, gen: Any, paths: ModelPaths, seed: int, identities: int) -> list[list[PrepJob]]:
        from facefoundry.faces.mtcnn import mtcnn_weights_dir
        from facefoundry.generators.id_booth.people import PeopleError, consent_summary, read_people
        from facefoundry.generators.id_booth.prepare import arcface_file

        if paths.people is None:
            raise PeopleError("generator.people is not set: point it at a folder holding one folder per consenting "
                              "person (their photos and consent.yaml)")
        people = read_people(paths.people)  # consent, photos and model files checked here, before Ray starts
        arcface_file(paths.face_models)
        mtcnn_weights_dir(gen.mtcnn)
        if len(people) != identities:
            raise PeopleError(f"generator.people {paths.people} holds {len(people)} people but identities.count is "
                              f"{identities}: set identities.count: {len(people)}")
        work = str(Path(paths.loras).parent)
        summary = Path(work) / CONSENT_SUMMARY  # for the card: counts and dates, never names or photos
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps(consent_summary(people), indent=2, sort_keys=True) + "\n")
        config = gen.model_dump(mode="json")
        common = {"config": config, "base": paths.base_model, "work": work, "seed": seed,
                  "class_data": paths.class_data}
        module = "facefoundry.generators.id_booth.prepare"
        return [[PrepJob("class images", f"{module}:class_images_job", common)],
                [PrepJob(f"fine-tuning {p.name}", f"{module}:finetune_job",
                         common | {"arcface": paths.face_models, "person": str(p.folder), "identity": k})
                 for k, p in enumerate(people)]]

    def shard_metadata(self, gen: Any) -> dict[str, Any]:
        return {"base_model": TINY_WEIGHTS if gen.tiny else gen.base_model,
                "arcface": TINY_WEIGHTS if gen.tiny else Path(gen.arcface or ARCFACE_FILE).name,
                "lora_rank": gen.lora_rank, "epochs": gen.epochs, "learning_rate": gen.learning_rate,
                "class_images": gen.class_images, "triplet_margin": gen.triplet_margin, "steps": gen.steps,
                "guidance_scale": gen.guidance_scale, "resolution": gen.resolution}

    def upstream(self, gen: Any) -> list[UpstreamUse]:
        return [UpstreamUse("sd21", "generator base (UNet, VAE, text encoder; one LoRA per person)",
                            hub_id(gen.base_model, hub_repo("sd21-base"))),
                UpstreamUse("arcface-ms1mv3", "identity loss of the fine-tuning (not run at generation)",
                            Path(gen.arcface or ARCFACE_FILE).name),
                UpstreamUse("mtcnn", "face crops of the identity loss", "facenet-pytorch 2.6.0"),
                UpstreamUse("id-booth-people", "the identities (their photos stay local, never published)",
                            "generator.people")]

    def model_line(self, gen: Any) -> str:
        return (f"- Generator: ID-Booth, one rank-{gen.lora_rank} LoRA per person fine-tuned on "
                f"`{hub_id(gen.base_model, hub_repo('sd21-base'))}` ({gen.epochs} epochs, {gen.class_images} class "
                f"images, triplet identity loss with `{Path(gen.arcface or ARCFACE_FILE).name}`).")

    def sampling_line(self, gen: Any) -> str:
        return (f"- Prompt `{gen.prompt}` (the person's gender word from their consent record, 'side-portrait' on a "
                f"coin flip, one of {len(gen.backgrounds)} backgrounds or none, drawn from the image seed), negative "
                f"prompt as the official inference script, DDPM {gen.steps} steps, guidance {gen.guidance_scale}; "
                "each row records its `prompt`.")

    def card_sections(self, gen: Any, run_dir: Path) -> list[str]:
        lines = ["## Consent\n"]
        try:
            summary = json.loads((Path(run_dir) / WORK_DIR / CONSENT_SUMMARY).read_text())
        except (OSError, ValueError):
            return lines + [f"The consent records' summary (`{WORK_DIR}/{CONSENT_SUMMARY}`) is not in this run folder: "
                            "it is written where the run fine-tuned. Every person's folder held a consent record, or "
                            "the run would have refused it.\n"]
        if gen.tiny:
            return lines + [f"This run is a tooling rehearsal: its {summary['people']} 'people' are public photos "
                            "shipped with Python packages, not people who consented, and its images are noise.\n"]
        uses = "; ".join(f"\"{use}\" ({n})" for use, n in summary["consented_to"].items())
        first, last = summary["dates"] or ("?", "?")
        lines.append(f"All {summary['people']} identities are real people, each with a consent record that the run "
                     f"required before learning them. They consented to: {uses}. Consent given between {first} "
                     f"and {last}; " + (f"the earliest expires on {summary['earliest_expiry']}"
                                        if summary["earliest_expiry"] else "none states an expiry")
                     + f"; {summary['with_reference']} name a signed form kept by the dataset's maker. Names, photos "
                     "and face embeddings of these people are not published.\n")
        return lines

    def limitations(self, gen: Any) -> list[str]:
        return ["- The identities are **real people** who consented to this use (see their consent records' summary): "
                "the images are meant to resemble them. A leakage screen here finds who else the images resemble, "
                "not whether they resemble a real person."]
