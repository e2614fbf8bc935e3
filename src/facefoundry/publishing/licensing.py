"""Licences of a dataset and of the upstream models it was made with, and their conflicts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from facefoundry.generators.registry import spec_of
from facefoundry.models import hub_repo
from facefoundry.upstream import UPSTREAM

if TYPE_CHECKING:
    from facefoundry.config import RunConfig
    from facefoundry.sections import AttributesConfig, IdentityFilterConfig

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


def component(key: str, role: str, source: str, revision: str | None = None) -> Component:
    """The :class:`Component` of upstream model ``key`` in ``role``, its licence facts from :data:`UPSTREAM`."""
    up = UPSTREAM[key]
    return Component(role, up.name, source, up.licence, up.training_data, up.commercial, revision)


def run_components(cfg: RunConfig) -> list[Component]:
    """The upstream models a run used, from its typed config (a merged run: every source run's, each once)."""
    gen, filt = cfg.generator, cfg.filter
    sources = spec_of(gen).source_configs(gen)
    if sources:
        from facefoundry.config import validate_config

        return list(dict.fromkeys(c for source in sources for c in run_components(validate_config(source))))
    comps = [component(use.key, use.role, use.source, use.revision) for use in spec_of(gen).components(gen)]
    comps += [
        component("dlib-cnn", "face detector", "dlib-models (mmod_human_face_detector.dat)") if filt.detector == "cnn"
        else component("dlib-hog", "face detector", "dlib library"),
        component("dlib-5pt", "landmarks", "dlib-models (shape_predictor_5_face_landmarks)"),
        component("dlib-resnet", "identity judge", "dlib-models (dlib_face_recognition_resnet_model_v1)"),
    ]
    return comps + id_filter_components(cfg.id_filter) + attribute_components(cfg.attributes)


ESTIMATOR_ROLE = "attribute estimator (estimates, not ground truth)"


def estimator_file(attrs: AttributesConfig) -> str:
    """The attribute estimator's file name as the card names it (never a local path)."""
    if attrs.tiny:
        from facefoundry.faces.genderage import GENDERAGE_FILE

        return GENDERAGE_FILE
    return Path(attrs.model).name


def attribute_components(attrs: AttributesConfig | None) -> list[Component]:
    """The attribute estimator (and genderage's detector) of a run with an ``attributes`` section."""
    if attrs is None:
        return []
    if attrs.tiny:  # random weights built in code: no upstream model, no detector
        return [component("tiny", ESTIMATOR_ROLE, f"facefoundry (tiny {estimator_file(attrs)})")]
    comps = [component(attrs.estimator, ESTIMATOR_ROLE, estimator_file(attrs))]
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
        comps.append(component("arcface-r100", "conditioning encoder (id_filter)",
                               f"{hub_repo('vec2face-face-models')} ({encoder})"))
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


