"""The no-op generator's facts for the rest of facefoundry (see :mod:`facefoundry.generators.spec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facefoundry.generators.noop.config import NoopConfig
from facefoundry.generators.spec import GeneratorSpec, ModelPaths


class NoopSpec(GeneratorSpec):
    kind = "noop"
    display_name = "no-op"
    config = NoopConfig
    generator_class = "facefoundry.generators.noop.generator:NoopGenerator"
    rehearsal = True
    tiny_upstream = "no-model"

    def model_paths(self, gen: Any, models_dir: Path, seed: int, identities: int) -> ModelPaths:
        return ModelPaths("noop")  # loads nothing

    def shard_metadata(self, gen: Any) -> dict[str, Any]:
        return {"size": gen.size}

    def output_size(self, gen: Any) -> int:
        return gen.size

    def made_by(self, gen: Any) -> str:
        return "the no-op generator of a pipeline rehearsal (the images are noise, not faces)"

    def card_lines(self, gen: Any) -> list[str]:
        return [f"- Generator: the no-op generator ({gen.size} px noise from each image seed), a rehearsal of the "
                "pipeline's orchestration; nothing in this run is a face."]
