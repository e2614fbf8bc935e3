"""What the card's sections read (:class:`CardContext`): the run facts, the card's choices and values derived
from them. Its own module so that the sections and :mod:`.build` (which lists them) import it, not each other."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from facefoundry.generators.registry import spec_of
from facefoundry.publishing.licensing import Component, licence_conflicts, run_components
from facefoundry.runfolder.runfacts import RunFacts


def generator_name(facts: RunFacts) -> str:
    """The display name of the run's generator (its spec's)."""
    return spec_of(facts.config.generator).display_name


@dataclass
class CardContext:
    """What the card's sections read: the run facts, the card's choices and values derived from them."""

    facts: RunFacts
    license: str
    pretty_name: str
    features: object  # datasets.Features of the shards
    where: str  # the repo id, or a placeholder path
    vectors_public: bool
    meta: dict = field(init=False)  # the shards' ``facefoundry`` Parquet metadata
    comps: list[Component] = field(init=False)

    def __post_init__(self) -> None:
        self.cfg = self.facts.config
        raw = (pq.read_schema(self.facts.run_dir / self.facts.manifests[0]["shard"]).metadata or {}).get(
            b"facefoundry")
        self.meta = json.loads(raw) if raw else {}
        self.comps = run_components(self.cfg)
        self.conflicts = licence_conflicts(self.license, self.comps)
        self.nc_comps = [c for c in self.comps if c.commercial is False]
        self.tiny = self.cfg.generator.tiny
        self.real_people = spec_of(self.cfg.generator).real_people  # the identities are consenting real people
        self.nn = self.facts.identities.get("nn_cosine") or {}
        self.leak = self.facts.identities.get("leakage")
