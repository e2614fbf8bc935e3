"""The registered generators, keyed by ``generator.kind``: built from each folder's spec.

A new generator adds its folder and one entry here; everything else reads its :class:`GeneratorSpec`.
"""

from __future__ import annotations

import importlib
from typing import Any

from facefoundry.generators.arc2face.spec import Arc2FaceSpec
from facefoundry.generators.dcface.spec import DCFaceSpec
from facefoundry.generators.id_booth.spec import IDBoothSpec
from facefoundry.generators.idiff_face.spec import IDiffFaceSpec
from facefoundry.generators.merged.spec import MergedSpec
from facefoundry.generators.noop.spec import NoopSpec
from facefoundry.generators.spec import GeneratorSpec
from facefoundry.generators.vec2face.spec import Vec2FaceSpec

SPECS: dict[str, GeneratorSpec] = {
    spec.kind: spec for spec in (Arc2FaceSpec(), Vec2FaceSpec(), IDiffFaceSpec(), DCFaceSpec(), IDBoothSpec(),
                                  NoopSpec(), MergedSpec())
}
DEFAULT_KIND = "arc2face"  # the generator of a config whose generator section names no kind


def spec_of(gen: Any) -> GeneratorSpec:
    """The spec of generator config section ``gen``."""
    return SPECS[gen.kind]


def find_spec(kind: str) -> GeneratorSpec | None:
    """The spec of ``kind``, or None for a kind this version does not know (e.g. in an older record)."""
    return SPECS.get(kind)


def generator_class(gen: Any) -> Any:
    """The class implementing the configured generator (imported on use: filter and writer workers never import a
    generator's model code)."""
    module, name = spec_of(gen).generator_class.split(":")
    return getattr(importlib.import_module(module), name)
