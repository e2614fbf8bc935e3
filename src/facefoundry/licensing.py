"""Licences of a dataset and of the upstream models it was made with, and their conflicts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LICENSE = "cc-by-nc-4.0"

# Hub licence identifiers (https://huggingface.co/docs/hub/repositories-licenses) suited to a dataset.
NONCOMMERCIAL_LICENSES = frozenset({
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
})
COMMERCIAL_LICENSES = frozenset({
    "apache-2.0", "mit", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nd-4.0", "odc-by", "odbl", "pddl", "cdla-permissive-1.0", "cdla-permissive-2.0",
    "cdla-sharing-1.0", "openrail", "creativeml-openrail-m", "bsd-2-clause", "bsd-3-clause", "unlicense",
})


@dataclass(frozen=True)
class Component:
    """An upstream artefact the dataset depends on, with its licence chain."""

    role: str
    name: str
    source: str
    licence: str
    training_data: str
    commercial: bool | None  # False: non-commercial terms in its chain; None: not recorded
    revision: str | None = None


def check_license(license: str) -> str:
    """The Hub identifier of ``license`` (lower case); ValueError if it is not a known dataset licence."""
    lic = str(license).strip().lower()
    if lic not in NONCOMMERCIAL_LICENSES | COMMERCIAL_LICENSES:
        known = ", ".join(sorted(NONCOMMERCIAL_LICENSES | COMMERCIAL_LICENSES))
        raise ValueError(f"unknown dataset licence {license!r}; use a Hub licence identifier: {known}")
    return lic


def hub_id(value: str | None, default: str) -> str:
    """A Hub id as given; a local folder is named by its last component (no local paths in cards)."""
    if not value:
        return default
    if os.path.isabs(value) or value.startswith((".", "~")) or value.count("/") != 1:
        return f"{Path(value).name} (local copy, {default} layout)"
    return value


def run_components(cfg: dict) -> list[Component]:
    """The upstream models a run used, from its resolved config."""
    gen, filt = cfg.get("generator") or {}, cfg.get("filter") or {}
    comps = []
    if gen.get("tiny"):
        comps.append(Component("generator", "tiny random weights (built in code)", "facefoundry", "none",
                               "none (random initialisation)", True))
    elif gen.get("kind", "arc2face") == "arc2face":
        model = hub_id(gen.get("model"), "FoivosPar/Arc2Face")
        comps += [
            Component("generator (UNet, ID-conditioned text encoder)", "Arc2Face", model,
                      "mit (model card); training-data release cc-by-nc-sa-4.0",
                      "WebFace42M-derived face images (web-crawled, no consent)", False, gen.get("revision")),
            Component("generator base (VAE, tokenizer, scheduler)", "Stable Diffusion 1.5",
                      hub_id(gen.get("base_model"), "stable-diffusion-v1-5/stable-diffusion-v1-5"),
                      "creativeml-openrail-m (use-based restrictions)", "LAION-5B subsets (web-crawled)", True),
            *([Component("generator fast mode (fused into the UNet)", "LCM-LoRA SD-1.5",
                         hub_id(gen.get("lcm_lora"), "latent-consistency/lcm-lora-sdv1-5"),
                         "openrail++ (model card; use-based restrictions)",
                         "distilled from SD-1.5 on LAION subsets (web-crawled)", True,
                         gen.get("lcm_lora_revision"))] if gen.get("sampler") == "lcm" else []),
            Component("identity space (arcface.onnx; defines the vectors, not run here)", "ArcFace",
                      f"{model} (arcface.onnx)", "mit (Arc2Face model card); WebFace42M terms: non-commercial research",
                      "WebFace42M (web-crawled celebrity faces, no consent)", False, gen.get("revision")),
        ]
    elif gen.get("kind") == "vec2face":
        comps += [
            Component("generator (masked autoencoder + image decoder)", "Vec2Face",
                      hub_id(gen.get("checkpoint"), "BooBooWu/Vec2Face"), "mit (model card)",
                      "web-crawled face images (see the Vec2Face paper); no consent", False, gen.get("revision")),
            Component("identity space (ArcFace-R100; defines the vectors, not run here)", "ArcFace R100",
                      "BooBooWu/Vec2Face (arcface-r100-glint360k.pth)", "not recorded: Glint360K terms apply",
                      "Glint360K (web-crawled celebrity faces, no consent)", False),
        ]
        if (gen.get("attrop") or {}).get("enabled"):
            comps += [
                Component("AttrOP quality model (MagFace R100)", "MagFace", "BooBooWu/Vec2Face "
                          "(magface-r100-glint360k.pth)", "apache-2.0 code; Glint360K terms apply to the weights",
                          "Glint360K (web-crawled celebrity faces, no consent)", False),
                Component("AttrOP pose model", "6DRepNet", "BooBooWu/Vec2Face (6DRepNet_300W_LP_AFLW2000.pth)",
                          "mit code; 300W-LP / AFLW2000 terms apply to the weights",
                          "300W-LP (synthesised from 300-W faces)", False),
            ]
    else:
        comps.append(Component("generator", str(gen.get("kind")), hub_id(gen.get("model"), "unknown"),
                               "not recorded", "not recorded", None, gen.get("revision")))
    if filt.get("kind", "dlib") == "dlib":
        if filt.get("detector", "hog") == "cnn":
            comps.append(Component("face detector", "dlib CNN (MMOD) face detector", "dlib-models "
                                   "(mmod_human_face_detector.dat)", "not recorded here: check dlib-models",
                                   "face images annotated by the dlib author", None))
        else:
            comps.append(Component("face detector", "dlib HOG frontal face detector", "dlib library",
                                   "bsl-1.0 (dlib)", "built into dlib", True))
        comps += [
            Component("landmarks", "dlib 5-point shape predictor", "dlib-models (shape_predictor_5_face_landmarks)",
                      "cc0-1.0", "internet face images annotated by the dlib author", True),
            Component("identity judge", "dlib ResNet face recognition v1",
                      "dlib-models (dlib_face_recognition_resnet_model_v1)", "cc0-1.0",
                      "about 3M faces: FaceScrub, VGG-Face and web-scraped images (no consent)", True),
        ]
    else:
        comps.append(Component("face filter", str(filt.get("kind")), "unknown", "not recorded", "not recorded", None))
    return comps + id_filter_components(cfg.get("id_filter"))


def id_filter_components(idf: dict | None) -> list[Component]:
    """The identity filter's detector and conditioning encoder (file names only, never local paths)."""
    if not idf:
        return []
    detector = Path(str(idf.get("detector_model", "antelopev2"))).name
    encoder = Path(str(idf.get("encoder_model", "arcface.onnx"))).name
    comps = [Component("face detector (id_filter)", "SCRFD", f"InsightFace model pack ({detector})",
                       "InsightFace pretrained packs: non-commercial research only",
                       "WIDER FACE (web images)", False)]
    if encoder.endswith((".pth", ".pt")):
        comps.append(Component("conditioning encoder (id_filter)", "ArcFace R100 (PyTorch)",
                               f"BooBooWu/Vec2Face ({encoder})", "not recorded: Glint360K terms apply",
                               "Glint360K (web-crawled celebrity faces, no consent)", False))
    else:
        comps.append(Component("conditioning encoder (id_filter)", "ArcFace (ONNX)", encoder,
                               "Arc2Face's arcface.onnx: WebFace42M terms; InsightFace packs: non-commercial",
                               "WebFace42M or Glint360K / WebFace600K (web-crawled faces, no consent)", False))
    return comps


def licence_conflicts(license: str, components: list[Component] | None = None) -> list[str]:
    """Warnings when ``license`` allows commercial use but an upstream component does not (or is unknown).

    Without ``components``, the default pipeline (Arc2Face + dlib) is assumed.
    """
    lic = check_license(license)
    if lic in NONCOMMERCIAL_LICENSES:
        return []
    if components is None:
        components = run_components({})
    out = []
    for comp in components:
        if comp.commercial is False:
            out.append(f"licence {lic} allows commercial use, but {comp.name} ({comp.source}) is non-commercial "
                       f"({comp.licence}; trained on {comp.training_data}); choose a non-commercial licence "
                       f"such as {DEFAULT_LICENSE}")
        elif comp.commercial is None:
            out.append(f"licence {lic} allows commercial use, but the licence of {comp.name} ({comp.source}) "
                       f"is not recorded; check it before publishing")
    return out


