"""A merged dataset's facts for the rest of facefoundry (see :mod:`facefoundry.generators.spec`): each is its source
runs' generators' facts, put together (licences and citations are the union, the conditioning encoders too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facefoundry.generators.merged.config import MergedConfig
from facefoundry.generators.spec import GeneratorSpec, ModelPaths, UpstreamUse


def _source_generators(gen: MergedConfig) -> list[tuple[GeneratorSpec, Any]]:
    """Each source's generator spec and validated generator section."""
    from facefoundry.generators.registry import SPECS

    out = []
    for source in gen.sources:
        section = source.config["generator"]
        spec = SPECS[section["kind"]]
        out.append((spec, spec.config.model_validate(section)))
    return out


class MergedSpec(GeneratorSpec):
    kind = "merged"
    display_name = "merged"
    config = MergedConfig
    generator_class = "facefoundry.generators.merged.generator:MergedGenerator"
    identities_are = "the identities of the source runs (see Sources), each in its own generator's identity space"
    tiny_upstream = "tiny"
    renders = False

    def conditioning_names(self, gen: Any) -> set[str]:
        return {name for spec, section in _source_generators(gen) for name in spec.conditioning_names(section)}

    def model_paths(self, gen: Any, models_dir: Path, seed: int, identities: int) -> ModelPaths:
        return ModelPaths("merged")  # loads nothing: the generator refuses to be built

    def shard_metadata(self, gen: Any) -> dict[str, Any]:
        return {"sources": [{"run_id": s.run_id, "kind": s.config["generator"]["kind"]} for s in gen.sources]}

    def components(self, gen: Any) -> list[UpstreamUse]:
        uses = [use for spec, section in _source_generators(gen) for use in spec.components(section)]
        return list(dict.fromkeys(uses))

    def citation_keys(self, gen: Any) -> list[str]:
        return list(dict.fromkeys(k for spec, section in _source_generators(gen) for k in spec.citation_keys(section)))

    def made_by(self, gen: Any) -> str:
        return "the tiny random-weight test models of its source runs (the images are noise, not faces)"

    def card_lines(self, gen: Any) -> list[str]:
        return [f"- Source `{source.run_id}` ({spec.display_name}): "
                + " ".join(line.removeprefix("- ") for line in spec.card_lines(section))
                for source, (spec, section) in zip(gen.sources, _source_generators(gen), strict=True)]

    def limitations(self, gen: Any) -> list[str]:
        return list(dict.fromkeys(line for spec, section in _source_generators(gen)
                                  for line in spec.limitations(section)))

    def source_configs(self, gen: Any) -> list[dict[str, Any]]:
        return [source.config for source in gen.sources]
