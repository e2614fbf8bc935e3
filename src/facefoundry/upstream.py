"""Licence facts of the upstream models facefoundry can load: the single record that the model registry
(:mod:`facefoundry.models`), ``models list``, the card and the licence checks read."""

from __future__ import annotations

from dataclasses import dataclass


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
    "no-model": Upstream("no-op generator (seed-only noise, no model)", "none", "none (no model)", True),
    "arc2face-weights": Upstream("Arc2Face", "mit (model card); training-data release cc-by-nc-sa-4.0",
                         "WebFace42M-derived face images (web-crawled, no consent)", False),
    "sd15": Upstream("Stable Diffusion 1.5", "creativeml-openrail-m (use-based restrictions)",
                     "LAION-5B subsets (web-crawled)", True),
    "lcm-lora": Upstream("LCM-LoRA SD-1.5", "openrail++ (model card; use-based restrictions)",
                         "distilled from SD-1.5 on LAION subsets (web-crawled)", True),
    "arcface-onnx": Upstream("ArcFace (arcface.onnx)", "mit (Arc2Face model card); WebFace42M terms: "
                             "non-commercial research", "WebFace42M (web-crawled celebrity faces, no consent)",
                             False),
    "vec2face-weights": Upstream("Vec2Face", "mit (model card)",
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
    "dcface-weights": Upstream("DCFace", "no licence file in mk-minchul/dcface (all rights reserved by default); built "
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
    "sd21": Upstream("Stable Diffusion 2.1 base", "creativeml-openrail++-m (use-based restrictions)",
                     "LAION-5B subsets (web-crawled, NSFW-filtered)", True),
    "arcface-ms1mv3": Upstream("ArcFace R100 (MS1MV3, insightface arcface_torch)", "InsightFace pretrained models: "
                               "non-commercial research only", "MS1MV3 (cleaned MS-Celeb-1M: web-crawled celebrity "
                               "faces, no consent)", False),
    "mtcnn": Upstream("MTCNN (facenet-pytorch's weights)", "mit (facenet-pytorch)",
                      "WIDER FACE and CelebA (the MTCNN paper's training sets)", None),
    "id-booth-people": Upstream("photos of the people who consented (never published)", "the people's consent "
                                "records (see the card)", "the user's own photos of consenting people", None),
}
