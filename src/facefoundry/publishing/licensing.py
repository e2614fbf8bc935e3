"""Licences of a dataset and of the upstream models it was made with, and their conflicts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facefoundry.config import AttributesConfig, IdentityFilterConfig, RunConfig

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


@dataclass(frozen=True)
class Upstream:
    """Licence facts of one upstream model: the single record the card, ``models list`` and checks read."""

    name: str
    licence: str  # the licence chain as stated by its sources (code, weights, training data)
    training_data: str
    commercial: bool | None  # False: non-commercial terms somewhere in the chain; None: not recorded


_GLINT = "Glint360K (web-crawled celebrity faces, no consent)"
_GLINT_TERMS = "Glint360K / InsightFace terms: non-commercial research only"
# Keyed by short name; ``models.REGISTRY`` entries name the upstream models their files hold.
UPSTREAM: dict[str, Upstream] = {
    "tiny": Upstream("tiny random weights (built in code)", "none", "none (random initialisation)", True),
    "noop": Upstream("no-op generator (seed-only noise, no model)", "none", "none (no model)", True),
    "arc2face": Upstream("Arc2Face", "mit (model card); training-data release cc-by-nc-sa-4.0",
                         "WebFace42M-derived face images (web-crawled, no consent)", False),
    "sd15": Upstream("Stable Diffusion 1.5", "creativeml-openrail-m (use-based restrictions)",
                     "LAION-5B subsets (web-crawled)", True),
    "lcm-lora": Upstream("LCM-LoRA SD-1.5", "openrail++ (model card; use-based restrictions)",
                         "distilled from SD-1.5 on LAION subsets (web-crawled)", True),
    "arcface-onnx": Upstream("ArcFace (arcface.onnx)", "mit (Arc2Face model card); WebFace42M terms: "
                             "non-commercial research", "WebFace42M (web-crawled celebrity faces, no consent)",
                             False),
    "vec2face": Upstream("Vec2Face", "mit (model card)",
                         "web-crawled face images (see the Vec2Face paper); no consent", False),
    "idiff-face": Upstream("IDiff-Face", "cc-by-nc-sa-4.0 (fdbtrs/IDiff-Face code and released weights)",
                           "FFHQ at 128 px (Flickr photos of real people; FFHQ is cc-by-nc-sa-4.0) with ElasticFace "
                           "embeddings", False),
    "ldm-ffhq-vq-f4": Upstream("CompVis LDM ffhq256 VQ-f4 autoencoder", "mit code (CompVis/latent-diffusion); "
                               "weights trained on FFHQ (cc-by-nc-sa-4.0)", "FFHQ (Flickr photos of real people)",
                               False),
    "elasticface": Upstream("ElasticFace-Arc R100", "mit code (fdbtrs/ElasticFace); weights trained on MS1MV2 "
                            "(non-commercial research terms)", "MS1MV2 (web-crawled celebrity faces, no consent)",
                            False),
    "dcface": Upstream("DCFace", "no licence file in mk-minchul/dcface (all rights reserved by default); built "
                       "on AdaFace / TFace models", "CASIA-WebFace (web-crawled celebrity faces, no consent), FFHQ",
                       False),
    "dcface-gid": Upstream("DCFace G_id (guided-diffusion ADM on FFHQ 256, ffhq_10m.pt)", "no licence file in "
                           "mk-minchul/dcface; guided-diffusion code mit; FFHQ cc-by-nc-sa-4.0",
                           "FFHQ (Flickr photos of real people)", False),
    "arcface-r100": Upstream("ArcFace R100", f"weights: {_GLINT_TERMS}", _GLINT, False),
    # code: MIT (IrvingMeng/MagFace LICENSE); the R100 weights Vec2Face ships are trained on Glint360K
    "magface": Upstream("MagFace R100", f"mit code (IrvingMeng/MagFace); weights: {_GLINT_TERMS}", _GLINT, False),
    "6drepnet": Upstream("6DRepNet", "mit code; 300W-LP / AFLW2000 terms (non-commercial research) apply to the "
                         "weights", "300W-LP (synthesised from 300-W faces)", False),
    "scrfd": Upstream("SCRFD", "InsightFace pretrained packs: non-commercial research only",
                      "WIDER FACE (web images)", False),
    "genderage": Upstream("InsightFace gender/age model (genderage.onnx)", "InsightFace pretrained packs "
                          "(buffalo_l, antelopev2): non-commercial research only", "not stated by InsightFace",
                          False),
    "fairface": Upstream("FairFace ResNet-34 race/gender/age classifier (res34_fair_align_multi_7)",
                         "no licence file in joojs/fairface or dchen236/FairFace; their READMEs give cc-by-4.0 "
                         "for the data, the weights' licence is not stated",
                         "FairFace: YFCC-100M Flickr photos of real people, race-balanced", None),
    "dlib-hog": Upstream("dlib HOG frontal face detector", "bsl-1.0 (dlib)", "built into dlib", True),
    "dlib-cnn": Upstream("dlib CNN (MMOD) face detector", "not recorded here: check dlib-models",
                         "face images annotated by the dlib author", None),
    "dlib-5pt": Upstream("dlib 5-point shape predictor", "cc0-1.0",
                         "internet face images annotated by the dlib author", True),
    "dlib-resnet": Upstream("dlib ResNet face recognition v1", "cc0-1.0",
                            "about 3M faces: FaceScrub, VGG-Face and web-scraped images (no consent)", True),
}


def component(key: str, role: str, source: str, revision: str | None = None) -> Component:
    """The :class:`Component` of upstream model ``key`` in ``role``, its licence facts from :data:`UPSTREAM`."""
    up = UPSTREAM[key]
    return Component(role, up.name, source, up.licence, up.training_data, up.commercial, revision)


def run_components(cfg: RunConfig) -> list[Component]:
    """The upstream models a run used, from its typed config."""
    gen, filt = cfg.generator, cfg.filter
    if gen.tiny:
        comps = [component("noop" if gen.kind == "noop" else "tiny", "generator", "facefoundry")]
    elif gen.kind == "arc2face":
        model = hub_id(gen.model, "FoivosPar/Arc2Face")
        comps = [
            component("arc2face", "generator (UNet, ID-conditioned text encoder)", model, gen.revision),
            component("sd15", "generator base (VAE, tokenizer, scheduler)",
                      hub_id(gen.base_model, "stable-diffusion-v1-5/stable-diffusion-v1-5")),
            *([component("lcm-lora", "generator fast mode (fused into the UNet)",
                         hub_id(gen.lcm_lora, "latent-consistency/lcm-lora-sdv1-5"), gen.lcm_lora_revision)]
              if gen.sampler == "lcm" else []),
            component("arcface-onnx", "identity space (arcface.onnx; defines the vectors, not run here)",
                      f"{model} (arcface.onnx)", gen.revision),
        ]
    elif gen.kind == "dcface":
        comps = [component("dcface", "generator (ID encoder, style encoder, mixing UNet)",
                           f"mk-minchul/dcface ({Path(gen.checkpoint).name})")]
    elif gen.kind == "idiff_face":
        comps = [
            component("idiff-face", f"generator (conditional latent DDPM, {gen.sampler} sampler)",
                      f"fdbtrs/IDiff-Face ({Path(gen.model).name})"),
            component("ldm-ffhq-vq-f4", "generator decoder (VQ-f4)", "CompVis/latent-diffusion (ffhq256 VQ-f4)"),
            component("elasticface", "identity space (ElasticFace-Arc; defines the vectors, not run here)",
                      "fdbtrs/ElasticFace (295672backbone.pth)"),
        ]
    else:
        comps = [
            component("vec2face", "generator (masked autoencoder + image decoder)",
                      hub_id(gen.checkpoint, "BooBooWu/Vec2Face"), gen.revision),
            component("arcface-r100", "identity space (ArcFace-R100; defines the vectors, not run here)",
                      "BooBooWu/Vec2Face (arcface-r100-glint360k.pth)"),
        ]
        if gen.attrop.enabled:
            comps += [component("magface", "AttrOP quality model", "BooBooWu/Vec2Face (magface-r100-glint360k.pth)"),
                      component("6drepnet", "AttrOP pose model",
                                "BooBooWu/Vec2Face (6DRepNet_300W_LP_AFLW2000.pth)")]
    comps += [
        component("dlib-cnn", "face detector", "dlib-models (mmod_human_face_detector.dat)") if filt.detector == "cnn"
        else component("dlib-hog", "face detector", "dlib library"),
        component("dlib-5pt", "landmarks", "dlib-models (shape_predictor_5_face_landmarks)"),
        component("dlib-resnet", "identity judge", "dlib-models (dlib_face_recognition_resnet_model_v1)"),
    ]
    return comps + id_filter_components(cfg.id_filter) + attribute_components(cfg.attributes)


ESTIMATOR_ROLE = "attribute estimator (estimates, not ground truth)"


def attribute_components(attrs: AttributesConfig | None) -> list[Component]:
    """The attribute estimator (and genderage's detector) of a run with an ``attributes`` section."""
    if attrs is None:
        return []
    comps = [component(attrs.estimator, ESTIMATOR_ROLE, Path(attrs.model).name)]
    if attrs.estimator == "genderage" and attrs.detector_model is not None:
        comps.append(component("scrfd", "face detector (attributes)",
                               f"InsightFace model pack ({Path(attrs.detector_model).name})"))
    return comps


def id_filter_components(idf: IdentityFilterConfig | None) -> list[Component]:
    """The identity filter's detector and conditioning encoder (file names only, never local paths)."""
    if idf is None:
        return []
    detector, encoder = Path(idf.detector_model).name, Path(idf.encoder_model).name
    comps = [component("scrfd", "face detector (id_filter)", f"InsightFace model pack ({detector})")]
    if encoder.endswith((".pth", ".pt")):
        comps.append(component("arcface-r100", "conditioning encoder (id_filter)", f"BooBooWu/Vec2Face ({encoder})"))
    else:
        comps.append(component("arcface-onnx", "conditioning encoder (id_filter)", encoder))
    return comps


def licence_conflicts(license: str, components: list[Component]) -> list[str]:
    """Warnings when ``license`` allows commercial use but an upstream component does not (or is unknown)."""
    lic = check_license(license)
    if lic in NONCOMMERCIAL_LICENSES:
        return []
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


